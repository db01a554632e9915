"""How long examples are in the base model's own tokens, rendered through its own chat template.

``base`` names the model a dataset is meant to train: ``smollm2`` (the packaged SmolLM2-135M-Instruct,
converted once into the cache as for generation) or a Hugging Face model folder. Its context window
is ``max_position_embeddings`` from its ``config.json``; the weights are never loaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ragtune.errors import ModelError
from ragtune.finetune.data.examples import Example, template_messages
from ragtune.generate.local import SMOLLM2_NAME, packaged_smollm2

PACKAGED_BASES = ("smollm2", "smollm2-135m-instruct")


class TokenCounter(Protocol):
    name: str
    context_window: int

    def count(self, examples: Sequence[Example]) -> list[int]: ...


@dataclass(frozen=True)
class BaseModel:
    name: str
    path: Path
    context_window: int


def resolve_base(spec: str, cache_dir: Path) -> BaseModel:
    spec = spec.strip()
    if spec.lower() in PACKAGED_BASES:
        path, name = packaged_smollm2(cache_dir), SMOLLM2_NAME
    else:
        path, name = Path(spec).expanduser(), Path(spec).name
    config = path / "config.json"
    if not config.is_file():
        raise ModelError(f"base model {spec!r}: no Hugging Face model folder at {path} (config.json missing); "
                         f"use {PACKAGED_BASES[0]!r} or a model folder")
    try:
        window = int(json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings") or 0)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {config}: {exc}") from exc
    if window <= 0:
        raise ModelError(f"{config} states no max_position_embeddings; pass the context length explicitly")
    return BaseModel(name, path, window)


class TemplateTokenCounter:
    """Counts the tokens of each example as its chat template renders it. A preference row counts
    as its longer branch (prompt + chosen or prompt + rejected): both must fit."""

    def __init__(self, tokenizer: Any, *, name: str, context_window: int) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError(f"the tokenizer of {name} has no chat template; use an instruction-tuned model")
        self.tokenizer = tokenizer
        self.name = name
        self.context_window = context_window

    @classmethod
    def for_base(cls, spec: str, cache_dir: Path) -> TemplateTokenCounter:
        base = resolve_base(spec, cache_dir)
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(base.path))
        except Exception as exc:
            raise ModelError(f"cannot load the tokenizer of {base.path}: {exc}") from exc
        return cls(tokenizer, name=base.name, context_window=base.context_window)

    def render(self, example: Example) -> list[str]:
        branches = [example.chosen, example.rejected] if example.kind == "preference" else [None]
        return [str(self.tokenizer.apply_chat_template(template_messages(example, b), tokenize=False))
                for b in branches]

    def count(self, examples: Sequence[Example]) -> list[int]:
        texts: list[str] = []
        owners: list[int] = []
        for i, example in enumerate(examples):
            rendered = self.render(example)
            texts += rendered
            owners += [i] * len(rendered)
        counts = [0] * len(examples)
        for start in range(0, len(texts), 256):
            ids = self.tokenizer(texts[start:start + 256], add_special_tokens=False)["input_ids"]
            for owner, tokens in zip(owners[start:start + 256], ids, strict=True):
                counts[owner] = max(counts[owner], len(tokens))
        return counts


def histogram(counts: Sequence[int]) -> list[dict[str, int]]:
    """Rows per power-of-two bucket of tokens, ``{"from": 65, "to": 128, "rows": n}``, from 0 up to
    the bucket of the longest row."""
    if not counts:
        return []
    edges = [64]
    while edges[-1] < max(counts):
        edges.append(edges[-1] * 2)
    out = []
    low = 0
    for edge in edges:
        rows = sum(1 for c in counts if (c <= edge if low == 0 else low < c <= edge))
        out.append({"from": low + 1 if low else 0, "to": edge, "rows": rows})
        low = edge
    return out
