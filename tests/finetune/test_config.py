"""The training config: TOML in, a validated frozen dataclass out; bad keys and values named."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ragtune.errors import ConfigError
from ragtune.finetune.lora.config import LoraSettings, TuneConfig, from_dict, load_config, to_dict, to_toml

FULL = """
method = "dpo"
learning_rate = 1e-4
epochs = 2
max_steps = 30
batch_size = 2
grad_accum = 4
max_length = 256
seed = 7
save_steps = 10
save_total_limit = 3
eval_fraction = 0.2
eval_steps = 5
warmup_ratio = 0.1
lr_scheduler = "cosine"
qlora = true

[lora]
r = 16
alpha = 32
dropout = 0.1
target_modules = "all-linear"

[dpo]
beta = 0.2
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tune.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_valid_and_frozen() -> None:
    config = load_config()
    assert config == TuneConfig() and config.method == "sft" and config.lora.r == 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.learning_rate = 1.0  # type: ignore[misc]


def test_full_file_loads_and_round_trips(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, FULL))
    assert (config.method, config.learning_rate, config.epochs, config.max_steps) == ("dpo", 1e-4, 2.0, 30)
    assert config.lora == LoraSettings(r=16, alpha=32, dropout=0.1, target_modules="all-linear")
    assert config.dpo.beta == 0.2 and config.qlora and config.effective_batch == 8
    # The resolved TOML a run writes starts the same run again.
    again = load_config(_write(tmp_path, to_toml(config)))
    assert again == config
    assert from_dict(to_dict(TuneConfig())) == TuneConfig()


def test_overrides_win_and_none_is_ignored(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, 'method = "sft"\nseed = 3\n'), method="dpo", seed=None)
    assert config.method == "dpo" and config.seed == 3
    assert TuneConfig().replace(batch_size=8).batch_size == 8


@pytest.mark.parametrize(("text", "key"), [
    ("learning_rate = -0.001", "learning_rate"),
    ("learning_rate = 0", "learning_rate"),
    ("learning_rate = 5.0", "learning_rate"),
    ("epochs = 0", "epochs"),
    ("max_steps = -1", "max_steps"),
    ("batch_size = 0", "batch_size"),
    ("grad_accum = 0", "grad_accum"),
    ("max_length = 8", "max_length"),
    ("seed = -1", "seed"),
    ("save_steps = 0", "save_steps"),
    ("eval_fraction = 1.0", "eval_fraction"),
    ("warmup_ratio = -0.1", "warmup_ratio"),
    ('lr_scheduler = "exotic"', "lr_scheduler"),
    ('method = "ppo"', "method"),
    ("[lora]\nr = 0", "lora.r"),
    ("[lora]\nalpha = -16", "lora.alpha"),
    ("[lora]\ndropout = 1.0", "lora.dropout"),
    ("[lora]\ndropout = -0.1", "lora.dropout"),
    ("[lora]\ntarget_modules = []", "lora.target_modules"),
    ('[lora]\ntarget_modules = "everything"', "lora.target_modules"),
    ('[lora]\ntarget_modules = ["q_proj", "bad name"]', "lora.target_modules"),
    ("[dpo]\nbeta = 0", "dpo.beta"),
    # wrong types are refused too, not coerced
    ('learning_rate = "fast"', "learning_rate"),
    ("max_steps = 1.5", "max_steps"),
    ("batch_size = true", "batch_size"),
    ('qlora = "yes"', "qlora"),
    ("lora = 8", "lora"),
])
def test_impossible_values_are_refused_with_the_key_named(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"invalid {key}=") as info:
        load_config(_write(tmp_path, text))
    assert "tune.toml" in str(info.value) or key.split(".")[0] in str(info.value)


@pytest.mark.parametrize(("text", "named"), [
    ("learnin_rate = 0.1", "learnin_rate"),
    ("[lora]\nrank = 8", "lora.rank"),
    ("[optimizer]\nname = 'adamw'", "optimizer"),
])
def test_unknown_keys_are_refused_with_the_key_named(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=rf"unknown key\(s\) {named}"):
        load_config(_write(tmp_path, text))


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(_write(tmp_path, "learning_rate = = 1"))
