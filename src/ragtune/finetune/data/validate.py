"""The validation report of a dataset: what is wrong with it, and whether that blocks training.

Sections (each a JSON-ready dict, stored with the dataset):

* ``schema_errors``: rows dropped because they could not be read or did not fit the format,
  with their line numbers (``dropped`` counts them all);
* ``empty_outputs``: assistant turns (and chosen/rejected replies) that are empty or whitespace;
* ``lengths``: tokens per row in the base model's chat template, a histogram, rows over the limit;
* ``duplicates``: exact and near duplicates within the set (MinHash LSH, see ``dedup``), with the
  ``threshold`` they were judged at, so "no near duplicates" can be read later for what it meant;
* ``leakage``: eval rows that near-duplicate a train row, and train rows that near-duplicate a
  registered eval set (at the same ``threshold``, recorded here too);
* ``pii``: findings by kind (``govern.pii``), located by line and role, never quoted;
* ``balance``: roles, turns per row, tool calls by name, preference pairs;
* ``split``: rows in train and eval.

Schema errors, empty outputs, over-length rows and leakage are *blocking*: the dataset is stored but
marked invalid, and training refuses it without ``force`` (:func:`ragtune.finetune.data.versions.require_valid`).
Duplicates and PII are reported, not blocking: deduplicate or redact (``redact_pii``) as you judge.
Lists of examples are cut to ``ValidationOptions.examples``; the counts are always complete.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ragtune.errors import DatasetError
from ragtune.finetune.data.dedup import cross_duplicates, find_duplicates
from ragtune.finetune.data.examples import Example, canonical_json
from ragtune.finetune.data.formats import ParsedFile
from ragtune.finetune.data.lengths import TokenCounter, histogram
from ragtune.govern.pii import PiiPolicy, Sealed, apply_policy, find_pii, redact
from ragtune.settings.sections import TrainingSettings


@dataclass(frozen=True)
class ValidationOptions:
    max_tokens: int | None = None  # default: the base model's context window
    # Jaccard of word 3-grams; the default is the setting's ([training] dataset_near_duplicate_threshold).
    near_duplicate_threshold: float = TrainingSettings.dataset_near_duplicate_threshold
    num_perm: int = 128
    examples: int = 20

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise DatasetError(f"max_tokens must be positive, got {self.max_tokens}")
        if not 0.0 < self.near_duplicate_threshold <= 1.0:
            raise DatasetError(f"near_duplicate_threshold must be in (0, 1], got {self.near_duplicate_threshold}")
        if self.num_perm < 16:
            raise DatasetError(f"num_perm must be at least 16, got {self.num_perm}")
        if self.examples < 0:
            raise DatasetError(f"examples must be >= 0, got {self.examples}")


@dataclass(frozen=True)
class ValidationReport:
    records: int
    rows: int
    dropped: int
    schema_errors: list[dict[str, Any]]
    empty_outputs: dict[str, Any]
    lengths: dict[str, Any]
    duplicates: dict[str, Any]
    leakage: dict[str, Any]
    pii: dict[str, Any]
    balance: dict[str, Any]
    split: dict[str, Any]
    blocking: list[str]

    @property
    def valid(self) -> bool:
        return not self.blocking

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "valid": self.valid}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValidationReport:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def comparison_text(example: Example) -> str:
    """The text compared for duplicates and leakage: every turn but system prompts and tool
    declarations, which many rows share and which would make unrelated rows look alike."""
    parts = []
    for m in [*example.messages, *(x for x in (example.chosen, example.rejected) if x is not None)]:
        if m["role"] == "system":
            continue
        parts.append(m["content"])
        parts.extend(canonical_json(c["function"]) for c in m.get("tool_calls", ()))
    return "\n".join(p for p in parts if p)


def scan_pii(examples: Sequence[Example], *, limit: int = 20) -> dict[str, Any]:
    """Findings by kind and where they are (line, role); the values themselves are not kept."""
    by_kind: Counter[str] = Counter()
    rows = 0
    where: list[dict[str, Any]] = []
    for example in examples:
        found_here = False
        turns = [*example.messages, *(x for x in (example.chosen, example.rejected) if x is not None)]
        for m in turns:
            texts = [m["content"], *(canonical_json(c["function"]["arguments"]) for c in m.get("tool_calls", ()))]
            for finding in (f for t in texts for f in find_pii(t)):
                by_kind[finding.entity] += 1
                found_here = True
                if len(where) < limit:
                    where.append({"line": example.line, "role": m["role"], "kind": finding.entity})
        rows += found_here
    return {"findings": sum(by_kind.values()), "rows": rows, "by_kind": dict(sorted(by_kind.items())),
            "examples": where, "redacted": False}


def redact_examples(examples: Sequence[Example]) -> list[Example]:
    return [e.map_text(redact) for e in examples]


@dataclass
class PolicyApplied:
    """Rows after a PII policy: those kept (screened), the refused ones' lines and types, the
    values the vault is to hold (``govern.pii.Sealed``)."""

    examples: list[Example]
    refused: list[dict[str, Any]]
    sealed: dict[str, Sealed]


def apply_pii_policy(examples: Sequence[Example], policy: PiiPolicy) -> PolicyApplied:
    kept: list[Example] = []
    refused: list[dict[str, Any]] = []
    sealed: dict[str, Sealed] = {}
    types: set[str] = set()  # the refused types of the row being screened

    def screen(text: str) -> str:
        result = apply_policy(text, policy)
        types.update(result.refused)
        sealed.update((s.token, s) for s in result.sealed)
        return result.text

    for example in examples:
        types.clear()
        screened = example.map_text(screen)
        if types:
            refused.append({"line": example.line, "entities": sorted(types)})
        else:
            kept.append(screened)
    return PolicyApplied(kept, refused, sealed)


def _empty_outputs(examples: Sequence[Example], limit: int) -> dict[str, Any]:
    turns = 0
    lines: list[int] = []
    for example in examples:
        empty = [m for m in example.replies() if not m["content"].strip() and not m.get("tool_calls")]
        turns += len(empty)
        if empty:
            lines.append(example.line)
    return {"turns": turns, "rows": len(lines), "lines": lines[:limit]}


def _lengths(examples: Sequence[Example], counter: TokenCounter | None, max_tokens: int | None,
             limit: int) -> dict[str, Any]:
    if counter is None:
        return {"counted": False, "over": 0}
    counts = counter.count(examples)
    cap = max_tokens or counter.context_window
    over = [(e.line, c) for e, c in zip(examples, counts, strict=True) if c > cap]
    ordered = sorted(counts)
    return {
        "counted": True, "tokenizer": counter.name, "context_window": counter.context_window, "max_tokens": cap,
        "over": len(over), "over_rows": [{"line": ln, "tokens": c} for ln, c in over[:limit]],
        "total_tokens": sum(counts), "min": ordered[0] if ordered else 0, "max": ordered[-1] if ordered else 0,
        "mean": round(statistics.fmean(counts), 1) if counts else 0.0,
        "median": statistics.median_low(counts) if counts else 0,
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else 0,
        "histogram": histogram(counts),
    }


def _balance(examples: Sequence[Example]) -> dict[str, Any]:
    roles: Counter[str] = Counter()
    turns: Counter[int] = Counter()
    calls: Counter[str] = Counter()
    declared: Counter[str] = Counter()
    kinds: Counter[str] = Counter(e.kind for e in examples)
    rows_with_tools = rows_with_calls = identical = chosen_longer = 0
    for e in examples:
        roles.update(m["role"] for m in e.messages)
        turns[sum(1 for m in e.messages if m["role"] != "system")] += 1
        names = [c["function"]["name"] for m in e.replies() for c in m.get("tool_calls", ())]
        calls.update(names)
        rows_with_calls += bool(names)
        if e.tools:
            rows_with_tools += 1
            declared.update(t["function"]["name"] for t in e.tools)
        if e.chosen is not None and e.rejected is not None:
            roles.update(["chosen", "rejected"])
            identical += canonical_json(e.chosen) == canonical_json(e.rejected)
            chosen_longer += len(e.chosen["content"]) > len(e.rejected["content"])
    out: dict[str, Any] = {
        "kinds": dict(kinds), "roles": dict(sorted(roles.items())),
        "turns_per_row": {str(k): v for k, v in sorted(turns.items())},
        "rows_with_tools": rows_with_tools, "rows_with_tool_calls": rows_with_calls,
        "tool_calls": dict(calls.most_common()), "tools_declared": dict(declared.most_common()),
    }
    if kinds.get("preference"):
        out["preference"] = {"pairs": kinds["preference"], "identical": identical, "chosen_longer": chosen_longer}
    return out


def _pairs(pairs: Sequence[Any], left: Sequence[Example], right: Sequence[Example], limit: int
           ) -> list[dict[str, Any]]:
    return [{"line": left[p.a].line, "other_line": right[p.b].line, "similarity": p.similarity}
            for p in pairs[:limit]]


def validate(parsed: ParsedFile, examples: Sequence[Example], splits: Sequence[str], *,
             counter: TokenCounter | None, eval_sets: Mapping[str, Sequence[Example]], pii: dict[str, Any],
             options: ValidationOptions | None = None) -> ValidationReport:
    """The report on ``examples`` (the rows as they will be stored, one split each) of ``parsed``.

    ``pii`` is :func:`scan_pii` of the rows as they were read (before any redaction);
    ``eval_sets`` maps each registered eval set's name to its rows.
    """
    options = options or ValidationOptions()
    if len(splits) != len(examples):
        raise DatasetError(f"{len(splits)} splits for {len(examples)} rows")
    n = options.examples
    threshold = options.near_duplicate_threshold
    texts = [comparison_text(e) for e in examples]

    dups = find_duplicates(texts, threshold=threshold, num_perm=options.num_perm)
    duplicates = {
        "threshold": threshold, "exact_groups": len(dups.exact_groups), "exact_extra_rows": dups.exact_extra_rows,
        "exact_examples": [[examples[i].line for i in g] for g in dups.exact_groups[:n]],
        "near_pairs": len(dups.near_pairs), "near_rows": dups.near_rows,
        "near_examples": _pairs(dups.near_pairs, examples, examples, n),
    }

    train = [i for i, s in enumerate(splits) if s == "train"]
    held = [i for i, s in enumerate(splits) if s == "eval"]
    split_pairs = cross_duplicates([texts[i] for i in held], [texts[i] for i in train], threshold=threshold,
                                   num_perm=options.num_perm)
    held_rows = [examples[i] for i in held]
    train_rows = [examples[i] for i in train]
    leakage: dict[str, Any] = {
        "threshold": threshold, "train_eval_pairs": len(split_pairs), "eval_rows": len({p.a for p in split_pairs}),
        "examples": _pairs(split_pairs, held_rows, train_rows, n), "eval_sets": {},
    }
    for name, rows in sorted(eval_sets.items()):
        pairs = cross_duplicates([texts[i] for i in train], [comparison_text(e) for e in rows],
                                 threshold=threshold, num_perm=options.num_perm)
        leakage["eval_sets"][name] = {"pairs": len(pairs), "train_rows": len({p.a for p in pairs}),
                                      "examples": _pairs(pairs, train_rows, rows, n)}

    empty = _empty_outputs(examples, n)
    lengths = _lengths(examples, counter, options.max_tokens, n)
    blocking: list[str] = []
    if parsed.issues:
        blocking.append(f"{len(parsed.issues)} row(s) with schema errors were dropped")
    if empty["turns"]:
        blocking.append(f"{empty['turns']} empty or whitespace-only output(s) in {empty['rows']} row(s)")
    if lengths["over"]:
        blocking.append(f"{lengths['over']} row(s) longer than {lengths['max_tokens']} tokens")
    if leakage["eval_rows"]:
        blocking.append(f"{leakage['eval_rows']} eval row(s) near-duplicate a train row")
    for name, found in leakage["eval_sets"].items():
        if found["train_rows"]:
            blocking.append(f"{found['train_rows']} train row(s) near-duplicate eval set {name!r}")
    if not examples:
        blocking.append("no rows")

    return ValidationReport(
        records=parsed.records, rows=len(examples), dropped=len(parsed.issues),
        schema_errors=[{"line": i.line, "message": i.message} for i in parsed.issues[: max(n, 100)]],
        empty_outputs=empty, lengths=lengths, duplicates=duplicates, leakage=leakage, pii=pii,
        balance=_balance(examples),
        split={"train": len(train), "eval": len(held)},
        blocking=blocking,
    )
