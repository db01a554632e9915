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
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.errors import DatasetError, DatasetValidationError, ModelError
from ragtune.finetune.data.examples import Example, canonical_json, template_messages
from ragtune.finetune.data.formats import parse_file
from ragtune.finetune.data.versions import assign_split, require_valid, row_hash
from ragtune.models import Principal

IGNORE = -100  # label of tokens without loss


@dataclass(frozen=True)
class TrainSet:
    name: str
    version: int | None  # None for a file
    content_hash: str
    train: list[Example]
    eval: list[Example]
    forced_reasons: tuple[str, ...] = ()

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
                "the base model's chat template is not prefix-preserving (rendering a conversation does not start "
                f"with the rendering of its first turns; line {example.line}), so assistant turns cannot be located; "
                "use a model with a ChatML-like template"
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
