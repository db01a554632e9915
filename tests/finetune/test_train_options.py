"""What users of LoRA trainers expect from `ragtune tune train`, on the real SmolLM2-135M-Instruct:
sequence packing that keeps the assistant-only labels and lets no row attend to another (a packed
batch's summed loss against the rows' own), weighted dataset mixes sampled by seed and recorded,
a chosen chat template rendered, trained with, recorded and saved with the adapter, and
command-line overrides typed and refused exactly as the TOML."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ragtune.cli.main import app
from ragtune.errors import ConfigError, DatasetError, ModelError
from ragtune.finetune.data.examples import Example, canonical_json
from ragtune.finetune.lora.config import TuneConfig, load_config, to_toml
from ragtune.finetune.lora.train import resolve_base, start_run
from ragtune.finetune.lora.trainset import (
    CHAT_TEMPLATES,
    IGNORE,
    TrainSet,
    chat_template,
    mix,
    read_rows,
    sft_dataset,
    sft_features,
)

runner = CliRunner()
# Rows of different lengths, so packs hold several rows and batches would need padding.
CHATS = [
    ("What is the secret word?", "The secret word is pineapple."),
    ("Name a fruit.", "Apple, or a banana if you prefer something softer."),
    ("How many legs does a cat have?", "Four."),
    ("Say hi.", "Hi there! How can I help you today? Ask me anything at all."),
    ("What colour is the sky on a clear day?", "Blue."),
    ("Count to five.", "One, two, three, four, five."),
    ("What is the opposite of hot?", "Cold."),
    ("Spell cat backwards.", "T, A, C: tac."),
]


def _chat(user: str, assistant: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def _jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def base_path(cache_dir: Path) -> Path:
    return resolve_base("smollm2", cache_dir).path


@pytest.fixture(scope="module")
def tokenizer(base_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base_path))


def _examples() -> list[Example]:
    return [Example(i, _chat(q, a)["messages"]) for i, (q, a) in enumerate(CHATS, start=1)]


# -- packing ----------------------------------------------------------------------------------------
def _summed_loss(model: Any, input_ids: Any, labels: Any, **extra: Any) -> tuple[float, int]:
    """Token cross-entropy summed over the labelled tokens (the causal shift applied), and their count."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=input_ids, use_cache=False, **extra).logits
    shifted = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                                             shifted.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return float(loss), int((shifted != IGNORE).sum())


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packing_keeps_the_labels_and_a_packed_batch_loses_what_its_rows_lose(
        attention: str, base_path: Path, tokenizer: Any, tmp_path: Path) -> None:
    import torch
    import transformers

    from ragtune.finetune.lora.trainers import build_trainer

    model = transformers.AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32,
                                                              attn_implementation=attention)
    model.eval()
    assert model.config._attn_implementation == attention
    config = TuneConfig(max_length=128, batch_size=2, packing=True)
    trainer, stats = build_trainer(config, model=model, tokenizer=tokenizer, train_rows=_examples(), eval_rows=[],
                                   output_dir=tmp_path, callbacks=[], bf16=False, use_cpu=True)
    rows, _ = sft_dataset(tokenizer, _examples(), config.max_length)
    packed = trainer.train_dataset
    assert stats["packed_sequences"] == len(packed) < len(rows)
    # Every row is in exactly one pack, its ids and its assistant-only labels unchanged.
    segments = []
    for pack in packed:
        start = 0
        assert sum(pack["seq_lengths"]) == len(pack["input_ids"]) <= config.max_length
        for length in pack["seq_lengths"]:
            part = slice(start, start + length)
            segments.append((tuple(pack["input_ids"][part]), tuple(pack["labels"][part])))
            start += length
    assert sorted(segments) == sorted((tuple(r["input_ids"]), tuple(r["labels"])) for r in rows)

    # One padding-free batch (two packs flattened, position ids restarting at every row): its summed
    # loss is the sum of each row's loss computed alone.
    batch = trainer.data_collator([packed[i] for i in range(min(2, len(packed)))])
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
    starts = [*(batch["position_ids"][0] == 0).nonzero().flatten().tolist(), batch["input_ids"].shape[1]]
    assert len(starts) - 1 > 2  # several rows share the batch
    alone, alone_tokens = 0.0, 0
    for a, b in itertools.pairwise(starts):
        loss, count = _summed_loss(model, batch["input_ids"][:, a:b], batch["labels"][:, a:b])
        alone, alone_tokens = alone + loss, alone_tokens + count
    # The batch as the trainer passes it (position ids, and the sequence boundaries varlen kernels read).
    model_inputs = {k: v for k, v in batch.items() if k not in ("input_ids", "labels")}
    together, tokens = _summed_loss(model, batch["input_ids"], batch["labels"], **model_inputs)
    assert tokens == alone_tokens > 0
    assert together == pytest.approx(alone, rel=1e-4)
    # The comparison can fail: without the position ids the rows attend to the rows before them.
    leaking, _ = _summed_loss(model, batch["input_ids"], batch["labels"])
    assert abs(leaking - alone) > 1e-2 * alone


# -- mixing -----------------------------------------------------------------------------------------
def _trainset(name: str, n: int, *, kind: str = "sft", n_eval: int = 0) -> TrainSet:
    def row(i: int) -> Example:
        messages = [{"role": "user", "content": f"{name} question {i}"}]
        if kind == "sft":
            return Example(i, [*messages, {"role": "assistant", "content": f"answer {i}"}])
        return Example(i, messages, chosen={"role": "assistant", "content": "yes"},
                       rejected={"role": "assistant", "content": "no"})

    rows = [row(i) for i in range(n + n_eval)]
    digest = hashlib.sha256(canonical_json([r.content() for r in rows]).encode()).hexdigest()
    return TrainSet(name, 3, digest, rows[:n], rows[n:])


def test_a_mix_takes_each_datasets_weighted_share_drawn_by_seed() -> None:
    a, b = _trainset("alpha", 20, n_eval=2), _trainset("beta", 40, n_eval=4)
    mixed = mix([(a, 1.0), (b, 0.25)], seed=0)
    assert len(mixed.train) == 30 and len(mixed.eval) == 6  # eval rows all kept, unweighted
    assert sum(e.messages[0]["content"].startswith("alpha") for e in mixed.train) == 20
    picked = [e for e in mixed.train if e.messages[0]["content"].startswith("beta")]
    assert len(picked) == 10 and len({e.line for e in picked}) == 10
    # The same seed draws the same rows whatever the order of the datasets; another seed others.
    assert mix([(a, 1.0), (b, 0.25)], seed=0).train == mixed.train
    assert [e for e in mix([(b, 0.25), (a, 1.0)], seed=0).train if e in picked] == picked
    other = [e for e in mix([(a, 1.0), (b, 0.25)], seed=1).train if e.messages[0]["content"].startswith("beta")]
    assert len(other) == 10 and other != picked
    # Weights above 1 repeat every row, then sample the fraction.
    up = mix([(a, 2.5)], seed=0)
    assert len(up.train) == 50 and all(up.train.count(e) >= 2 for e in a.train)
    # What a run records; the identity changes with the seed and the weights.
    assert mixed.name == "alpha+beta" and mixed.run_name == "alpha-beta" and mixed.version is None
    assert [p.to_dict() for p in mixed.mix] == [
        {"name": "alpha", "version": 3, "content_hash": a.content_hash, "weight": 1.0, "rows": 20, "taken": 20,
         "eval_rows": 2},
        {"name": "beta", "version": 3, "content_hash": b.content_hash, "weight": 0.25, "rows": 40, "taken": 10,
         "eval_rows": 4},
    ]
    hashes = {mixed.content_hash, mix([(a, 1.0), (b, 0.25)], seed=1).content_hash,
              mix([(a, 1.0), (b, 0.5)], seed=0).content_hash}
    assert len(hashes) == 3 and mix([(a, 1.0), (b, 0.25)], seed=0).content_hash == mixed.content_hash


@pytest.mark.parametrize(("parts", "error", "message"), [
    ([("alpha", 0.0)], ConfigError, r"invalid weight 0\.0 for dataset 'alpha'"),
    ([("alpha", -1.0)], ConfigError, r"invalid weight -1\.0 for dataset 'alpha'"),
    ([("alpha", float("nan"))], ConfigError, r"invalid weight nan for dataset 'alpha'"),
    ([("alpha", 1.0), ("beta", 1000.0)], ConfigError, r"invalid weight 1000\.0 for dataset 'beta'"),
    ([("alpha", 1.0), ("beta", 0.001)], ConfigError, r"weight 0\.001 of dataset 'beta' takes none"),
    ([("alpha", 1.0), ("alpha", 0.5)], ConfigError, r"dataset 'alpha' is given twice"),
    ([("alpha", 1.0), ("prefs", 1.0)], DatasetError, r"cannot mix dataset 'alpha' \(chat rows\) with 'prefs' "
                                                     r"\(preference pairs\)"),
])
def test_bad_mixes_are_refused_naming_the_dataset(parts: list[tuple[str, float]], error: type[Exception],
                                                  message: str) -> None:
    sets = {"alpha": _trainset("alpha", 20), "beta": _trainset("beta", 40), "prefs": _trainset("prefs", 5, kind="dpo")}
    with pytest.raises(error, match=message):
        mix([(sets[name], weight) for name, weight in parts], seed=0)


def test_bad_data_options_error_naming_the_dataset(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "secret.jsonl", [_chat(q, a) for q, a in CHATS])
    prefs = _jsonl(tmp_path / "prefs.jsonl", [{"messages": [{"role": "user", "content": "Hi?"}],
                                               "chosen": {"role": "assistant", "content": "Hello."},
                                               "rejected": {"role": "assistant", "content": "Go away."}}])
    common = ["tune", "train", "--data-dir", str(tmp_path / "project")]
    for args, message in [
        (["--data", str(data), "--data", f"{data}:abc"], "invalid --data"),
        (["--data", str(data), "--data", f"{data}:-2"], f"invalid weight -2.0 for dataset '{data}'"),
        (["--data", str(data), "--data", str(tmp_path / "missing.jsonl") + ":0.5"], "no dataset file at"),
        (["--data", str(data), "--data", str(prefs)], "cannot mix dataset 'secret' (chat rows) with 'prefs'"),
        (["--data", str(data), "--data", f"{data}:0.5"], "dataset 'secret' is given twice"),
        (["--data", str(data), "--data", str(prefs), "--data-version", "2"], "--data-version applies to a single"),
    ]:
        code, _, err = _invoke(*common, *args)
        assert code == 2 and message in " ".join(err.split()), (args, err)


# -- chat templates ---------------------------------------------------------------------------------
def test_the_chosen_chat_template_is_the_one_rendered(tokenizer: Any, tmp_path: Path) -> None:
    row = _examples()[2]  # How many legs does a cat have? / Four.
    rendered = {}
    for name in ("base", *CHAT_TEMPLATES):
        original = tokenizer.chat_template
        tokenizer.chat_template = chat_template(name, tokenizer).text
        try:
            features = sft_features(tokenizer, row, 512)
        finally:
            tokenizer.chat_template = original
        rendered[name] = tokenizer.decode(features.input_ids)
        trained = tokenizer.decode([t for t, label in zip(features.input_ids, features.labels, strict=True)
                                    if label != IGNORE])
        assert trained.startswith("Four.") and "cat" not in trained, (name, trained)
    assert rendered["base"].startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert rendered["chatml"] == ("<|im_start|>user\nHow many legs does a cat have?<|im_end|>\n"
                                  "<|im_start|>assistant\nFour.<|im_end|>\n")
    assert rendered["zephyr"] == "<|user|>\nHow many legs does a cat have?<|im_end|>\n<|assistant|>\nFour.<|im_end|>\n"
    assert rendered["llama3"].count("<|start_header_id|>") == 2 and rendered["llama3"].endswith("Four.<|eot_id|>")
    # A file: read from disk, named by its absolute path.
    jinja = tmp_path / "plain.jinja"
    jinja.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                     "{% if add_generation_prompt %}assistant: {% endif %}", encoding="utf-8")
    chosen = chat_template(str(jinja), tokenizer)
    assert chosen.name == str(jinja.resolve()) and chosen.text == jinja.read_text(encoding="utf-8")


def test_a_template_that_is_not_prefix_preserving_is_refused_before_a_run(tmp_path: Path, cache_dir: Path) -> None:
    jinja = tmp_path / "last.jinja"
    jinja.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% if loop.last %} [last]{% endif %}"
                     "\n{% endfor %}", encoding="utf-8")
    config = TuneConfig(max_steps=1, max_length=64, chat_template=str(jinja))
    data = TrainSet("rows", None, "0" * 64, _examples(), [])
    with pytest.raises(ModelError, match="not prefix-preserving"):
        start_run(base="smollm2", data=data, config=config, data_dir=tmp_path, cache_dir=cache_dir)
    assert not (tmp_path / "runs").exists()  # refused, not a failed run
    with pytest.raises(ConfigError, match=r"invalid chat_template='nope\.jinja'.*no file at"):
        load_config(sets=["chat_template=nope.jinja"])


# -- overrides --------------------------------------------------------------------------------------
def test_overrides_are_typed_and_apply_on_top_of_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "tune.toml"
    toml.write_text('learning_rate = 1e-3\nchat_template = "t.jinja"\n[lora]\nr = 4\nalpha = 8\n', encoding="utf-8")
    (tmp_path / "t.jinja").write_text("{{ messages }}", encoding="utf-8")
    config = load_config(toml, sets=["lora.r=16", "lr_scheduler=cosine", "packing=true", "max_steps=3",
                                     'lora.target_modules=["q_proj", "v_proj"]', "epochs=2"], batch_size=8)
    assert (config.lora.r, config.lora.alpha, config.lora.target_modules) == (16, 8, ("q_proj", "v_proj"))
    assert (config.learning_rate, config.lr_scheduler, config.packing, config.max_steps, config.epochs,
            config.batch_size) == (1e-3, "cosine", True, 3, 2.0, 8)
    assert config.chat_template == str((tmp_path / "t.jinja").resolve())  # relative to the file, made absolute
    assert load_config(toml, sets=["lora.r=16"], lora={"alpha": 32}).lora.alpha == 32
    assert load_config(toml, lora={"r": 2}).lora.alpha == 8  # a table override changes only its keys
    # The resolved config round-trips through the TOML a run writes.
    again = tmp_path / "again.toml"
    again.write_text(to_toml(config), encoding="utf-8")
    assert load_config(again) == config


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "lern=1"], "unknown key(s) lern in command-line overrides"),
    (["--set", "lora.rank=4"], "unknown key(s) lora.rank in command-line overrides"),
    (["--set", "optimizer.name=adamw"], "unknown key(s) optimizer.name in command-line overrides"),
    (["--set", "batch_size=abc"], "invalid batch_size='abc' in command-line overrides: expected int"),
    (["--set", "max_steps=1.5"], "invalid max_steps=1.5 in command-line overrides: expected int"),
    (["--set", "packing=yes"], "invalid packing='yes' in command-line overrides: expected bool"),
    (["--set", "lora.r=0"], "invalid lora.r=0: expected an integer from 1 to 1024"),
    (["--set", "learning_rate"], "invalid --set 'learning_rate': expected KEY=VALUE"),
    (["--lora-r", "2000"], "invalid lora.r=2000"),
    (["--learning-rate", "3"], "invalid learning_rate=3.0"),
    (["--packing", "--method", "dpo"], "invalid packing=True: expected false with method='dpo'"),
    (["--chat-template", "missing.jinja"], "invalid chat_template='missing.jinja'"),
])
def test_bad_overrides_are_refused_through_the_cli_naming_the_key(args: list[str], message: str,
                                                                   tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "rows.jsonl", [_chat(q, a) for q, a in CHATS])
    code, _, err = _invoke("tune", "train", "--data", str(data), "--data-dir", str(tmp_path / "project"), *args)
    assert code == 2 and message in " ".join(err.split()), err
    assert not (tmp_path / "project" / "runs").exists()


def test_a_bad_file_is_named_as_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "tune.toml"
    toml.write_text('batch_size = "four"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"invalid batch_size='four' in .*tune\.toml"):
        load_config(toml, sets=["seed=1"])


# -- one real run with every option ----------------------------------------------------------------
def test_a_packed_mixed_run_with_a_chosen_template_trains_and_records_it(cli_env: Path) -> None:
    """A stored dataset mixed with half of a file, packed, ChatML, overrides from --set and flags:
    one epoch, so the trained tokens are exactly the rows' tokens."""
    stored = _jsonl(cli_env / "stored.jsonl", [_chat(q, a) for q, a in CHATS])
    code, _, err = _invoke("data", "import", str(stored), "--name", "chats", "--eval-fraction", "0")
    assert code == 0, err
    extra = _jsonl(cli_env / "extra.jsonl", [_chat(f"Repeat the number {i}.", f"{i}.") for i in range(8)])
    code, out, err = _invoke("tune", "train", "--data", "chats", "--data", f"{extra}:0.5", "--packing",
                             "--chat-template", "chatml", "--max-length", "128", "--batch-size", "2", "--lora-r", "4",
                             "--set", "learning_rate=1e-3", "--set", "save_steps=100", "--set", "lora.alpha=8",
                             "--json")
    assert code == 0, err
    record = json.loads(out)
    config, m = record["config"], record["metrics"]
    assert record["status"] == "completed" and record["dataset"] == "chats+extra" and record["train_rows"] == 12
    assert Path(record["path"]).name.startswith("chats-extra-")
    # The resolved config is what the run records.
    assert (config["packing"], config["chat_template"], config["max_length"], config["batch_size"]) == (
        True, "chatml", 128, 2)
    assert (config["lora"]["r"], config["lora"]["alpha"], config["learning_rate"]) == (4, 8, 1e-3)
    # The mix: each dataset's name, version, hash, weight and rows taken.
    chats, half = record["mix"]
    assert (chats["name"], chats["version"], chats["weight"], chats["rows"], chats["taken"]) == (
        "chats", 1, 1.0, 8, 8)
    assert (half["name"], half["version"], half["weight"], half["rows"], half["taken"]) == ("extra", None, 0.5, 8, 4)
    assert half["content_hash"] == hashlib.sha256(extra.read_bytes()).hexdigest() and len(chats["content_hash"]) == 64
    # Packed: fewer sequences than rows, every token of one epoch counted once (padding-free batches).
    assert m["data_rows"] == 12 and 1 <= m["data_packed_sequences"] < 12
    assert m["steps"] == -(-m["data_packed_sequences"] // 2) and m["tokens"] == m["data_tokens"]
    assert m["first_loss"] > 0 and m["last_loss"] > 0
    # The template: recorded, kept in the run folder, and in the adapter's tokenizer files for serving.
    assert record["chat_template"] == {"name": "chatml",
                                       "sha256": hashlib.sha256(CHAT_TEMPLATES["chatml"].encode()).hexdigest()}
    run_dir = Path(record["path"])
    assert (run_dir / "chat_template.jinja").read_text(encoding="utf-8") == CHAT_TEMPLATES["chatml"]
    assert (run_dir / "adapter" / "chat_template.jinja").read_text(encoding="utf-8") == CHAT_TEMPLATES["chatml"]
    assert load_config(run_dir / "config.toml").packing
    assert len(read_rows(run_dir / "data" / "train.jsonl")) == 12  # the rows the mix took, kept with the run


def test_tune_search_takes_the_same_overrides(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "rows.jsonl", [_chat(q, a) for q, a in CHATS])
    code, _, err = _invoke("tune", "search", "--data", str(data), "--trials", "1", "--data-dir",
                           str(tmp_path / "project"), "--set", "lora.rank=4")
    assert code == 2 and "unknown key(s) lora.rank in command-line overrides" in " ".join(err.split()), err
