"""The rows a training run learns from, and how they become model inputs.

A :class:`TrainSet` comes from a stored, validated dataset (``DatasetStore``; refused when its
validation failed unless ``force``) or straight from a file (OpenAI chat JSONL or any format
``data.formats`` reads; rows with schema errors are refused unless ``force``, and counted either way).
A run keeps its rows as JSON Lines in its folder, so resuming and DDP workers read exactly them.

SFT inputs are tokenised here, not by TRL: the conversation is rendered once through the base
model's own chat template and the loss covers only the assistant turns. A turn's characters are
those between the rendering of the messages before it (with the generation prompt) and the
rendering that includes it, end-of-turn token included, trailing newline not; tokens are labelled
by their character offsets. This needs a prefix-preserving template (rendering a conversation
starts with the rendering of any earlier part of it), which is checked on every row.

The template is the base model's own unless the config names another (``chat_template``: one of
``CHAT_TEMPLATES`` or a Jinja file, see :func:`chat_template`); the run keeps its text and the
adapter's tokenizer files carry it.

Several datasets train together through :func:`mix`: each dataset's weight is the share of its
training rows the mix takes (0.3 a seeded 30% sample, 2 every row twice), so the proportions are
those the user wrote, whatever the datasets' sizes; its eval rows are all kept (weights shape what
is learnt, not what is measured).

Packing (``packing = true``) is TRL's: best-fit decreasing into ``max_length`` sequences that keep
our labels, fed padding-free with position ids restarting at every row, from which transformers
builds a block-diagonal causal mask for sdpa and eager attention (and varlen kernels for flash
attention), so no row attends to another; the test compares a packed batch's loss with the rows'
separate losses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError, DatasetError, DatasetValidationError, ModelError
from ragtune.finetune.data.examples import Example, canonical_json, template_messages
from ragtune.finetune.data.formats import parse_file
from ragtune.finetune.data.versions import assign_split, require_valid, row_hash
from ragtune.models import Principal

IGNORE = -100  # label of tokens without loss
MAX_WEIGHT = 100.0  # a dataset repeated more often than this in one mix is almost surely a typo


@dataclass(frozen=True)
class MixPart:
    """One dataset of a mix, as the run records it."""

    name: str
    version: int | None
    content_hash: str
    weight: float
    rows: int  # training rows the dataset has
    taken: int  # training rows the mix took
    eval_rows: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainSet:
    name: str
    version: int | None  # None for a file (and for a mix)
    content_hash: str
    train: list[Example]
    eval: list[Example]
    forced_reasons: tuple[str, ...] = ()
    mix: tuple[MixPart, ...] = ()  # the datasets this one was mixed from, when it was

    @property
    def run_name(self) -> str:
        """A default run name: the dataset's (a mix's "a+b" as "a-b")."""
        return re.sub(r"[^A-Za-z0-9._-]", "-", self.name)[:100] or "run"

    @property
    def kind(self) -> str:
        kinds = {e.kind for e in [*self.train, *self.eval]}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def check_method(self, method: str) -> None:
        want = "preference" if method == "dpo" else "sft"
        if self.kind != want:
            other = "dpo" if want == "sft" else "sft"
            raise DatasetError(
                f"dataset {self.name!r} holds {self.kind} rows; --method {method} needs "
                f"{'preference pairs (chosen/rejected)' if want == 'preference' else 'chat rows'}"
                + (f" (use --method {other})" if self.kind != "mixed" else "")
            )


def from_file(path: str | Path, *, eval_fraction: float, force: bool = False, format: str = "auto") -> TrainSet:
    path = Path(path).expanduser()
    parsed = parse_file(path, format=format)
    if not parsed.examples:
        first = f"; line {parsed.issues[0].line}: {parsed.issues[0].message}" if parsed.issues else ""
        raise DatasetError(f"{path}: no valid rows ({len(parsed.issues)} schema error(s){first})")
    reasons: tuple[str, ...] = ()
    if parsed.issues:
        shown = "; ".join(f"line {i.line}: {i.message}" for i in parsed.issues[:5])
        reasons = (f"{len(parsed.issues)} of {parsed.records} rows have schema errors ({shown})",)
        if not force:
            raise DatasetValidationError(path.name, 0, reasons)
    splits = [assign_split(row_hash(e), eval_fraction) for e in parsed.examples]
    content_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    return TrainSet(path.stem, None, content_hash,
                    [e for e, s in zip(parsed.examples, splits, strict=True) if s == "train"],
                    [e for e, s in zip(parsed.examples, splits, strict=True) if s == "eval"], reasons)


def from_store(store: Any, name: str, *, principal: Principal, version: int | None = None,
               force: bool = False) -> TrainSet:
    """A stored dataset through its validation gate (``require_valid``), with its own split: the
    rows ``principal`` may read."""
    info = store.get(name, version, principal=principal)
    reasons = require_valid(info, force)
    return TrainSet(info.name, info.version, info.content_hash, store.rows(info, "train", principal=principal),
                    store.rows(info, "eval", principal=principal), tuple(reasons))


def mix(parts: Sequence[tuple[TrainSet, float]], *, seed: int) -> TrainSet:
    """One training set from several (``(dataset, weight)`` pairs): of each, ``weight`` times its
    training rows (every row ``int(weight)`` times, plus a sample of the fraction drawn with a
    generator seeded by ``seed`` and the dataset's hash, so the rows do not depend on the order of
    the parts), and all its eval rows. Refuses a weight that is not a positive number up to
    ``MAX_WEIGHT`` or takes no row, a dataset given twice, and SFT rows mixed with preference pairs."""
    if not parts:
        raise ConfigError("a mix needs at least one dataset")
    names = [d.name for d, _ in parts]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"dataset {twice[0]!r} is given twice in the mix; give a dataset once, with its weight "
                          "(two files of one name: rename one)")
    first = parts[0][0]
    for data, _ in parts[1:]:
        if data.kind != first.kind:
            raise DatasetError(f"cannot mix dataset {first.name!r} ({_kind(first.kind)}) with {data.name!r} "
                               f"({_kind(data.kind)}): one run trains one method; mix datasets of one kind")
    train: list[Example] = []
    evaluation: list[Example] = []
    recorded: list[MixPart] = []
    reasons: list[str] = []
    for data, weight in parts:
        weight = check_weight(data.name, weight)
        rows = data.train
        whole, fraction = int(weight), weight - int(weight)
        extra = round(fraction * len(rows))
        rng = random.Random(f"{seed}/{data.content_hash}")
        picked = sorted(rng.sample(range(len(rows)), extra)) if extra else []
        taken = rows * whole + [rows[i] for i in picked]
        if not taken:
            raise ConfigError(f"weight {weight:g} of dataset {data.name!r} takes none of its {len(rows)} training "
                              f"rows; use a weight of at least {1 / max(2 * len(rows), 1):.2g}")
        train += taken
        evaluation += data.eval
        reasons += [f"{data.name}: {r}" for r in data.forced_reasons]
        recorded.append(MixPart(data.name, data.version, data.content_hash, float(weight), len(rows), len(taken),
                                len(data.eval)))
    identity = canonical_json({"seed": seed, "parts": [[p.name, p.version, p.content_hash, p.weight]
                                                        for p in recorded]})
    return TrainSet("+".join(names), None, hashlib.sha256(identity.encode()).hexdigest(), train, evaluation,
                    tuple(reasons), tuple(recorded))


def check_weight(name: str, weight: Any) -> float:
    """A mix weight, or a ConfigError naming the dataset it was given for."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
            or not 0 < weight <= MAX_WEIGHT:
        raise ConfigError(f"invalid weight {weight!r} for dataset {name!r}: expected a number in "
                          f"(0, {MAX_WEIGHT:g}] (the share of its training rows to take: 0.3, 1, 2)")
    return float(weight)


def _kind(kind: str) -> str:
    return {"sft": "chat rows", "preference": "preference pairs"}.get(kind, "chat rows and preference pairs")


def write_rows(path: Path, examples: Sequence[Example]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for e in examples:
            fh.write(canonical_json({"line": e.line, **e.content()}) + "\n")


def read_rows(path: Path) -> list[Example]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for raw in fh:
            if raw.strip():
                data = json.loads(raw)
                out.append(Example.from_content(data.pop("line"), data))
    return out


# -- chat templates ----------------------------------------------------------------------------
# Written for prefix-preserving rendering (see the module docstring); roles other than the usual
# ones (tool) are rendered, not dropped, so every token a row holds is trained on or read.
CHAT_TEMPLATES: dict[str, str] = {
    # ChatML as Qwen and SmolLM write it, without a default system message.
    "chatml": ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
               " + '<|im_end|>' + '\n' }}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    # Meta Llama 3 / 3.1 without tools: header tokens, trimmed content, <|eot_id|> ends a turn.
    "llama3": ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role']"
               " + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"),
    # HuggingFaceH4 Zephyr: <|role|> lines, the tokenizer's end-of-sequence token ends a turn.
    "zephyr": ("{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token"
               " + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"),
}


@dataclass(frozen=True)
class ChatTemplate:
    name: str  # base | chatml | llama3 | zephyr | the Jinja file's absolute path
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def record(self) -> dict[str, str]:
        return {"name": self.name, "sha256": self.sha256}


def chat_template(spec: str, tokenizer: Any) -> ChatTemplate:
    """The template ``spec`` (a config's ``chat_template``) names; ``base`` is ``tokenizer``'s own."""
    if spec == "base":
        text = getattr(tokenizer, "chat_template", None)
        if isinstance(text, dict):  # several named templates: the default one renders chats
            text = text.get("default")
        if not text:
            raise ModelError(f"{getattr(tokenizer, 'name_or_path', 'the base model')} has no chat template; use an "
                             "instruction-tuned model folder or set chat_template (chatml, llama3, zephyr or a file)")
        return ChatTemplate(spec, str(text))
    if spec in CHAT_TEMPLATES:
        return ChatTemplate(spec, CHAT_TEMPLATES[spec])
    path = Path(spec).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"invalid chat_template={spec!r}: cannot read the Jinja file ({exc})") from None
    if not text.strip():
        raise ConfigError(f"invalid chat_template={spec!r}: the file is empty")
    return ChatTemplate(str(path.resolve()), text)


def check_chat_template(tokenizer: Any, *, prefix_preserving: bool = True) -> tuple[str, ...]:
    """Render a small conversation with ``tokenizer``'s template before a run starts: raises what
    ``sft_features`` would raise on every row (a template that does not render, or, when
    ``prefix_preserving`` is asked for, as SFT needs, one that is not); returns notes for the run
    (the assistant's turn does not end with the end-of-sequence token, so generation would not stop
    there)."""
    probe = Example(0, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye?"},
                        {"role": "assistant", "content": "Goodbye."}])
    try:
        if prefix_preserving:
            sft_features(tokenizer, probe, 1_000_000)
        before = str(tokenizer.apply_chat_template(probe.messages[:2], tokenize=False, add_generation_prompt=True))
        through = str(tokenizer.apply_chat_template(probe.messages[:3], tokenize=False))
    except ModelError:
        raise
    except Exception as exc:  # a Jinja syntax or runtime error in a user's template
        raise ConfigError(f"the chat template does not render a conversation: {type(exc).__name__}: {exc}") from None
    eos = getattr(tokenizer, "eos_token", None)
    turn_end = through[len(before):].split("Hello.", 1)[-1]
    if eos and eos not in turn_end:
        return (f"the chat template ends an assistant turn with {turn_end.strip()!r}, not the tokenizer's "
                f"end-of-sequence token {eos!r}: generation stops at the end of a turn only if serving stops on it",)
    return ()


# -- SFT: token ids and labels -----------------------------------------------------------------
@dataclass(frozen=True)
class SftFeatures:
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def trained_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def sft_features(tokenizer: Any, example: Example, max_length: int) -> SftFeatures:
    """Token ids of the rendered conversation, labels only on assistant turns (then cut to
    ``max_length``)."""
    messages = template_messages(example)

    def render(part: list[dict[str, str]], prompt: bool) -> str:
        return str(tokenizer.apply_chat_template(part, tokenize=False, add_generation_prompt=prompt))

    text = render(messages, False)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if i == 0:
            raise DatasetError(f"line {example.line}: the conversation starts with an assistant turn; "
                               "there is no prompt to learn a reply to")
        before, through = render(messages[:i], True), render(messages[: i + 1], False)
        if not (text.startswith(before) and text.startswith(through) and through.startswith(before)):
            raise ModelError(
                "the chat template is not prefix-preserving (rendering a conversation does not start "
                f"with the rendering of its first turns; line {example.line}), so assistant turns cannot be located; "
                'use a model with a ChatML-like template or set chat_template = "chatml"'
            )
        spans.append((len(before), len(through.rstrip())))
    if not spans:
        raise DatasetError(f"line {example.line}: no assistant turn to train on")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoded["input_ids"])
    labels = [tok if any(start <= a < end for start, end in spans) else IGNORE
              for tok, (a, _b) in zip(ids, encoded["offset_mapping"], strict=True)]
    truncated = len(ids) > max_length
    return SftFeatures(ids[:max_length], labels[:max_length], truncated)


def sft_dataset(tokenizer: Any, examples: Sequence[Example], max_length: int) -> tuple[list[dict[str, Any]],
                                                                                        dict[str, int]]:
    """Features of every row with something left to learn after truncation, and counts."""
    rows: list[dict[str, Any]] = []
    stats = {"rows": len(examples), "truncated": 0, "dropped": 0, "tokens": 0, "trained_tokens": 0}
    for e in examples:
        f = sft_features(tokenizer, e, max_length)
        stats["truncated"] += f.truncated
        if f.trained_tokens == 0:
            stats["dropped"] += 1
            continue
        stats["tokens"] += len(f.input_ids)
        stats["trained_tokens"] += f.trained_tokens
        rows.append({"input_ids": f.input_ids, "labels": f.labels})
    return rows, stats


# -- DPO: conversational prompt / chosen / rejected, rendered by TRL with the same template -----
def dpo_record(example: Example) -> dict[str, Any]:
    if example.chosen is None or example.rejected is None:
        raise DatasetError(f"line {example.line}: not a preference pair (chosen/rejected missing)")
    prompt = template_messages(example)
    chosen = template_messages(example, example.chosen)[len(prompt):]
    rejected = template_messages(example, example.rejected)[len(prompt):]
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
