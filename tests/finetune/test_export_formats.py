"""`ragtune models export --dtype fp32|fp16|bf16 --format safetensors|gguf`: a registered version of the
session's tiny LoRA run (``tool_run``) exported once per format in one module fixture, then checked
from the outside: dtypes on disk, the export's own check numbers, the GGUF file's key-values and
tensors against what transformers' GGUF loader reads (its own name map and rope un-permutation as
the reference), refusals of what cannot be exported, and an export broken on purpose failing its
check without leaving anything behind."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from ragtune.cli.main import app
from ragtune.errors import ConfigError, ModelError
from ragtune.finetune.lifecycle import gguf_export
from ragtune.finetune.lifecycle.registry import ModelRegistry
from ragtune.finetune.lifecycle.serving import base_folder, export_manifest, export_merged, export_model
from ragtune.generate.local import packaged_gguf
from ragtune.settings import Settings
from tests.finetune.tuned import copy_run

runner = CliRunner()
MODEL = "fmt"


@dataclass
class Exports:
    registry: ModelRegistry
    version: Any
    fp16: Path  # safetensors fp16 through the Python API
    gguf: Path  # GGUF f16 through the CLI
    cli: Any  # the CLI's result


@pytest.fixture(scope="module")
def exports(project: Settings, tool_run: Any, tmp_path_factory: pytest.TempPathFactory) -> Exports:
    registry = ModelRegistry(project)
    run = copy_run(tool_run, project.data_dir / "runs", "tools-formats")
    version = registry.register(run.path, MODEL)
    root = tmp_path_factory.mktemp("exports")
    fp16 = export_model(registry, f"{MODEL}/{version.version}", root / "fp16", dtype="fp16")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAGTUNE_DATABASE_URL", project.database_url or "")
        env.setenv("RAGTUNE_CACHE_DIR", str(project.resolved_cache_dir))
        cli = runner.invoke(app, ["models", "export", f"{MODEL}/{version.version}", str(root / "gguf"),
                                  "--format", "gguf", "--dtype", "fp16", "--data-dir", str(project.data_dir)])
    return Exports(registry, version, fp16, root / "gguf", cli)


def _flat(text: str) -> str:
    return " ".join(text.split())


def _assert_check_passed(check: dict[str, Any], roundoff: float) -> None:
    assert check["passed"] and check["prompts"] == 4 and check["positions"] > 40
    # fp16 rounding is measured, not zero, and inside 10 unit roundoffs of the largest logit.
    assert check["tolerance"] == pytest.approx(10 * roundoff * check["logit_scale"])
    assert 0 < check["max_abs_logit_diff"] < check["tolerance"]
    assert check["decisive_flips"] == 0 and check["greedy_agreement"] >= 0.97


def test_fp16_safetensors_is_fp16_on_disk_and_matches_the_merged_model(exports: Exports) -> None:
    from safetensors import safe_open

    folder = exports.fp16
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118 - safe_open is no dict
        n_params = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())  # noqa: SIM118
    assert dtypes == {"F16"}
    assert (folder / "model.safetensors").stat().st_size < n_params * 2 + 100_000  # half of fp32's 4 bytes
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float16"
    manifest = export_manifest(folder)
    assert (manifest["format"], manifest["dtype"], manifest["model"]) == ("safetensors", "fp16", MODEL)
    assert manifest["files"]["model.safetensors"] == (folder / "model.safetensors").stat().st_size
    _assert_check_passed(manifest["check"], 2.0**-11)
    assert manifest["check"]["tokenizer_equal"] is None
    assert "from_pretrained(folder)" in manifest["check"]["loaded_with"]


def test_gguf_export_through_the_cli_is_checked_and_reported(exports: Exports) -> None:
    assert exports.cli.exit_code == 0, exports.cli.output
    out = _flat(exports.cli.output)
    assert f"exported {MODEL}/1 to {exports.gguf} (gguf, fp16," in out
    assert "checked: max |logit diff|" in out and "tokenizer identical" in out
    manifest = export_manifest(exports.gguf)
    name = f"{MODEL}-v1-f16.gguf"
    assert sorted(p.name for p in exports.gguf.iterdir()) == [name, "ragtune_model.json"]
    assert manifest["gguf"] == {"file": name, "tensor_type": "F16", "file_type": "MOSTLY_F16"}
    assert manifest["files"] == {name: (exports.gguf / name).stat().st_size}
    check = manifest["check"]
    _assert_check_passed(check, 2.0**-11)
    assert check["tokenizer_equal"] is True and "gguf_file=" in check["loaded_with"]
    # the same fp16 rounding of the same merged weights: the same numbers as the safetensors export
    assert check["max_abs_logit_diff"] == pytest.approx(export_manifest(exports.fp16)["check"]["max_abs_logit_diff"])


def test_gguf_file_has_what_the_transformers_loader_reads(exports: Exports) -> None:
    import gguf
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor, get_gguf_hf_weights_map

    reader = gguf.GGUFReader(str(exports.gguf / f"{MODEL}-v1-f16.gguf"))
    fields = {k: f.contents() for k, f in reader.fields.items()}
    config = AutoConfig.from_pretrained(str(exports.fp16))
    expected = {"general.architecture": "llama", "general.file_type": int(gguf.LlamaFileType.MOSTLY_F16),
                "llama.block_count": config.num_hidden_layers, "llama.context_length": config.max_position_embeddings,
                "llama.embedding_length": config.hidden_size, "llama.feed_forward_length": config.intermediate_size,
                "llama.attention.head_count": config.num_attention_heads,
                "llama.attention.head_count_kv": config.num_key_value_heads,
                "llama.rope.dimension_count": config.head_dim, "llama.vocab_size": config.vocab_size}
    assert {k: fields[k] for k in expected} == expected
    assert fields["llama.rope.freq_base"] == pytest.approx(config.rope_parameters["rope_theta"])
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(config.rms_norm_eps)
    # The tokenizer is the packaged SmolLM2 GGUF's, key for key.
    packaged = {k: f.contents() for k, f in gguf.GGUFReader(str(packaged_gguf())).fields.items()
                if k.startswith("tokenizer.")}
    assert {k: v for k, v in fields.items() if k.startswith("tokenizer.")} == packaged
    # Tensors: exactly the names transformers maps onto a Llama of this config (tied head: no output.weight),
    # 2-D in F16 and the norms in F32.
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    processor = LlamaTensorProcessor(config=config.to_dict())
    loader_map = get_gguf_hf_weights_map(skeleton, processor)
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == {g for g, hf in loader_map.items() if hf != "lm_head.weight"}
    assert "output.weight" not in tensors and config.tie_word_embeddings
    assert {t.tensor_type.name for t in tensors.values() if len(t.shape) == 2} == {"F16"}
    assert {t.tensor_type.name for t in tensors.values() if len(t.shape) == 1} == {"F32"}
    # Values: the loader's own un-permutation of q/k gives back the fp16 export's weights bit for bit.
    weights = load_file(str(exports.fp16 / "model.safetensors"))
    for gguf_name, hf_name in [("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
                               ("blk.7.attn_k.weight", "model.layers.7.self_attn.k_proj.weight"),
                               ("blk.7.attn_v.weight", "model.layers.7.self_attn.v_proj.weight"),
                               ("token_embd.weight", "model.embed_tokens.weight")]:
        data = np.asarray(tensors[gguf_name].data)
        assert data.dtype == np.float16
        restored = processor.process(weights=data, name=gguf_name).weights
        assert np.array_equal(restored, weights[hf_name].numpy()), gguf_name
    # ...and without that un-permutation q differs: the permutation was really written.
    assert not np.array_equal(np.asarray(tensors["blk.0.attn_q.weight"].data),
                              weights["model.layers.0.self_attn.q_proj.weight"].numpy())


@pytest.mark.parametrize(("n_head", "n_kv"), [(9, 9), (9, 3), (4, 2)])
def test_rope_permutation_is_what_the_loader_reverses(n_head: int, n_kv: int) -> None:
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    head_dim = 8
    weights = np.random.default_rng(0).standard_normal((n_kv * head_dim, 16)).astype(np.float32)
    undo = LlamaTensorProcessor()._reverse_permute_weights
    assert np.array_equal(undo(gguf_export.permute_rope(weights, n_kv), n_head, n_kv), weights)


def test_unsupported_combinations_are_refused_clearly(exports: Exports, project: Settings, tmp_path: Path) -> None:
    from transformers import GPT2Config, LlamaConfig

    tokenizer = packaged_gguf()
    assert gguf_export.unsupported(LlamaConfig(), tokenizer, "smollm2") == []
    cases = [(GPT2Config(), tokenizer, "model_type 'llama'.*is 'gpt2'"),
             (LlamaConfig(rope_scaling={"rope_type": "linear", "factor": 2.0}), tokenizer, "rope scaling 'linear'"),
             (LlamaConfig(attention_bias=True), tokenizer, "attention_bias=True"),
             (LlamaConfig(), None, "tokenizer of 'my-llama'.*only for the packaged SmolLM2")]
    for config, source, reason in cases:
        with pytest.raises(ConfigError, match=f"cannot export as GGUF: .*{reason}.*--format safetensors"):
            gguf_export.check_supported(config, source, "my-llama")
    ref = f"{MODEL}/{exports.version.version}"
    for kwargs, message in [({"dtype": "q4_0"}, "unknown export dtype 'q4_0'; choose one of fp32, fp16, bf16"),
                            ({"format": "onnx"}, "unknown export format 'onnx'; choose one of safetensors, gguf")]:
        with pytest.raises(ConfigError, match=message):
            export_model(exports.registry, ref, tmp_path / "never", **kwargs)
    # The CLI refuses before it opens the registry.
    refused = runner.invoke(app, ["models", "export", ref, str(tmp_path / "never"), "--dtype", "int8",
                                  "--data-dir", str(project.data_dir)])
    assert refused.exit_code == 2 and "unknown export dtype 'int8'" in _flat(refused.output), refused.output
    # A base other than the packaged SmolLM2 (a folder of its own): refused after the merge, before writing.
    base = base_folder(exports.version, project.resolved_cache_dir)
    with pytest.raises(ConfigError, match="tokenizer of 'elsewhere'"):
        export_merged(base, Path(exports.version.adapter), tmp_path / "never", format="gguf", dtype="fp16",
                      base_name="elsewhere", stem="x", label="x", provenance={})
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_export_that_does_not_match_fails_and_leaves_nothing(exports: Exports, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # The classic GGUF bug: q/k written without llama.cpp's rope permutation. The file loads fine and
    # is garbage; the check must catch it.
    monkeypatch.setattr(gguf_export, "permute_rope", lambda weights, n_head: weights)
    out = tmp_path / "broken"
    with pytest.raises(ModelError, match=r"the gguf fp16 export of fmt version 1 does not match the merged model: "
                                         r"max \|logit difference\| (\S+) is over the tolerance .*nothing was "
                                         r"written") as failed:
        export_model(exports.registry, f"{MODEL}/{exports.version.version}", out, format="gguf", dtype="fp16")
    diff = re.search(r"difference\| (\S+) is", str(failed.value))
    assert diff is not None and float(diff.group(1)) > 1.0  # whole logits off, not rounding
    assert not out.exists() and list(tmp_path.iterdir()) == []
