"""Training rows rendered exactly as ``ask`` serves them (``tune train --rag-format -c COLLECTION``).

A tuned model answers well only in the prompt it learned under. ``ask`` shows a generator
ragtune's system message and numbered ``<source>`` blocks (``generate.prompt.build_prompt``), so a
row trained for answering over a collection is rebuilt in that form, RAFT-style (Zhang et al.,
2024, "RAFT: Adapting Language Model to Domain Specific RAG"):

* the row's question (its last user turn) is searched in the collection, as ``ask`` searches;
* the **gold source** is the first retrieved chunk (of the ``depth`` searched) that holds the row's
  answer (its last assistant turn): the whole answer, or for a longer answer most of its words;
  a row whose answer no chunk holds cannot be grounded and is left out (counted);
* the **distractors** are the other retrieved chunks in rank order (hard negatives), less any that
  also hold the answer;
* with probability ``gold_share`` (per row, from a hash of the row and ``seed``) the prompt holds
  the gold source among ``top_k - 1`` distractors, and the target is the answer with the gold
  source's number cited after each sentence (``Paris [2].``). Where the gold goes is
  ``gold_position``: ``rank`` (the default) keeps retrieval's order, as ``ask`` numbers its sources,
  the gold last when it ranked below the distractors; ``random`` puts it at a random place, as
  RAFT does. Measured (benchmarks/rag_format.py): after 40 steps on random places SmolLM2 learnt
  the answers but cited a fixed number, the wrong one two times in three, because retrieval puts
  the gold first for most questions and random places teach no such prior; otherwise the prompt
  holds ``top_k`` distractors and the target is ragtune's abstention sentence (``NO_ANSWER``),
  which teaches the model to say so rather than invent, as ``ask`` needs;
* sources are packed into the same token budget as ``ask`` packs them (``source_budget`` in the
  model's own tokens); a gold source cut before its answer turns the row into an abstention.

The rows keep their line numbers; the format and these counts are recorded with the run and in the
adapter (``ragtune_prompt.json``), and serving prompts the adapter with the system message it saw.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError, DatasetError
from ragtune.evaluate.text_metrics import normalize_answer
from ragtune.extras import needs
from ragtune.finetune.data.examples import Example, canonical_json
from ragtune.finetune.lora.trainset import TrainSet
from ragtune.generate.prompt import NO_ANSWER, SOURCES_FORMAT, SYSTEM_PROMPT, build_prompt, source_budget
from ragtune.generate.sentences import sentence_spans
from ragtune.models import Hit, PromptFormat
from ragtune.progress import emit
from ragtune.protocols import Progress

Search = Callable[[str, int], Sequence[Hit]]  # (question, how many) -> hits, best first
GOLD_POSITIONS = ("rank", "random")  # where the gold source goes among the distractors (module docstring)


@dataclass(frozen=True)
class RagFormat:
    """How training prompts are built: the collection searched, the sources per prompt, the share
    of rows whose prompt holds the gold source, how deep to look for it, and ``ask``'s budgets."""

    collection: str
    top_k: int = 5
    gold_share: float = 0.8
    depth: int = 20
    context_tokens: int = 1536
    max_tokens: int = 200
    seed: int = 0
    gold_position: str = "rank"

    def __post_init__(self) -> None:
        if self.gold_position not in GOLD_POSITIONS:
            raise ConfigError(f"invalid --rag-format setting gold_position={self.gold_position!r} (one of "
                              f"{', '.join(GOLD_POSITIONS)})")
        checks = {"top_k": 1 <= self.top_k <= 50, "gold_share": 0.0 <= self.gold_share <= 1.0,
                  "depth": self.depth >= self.top_k, "context_tokens": self.context_tokens >= 64,
                  "max_tokens": self.max_tokens >= 1}
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"invalid --rag-format setting {key}={getattr(self, key)!r}"
                                  + (f" (must be at least top_k={self.top_k})" if key == "depth" else ""))


@dataclass
class Rendered:
    """Rows in the numbered-sources form and what became of the rows given."""

    examples: list[Example]
    counts: dict[str, int] = field(default_factory=dict)

    def prompt_format(self, fmt: RagFormat) -> PromptFormat:
        return PromptFormat(SOURCES_FORMAT, SYSTEM_PROMPT, {
            "collection": fmt.collection, "top_k": fmt.top_k, "gold_share": fmt.gold_share,
            "gold_position": fmt.gold_position, "depth": fmt.depth,
            "context_tokens": fmt.context_tokens, "seed": fmt.seed, **self.counts})


def render_rows(rows: Sequence[Example], fmt: RagFormat, search: Search, *, count_tokens: Callable[[str], int],
                context_window: int, progress: Progress | None = None, task: str = "rag-format") -> Rendered:
    """``rows`` rebuilt as ``ask`` prompts over ``search`` (see the module's rules)."""
    budget = source_budget(fmt.context_tokens, fmt.max_tokens, context_window)
    out: list[Example] = []
    counts = {"rows": len(rows), "with_gold": 0, "abstain": 0, "gold_cut": 0, "no_gold_found": 0,
              "gold_in_top_k": 0}
    for i, row in enumerate(rows):
        question, answer = _turns(row)
        hits = list(search(question, fmt.depth))
        gold = next((h for h in hits if holds(h.chunk.text, answer)), None)
        emit(progress, task, i + 1, len(rows))
        if gold is None:
            counts["no_gold_found"] += 1
            continue
        counts["gold_in_top_k"] += hits.index(gold) < fmt.top_k
        distractors = [h for h in hits if h is not gold and not holds(h.chunk.text, answer)]
        rng = random.Random(_row_seed(row, fmt.seed))
        with_gold = rng.random() < fmt.gold_share
        if with_gold:
            shown = distractors[: fmt.top_k - 1]
            if fmt.gold_position == "random":
                shown.insert(rng.randint(0, len(shown)), gold)
            else:
                rank = {id(h): r for r, h in enumerate(hits)}
                shown = sorted([*shown, gold], key=lambda h: rank[id(h)])
        else:
            shown = distractors[: fmt.top_k]
        prompt = build_prompt(question, shown, count_tokens=count_tokens, budget=budget)
        number = next((s.number for s in prompt.sources if s.hit is gold and holds(s.text, answer)), None)
        if with_gold and number is None:
            counts["gold_cut"] += 1
        if number is None:
            target = NO_ANSWER
            counts["abstain"] += 1
        else:
            target = cite(answer, number)
            counts["with_gold"] += 1
        messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
        out.append(Example(row.line, [*messages, {"role": "assistant", "content": target}]))
    return Rendered(out, counts)


def for_sources(data: TrainSet, fmt: RagFormat, search: Search, base_path: Path,
                progress: Progress | None = None) -> tuple[TrainSet, PromptFormat]:
    """``data``'s train and eval rows rendered as ``ask`` prompts for the base model at
    ``base_path`` (its tokenizer counts the budget), and the format to record with the run. The
    set's hash covers the original rows and the format, so a run can tell the two apart."""
    with needs("train", "training"):
        import transformers
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(base_path))
    config = transformers.AutoConfig.from_pretrained(str(base_path))
    window = int(getattr(config, "max_position_embeddings", 0) or 0)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    train = render_rows(data.train, fmt, search, count_tokens=count, context_window=window, progress=progress,
                        task="rag-format")
    held = render_rows(data.eval, fmt, search, count_tokens=count, context_window=window, progress=progress,
                       task="rag-format-eval")
    if not train.examples:
        raise DatasetError(f"--rag-format: no source in collection {fmt.collection!r} holds the answer of any of "
                           f"the {len(data.train)} training rows of {data.name!r}; is it the collection they are "
                           "about?")
    trained = train.prompt_format(fmt)
    trained.details.update({f"eval_{k}": v for k, v in held.counts.items()})
    digest = hashlib.sha256(f"{data.content_hash}\0{canonical_json(trained.to_dict())}".encode()).hexdigest()
    return TrainSet(data.name, data.version, digest, train.examples, held.examples, data.forced_reasons), trained


def _turns(row: Example) -> tuple[str, str]:
    """The question (last user turn before the last assistant turn) and the answer of a chat row."""
    if row.kind != "sft":
        raise DatasetError(f"line {row.line}: --rag-format trains answers (chat rows), not preference pairs")
    if row.tools or any("tool_calls" in m for m in row.messages):
        raise DatasetError(f"line {row.line}: --rag-format trains answers over sources; this row calls tools")
    last = max((i for i, m in enumerate(row.messages) if m["role"] == "assistant"), default=None)
    asked = None if last is None else next(
        (m["content"] for m in reversed(row.messages[:last]) if m["role"] == "user"), None)
    if last is None or not asked or not str(row.messages[last]["content"]).strip():
        raise DatasetError(f"line {row.line}: --rag-format needs a user question and an assistant answer")
    return str(asked), str(row.messages[last]["content"]).strip()


def holds(text: str, answer: str) -> bool:
    """Whether a source holds the answer: its normalised words contain the answer's (SQuAD's
    normalisation: case, punctuation, articles), or for an answer of more than six words, 80 % of
    the answer's distinct words occur in the source (a sentence-long answer is rarely verbatim)."""
    have, want = normalize_answer(text), normalize_answer(answer)
    if not want:
        return False
    if f" {want} " in f" {have} ":
        return True
    words = set(want.split())
    return len(words) > 6 and len(words & set(have.split())) >= 0.8 * len(words)


def cite(answer: str, number: int) -> str:
    """``answer`` with ``[number]`` after each sentence, before its final punctuation mark
    (``Paris [2].``), as the system message asks and ``grounding.parse_citations`` reads."""
    parts = []
    for a, b in sentence_spans(answer):
        sentence = answer[a:b].strip()
        if not sentence:
            continue
        end = len(sentence.rstrip(".!?"))
        parts.append(f"{sentence[:end]} [{number}]{sentence[end:]}")
    return " ".join(parts) if parts else f"{answer} [{number}]"


def _row_seed(row: Example, seed: int) -> int:
    """A seed of the row's content and ``seed``: the same row gets the same prompt on every run."""
    digest = hashlib.sha256(f"{seed}\0{canonical_json(row.content())}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def describe(counts: dict[str, Any], top_k: int) -> str:
    """One line for the CLI: what became of the rows."""
    return (f"{counts['rows']} rows: {counts['with_gold']} answered with the gold source cited, {counts['abstain']} "
            f"taught to abstain ({counts['gold_cut']} of them because the budget cut the gold source), "
            f"{counts['no_gold_found']} left out (no source in the collection holds the answer); the gold source "
            f"was retrieved in the top {top_k} for {counts['gold_in_top_k']}")
