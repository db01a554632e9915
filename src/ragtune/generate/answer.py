"""``ask``: retrieve, decide whether the documents can answer, prompt, generate, check, trace.

1. Retrieval is an ordinary search (it writes its own search trace).
2. Abstention comes first and does not depend on the generator: every sentence of the retrieved
   sources gets a support score for the question (see ``grounding``); if the best one is below
   ``abstain_threshold`` the answer says the documents do not answer, and shows the closest sources.
   With a trained answerability model (``answerability``) it also abstains when the model's
   probability that the best source answers is below the model's threshold.
3. The extractive answerer needs no model: it returns the best-supported sentences, cited.
   A generator gets the numbered-sources prompt (``prompt``) and its text is split into sentences,
   each checked against the sources it cites. A sentence that cites nothing is checked against all
   sources and, if one supports it, cites that one (``inferred``); otherwise it is flagged.
4. A generation that times out still returns the retrieved sources, with ``error`` set.
5. The ask trace holds the rendered prompt, the response, the model and its lineage (the generator
   spec, the base model, the adapter and its content hash), citations, support and timings.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ragtune.errors import ConfigError, GenerationTimeoutError, RagtuneError
from ragtune.generate.answerability import AnswerabilityModel
from ragtune.generate.grounding import Evidence, SupportScorer, parse_citations, strip_citations
from ragtune.generate.prompt import (
    NO_ANSWER,
    SYSTEM_PROMPT,
    Prompt,
    PromptSource,
    build_prompt,
    source_budget,
    sources_system_prompt,
)
from ragtune.generate.reader import Reader, ReaderSpan
from ragtune.generate.sentences import sentence_spans, split_sentences, unwrap
from ragtune.models import (
    Answer,
    AnswerSentence,
    AnswerSpan,
    Citation,
    Completion,
    Lineage,
    Message,
    Principal,
    SearchResult,
)
from ragtune.observe.traces import StageTimer, TraceRecord, record
from ragtune.observe.tracing import Step, Tracing, current_span, stash
from ragtune.protocols import DeclaresPromptFormat, DescribesLineage, Generator, TokenBudget

EXTRACTIVE = "extractive"
READER_GENERATOR = "reader"
_ABSTAIN_MARKERS = ("do not answer", "does not answer", "don't answer", "cannot answer", "no information")


@dataclass(frozen=True)
class AskOptions:
    top_k: int = 5
    max_tokens: int = 200
    context_tokens: int = 1536
    abstain_threshold: float = 0.35
    support_threshold: float = 0.5
    extractive_sentences: int = 2


@dataclass(frozen=True)
class Candidate:
    """A sentence of a retrieved source and its support for the question."""

    source: PromptSource
    start: int  # offsets in the document
    end: int
    text: str
    evidence: Evidence


class Answerer:
    """Answers over hits with one generator, or extractively when ``generator`` is None."""

    def __init__(self, generator: Generator | None, scorer: SupportScorer, tracing: Tracing | None = None,
                 answerability: AnswerabilityModel | None = None, *, reader: Reader | None = None,
                 read_answers: bool = False, reader_hint: bool = False, spec: str | None = None) -> None:
        if read_answers and reader is None:
            raise ConfigError("answering with the reader needs a trained reader (`ragtune reader train`)")
        self.generator = None if read_answers else generator
        self.scorer = scorer
        self.tracing = tracing
        self.answerability = answerability
        # With a reader, abstention is its rule (``reader.Abstention``) for every generator; the
        # reader answers itself (``read_answers``: ``-g reader``) or, with ``reader_hint``, its span
        # is shown to the generator in the prompt.
        self.reader = reader
        self.read_answers = read_answers
        self.reader_hint = reader_hint
        self._system: str | None = None  # the sources prompt's system message, once known (system_prompt)
        self.spec = spec  # the generator spec asked for (the lineage's ``generator``); default: the model's name

    @property
    def model_name(self) -> str:
        if self.read_answers and self.reader is not None:
            return f"{READER_GENERATOR}:{self.reader.name}"
        return self.generator.name if self.generator is not None else EXTRACTIVE

    def answer(self, question: str, retrieved: SearchResult, options: AskOptions, *, principal: Principal,
               collection: str, on_token: Callable[[str], None] | None = None,
               timer: StageTimer | None = None) -> Answer:
        # each stage from here is a step of the answer's span (the timer given timed the search,
        # which has its own span)
        timer = StageTimer(dict(timer.timings_ms) if timer is not None else {})
        hits = retrieved.hits[: options.top_k]
        with timer.stage("prompt"):
            prompt = build_prompt(question, hits, count_tokens=self._count_tokens(), budget=self._budget(options),
                                  system=self.system_prompt())
        with timer.stage("support"):
            candidates = self._candidates(question, prompt.sources)
        best = max((c.evidence.support for c in candidates), default=0.0)
        found: ReaderSpan | None = None
        if self.reader is not None and prompt.sources:
            with timer.stage("read"):
                found = self.reader.read(question, [s.text for s in prompt.sources])
        decided_by = self._decide(best, found, options)
        answerable: float | None = None
        if self.answerability is not None and decided_by is None:
            with timer.stage("answerability"):
                answerable = self.answerability.probability(question, [s.text for s in prompt.sources])
            if answerable < self.answerability.threshold:
                decided_by = "answerability"
        span = self._span(found, prompt.sources) if found is not None else None
        completion: Completion | None = None
        error = None
        sentences: list[AnswerSentence] = []
        if decided_by is not None:
            text, abstained = NO_ANSWER, True
        elif self.read_answers and span is not None:
            text, sentences = _read_answer(span)
            abstained = False
            if on_token is not None:
                on_token(text)
        elif self.generator is None:
            text, sentences = self._extractive(candidates, options)
            abstained = False
            if on_token is not None:
                on_token(text)
        else:
            messages = prompt.messages
            if self.reader_hint and span is not None:
                messages = _with_hint(messages, span)
            with timer.stage("generate", **{"gen_ai.operation.name": "chat",
                                            "gen_ai.request.model": self.model_name,
                                            "gen_ai.request.max_tokens": options.max_tokens}) as step:
                # time to first token is known when the answer streams (a generator asked without
                # on_token may take a faster path than streaming, so none is forced on it)
                first_token = _FirstToken(on_token) if on_token is not None else None
                try:
                    completion = self.generator.generate(messages, max_tokens=options.max_tokens,
                                                         on_token=first_token)
                except GenerationTimeoutError as exc:
                    error = str(exc)
                if completion is not None:
                    step.update({
                        "gen_ai.response.model": completion.model, "gen_ai.response.finish_reasons":
                        [completion.finish_reason], "gen_ai.usage.input_tokens": completion.prompt_tokens,
                        "gen_ai.usage.output_tokens": completion.completion_tokens,
                        "ragtune.time_to_first_token_ms": first_token.ms if first_token else None})
            if completion is not None and completion.finish_reason == "timeout":
                error = f"generation timed out after {completion.seconds:.1f}s; the answer is cut short"
            text = completion.text if completion is not None else ""
            abstained = completion is not None and _says_no_answer(text)
            decided_by = "generator" if abstained else None
            with timer.stage("grounding"):
                sentences = [] if abstained or not text else self._check(text, prompt.sources, options)
        citations = _citations(prompt.sources, sentences)
        answer = Answer(
            question=question, text=text, citations=citations, hits=hits, model=self.model_name,
            sentences=sentences, abstained=abstained,
            grounded=not abstained and bool(sentences) and all(s.supported for s in sentences),
            error=error, usage=_usage(completion, best, answerable, found), timings_ms=dict(timer.timings_ms),
            prompt=prompt.messages, decided_by=decided_by,
            relevance=None if span is None or abstained else _relevance(text, span, self.read_answers),
            span=None if abstained else span, lineage=self._lineage(completion),
        )
        trace_id = self._trace(answer, prompt, retrieved, principal, collection, completion, timer.steps)
        return Answer(**{**answer.__dict__, "trace_id": trace_id})

    def system_prompt(self) -> str:
        """The system message of the numbered-sources prompt: the one a tuned generator was trained
        with (``generate.prompt.sources_system_prompt``; a model trained on plain chat is refused:
        ``Ragtune.ask`` calls this before it searches), else ours."""
        if self._system is None:  # once per answer: a registry generator resolves its alias to answer
            model = self.generator
            self._system = (sources_system_prompt(self.model_name, model.prompt_format())
                            if isinstance(model, DeclaresPromptFormat) else SYSTEM_PROMPT)
        return self._system

    # -- parts ---------------------------------------------------------------------------------
    def _lineage(self, completion: Completion | None) -> Lineage:
        """The spec asked for, and the base model and adapter that wrote the answer: from the
        completion when there was one, else from the generator (an answer given before generation)."""
        spec = self.spec or self.model_name
        if self.read_answers and self.reader is not None:
            return Lineage(generator=spec, base=f"{READER_GENERATOR}:{self.reader.name}")
        if self.generator is None:
            return Lineage(generator=spec)
        found = completion.lineage if completion is not None else None
        if found is None and isinstance(self.generator, DescribesLineage):
            try:
                found = self.generator.lineage()
            except RagtuneError:  # e.g. an alias with no version yet: this answer did not need the model
                found = None
        return dataclasses.replace(found or Lineage(generator=spec, base=self.generator.name), generator=spec)

    def _decide(self, support: float, found: ReaderSpan | None, options: AskOptions) -> str | None:
        """The one abstention decision, before any generation: the reader's rule when there is a
        reader, else the support threshold. None: answer."""
        if self.reader is None:
            return "retrieval" if support < options.abstain_threshold else None
        if found is None:  # no source text to read
            return "retrieval"
        return self.reader.abstention.decide(support, found.no_answer)

    def _span(self, found: ReaderSpan, sources: Sequence[PromptSource]) -> AnswerSpan:
        """The reader's span in document offsets, with the sentence holding it."""
        source = sources[found.passage]
        sentence = next(((a, b) for a, b in sentence_spans(source.text) if a <= found.start < b),
                        (found.start, found.end))
        assert self.reader is not None
        confidence = 1 / (1 + math.exp(-(found.margin + self.reader.abstention.no_answer_above)))
        return AnswerSpan(text=found.text, source=source.number, uri=source.hit.uri,
                          document_id=source.hit.document_id, chunk_id=source.hit.chunk.id or 0,
                          start=source.start + found.start, end=source.start + found.end,
                          sentence=source.text[sentence[0]:sentence[1]], sentence_start=source.start + sentence[0],
                          sentence_end=source.start + sentence[1], confidence=round(confidence, 4),
                          kind=found.kind)

    def _count_tokens(self) -> Callable[[str], int]:
        if isinstance(self.generator, TokenBudget):
            return self.generator.count_tokens
        # No tokenizer (extractive, or a remote model): a conservative 3 characters per token.
        return lambda text: len(text) // 3 + 1

    def _budget(self, options: AskOptions) -> int:
        window = self.generator.context_window if isinstance(self.generator, TokenBudget) else 0
        return source_budget(options.context_tokens, options.max_tokens, window)

    def _candidates(self, question: str, sources: Sequence[PromptSource]) -> list[Candidate]:
        spans = [(s, a, b) for s in sources for a, b in sentence_spans(s.text)]
        if not spans:
            return []
        # Scored on one line: a PDF line break or a hyphenated word split must not cut terms apart.
        evidence = self.scorer.evidence([question], [[unwrap(s.text[a:b])] for s, a, b in spans])[0]
        return [Candidate(source=s, start=s.start + a, end=s.start + b, text=s.text[a:b], evidence=e)
                for (s, a, b), e in zip(spans, evidence, strict=True)]

    def _extractive(self, candidates: list[Candidate], options: AskOptions) -> tuple[str, list[AnswerSentence]]:
        ranked = sorted(candidates, key=lambda c: (-c.evidence.support, c.source.number, c.start))
        # Two copies of a document (a PDF and its HTML) give the same sentence twice: keep the
        # best-supported one, and the first source among equals (ranked puts it first).
        distinct = _distinct(ranked, options.extractive_sentences)
        chosen = [c for c in distinct
                  if c.evidence.support >= max(options.abstain_threshold, ranked[0].evidence.support - 0.15)]
        chosen.sort(key=lambda c: (c.source.number, c.start))  # read in source order
        sentences = [AnswerSentence(text=unwrap(c.text), citations=(c.source.number,), support=c.evidence.support,
                                    supported=True) for c in chosen]
        return " ".join(f"{unwrap(c.text)} [{c.source.number}]" for c in chosen), sentences

    def _check(self, text: str, sources: Sequence[PromptSource], options: AskOptions) -> list[AnswerSentence]:
        claims = [s for s in split_sentences(text) if strip_citations(s)]
        if not claims or not sources:
            return [AnswerSentence(text=c, citations=(), support=0.0, supported=False) for c in claims]
        evidence = self.scorer.evidence(claims, [[s.text] for s in sources])
        numbers = {s.number for s in sources}
        out = []
        for claim, row in zip(claims, evidence, strict=True):
            cited = tuple(n for n in parse_citations(claim) if n in numbers)
            inferred = False
            if cited:
                support = max(row[n - 1].support for n in cited)
            else:
                best = max(range(len(row)), key=lambda j: row[j].support)
                support = row[best].support
                if support >= options.support_threshold:
                    cited, inferred = (best + 1,), True
            out.append(AnswerSentence(text=claim, citations=cited, support=round(support, 4),
                                      supported=support >= options.support_threshold, inferred=inferred))
        return out

    def _trace(self, answer: Answer, prompt: Prompt, retrieved: SearchResult, principal: Principal,
               collection: str, completion: Completion | None, steps: Sequence[Step]) -> str | None:
        if self.tracing is None or not self.tracing.enabled:
            return None
        span = current_span()
        if span.is_recording():  # the answer's span (``Ragtune.ask`` opens it)
            return self._record(span, answer, prompt, retrieved, principal, collection, completion, steps)
        with self.tracing.span("ask", {"ragtune.kind": "ask", "gen_ai.operation.name": "chat"}) as span:
            return self._record(span, answer, prompt, retrieved, principal, collection, completion, steps)

    def _record(self, span: Any, answer: Answer, prompt: Prompt, retrieved: SearchResult, principal: Principal,
                collection: str, completion: Completion | None, steps: Sequence[Step]) -> str | None:
        stash(span, {"gen_ai.request.model": answer.model,
                     "gen_ai.response.model": completion.model if completion else answer.model})
        return record(span, TraceRecord(
            kind="ask", principal=principal, collection=collection, query=answer.question,
            params={
                "model": answer.model, "lineage": None if answer.lineage is None else answer.lineage.to_dict(),
                "mode": retrieved.mode,
                "prompt": [{"role": m.role, "content": m.content} for m in prompt.messages],
                "response": answer.text, "abstained": answer.abstained, "grounded": answer.grounded,
                "decided_by": answer.decided_by, "relevance": answer.relevance,
                "reader": None if self.reader is None else {
                    "model": self.reader.name, "support_below": self.reader.abstention.support_below,
                    "no_answer_above": self.reader.abstention.no_answer_above},
                "span": None if answer.span is None else answer.span.__dict__,
                "usage": answer.usage,
                "answerability": None if self.answerability is None else {
                    "model": self.answerability.name, "threshold": self.answerability.threshold},
                "finish_reason": completion.finish_reason if completion else None,
                "sentences": [{"text": s.text, "citations": list(s.citations), "support": s.support,
                               "supported": s.supported, "inferred": s.inferred} for s in answer.sentences],
            },
            results=[{"number": s.number, "chunk_id": s.hit.chunk.id, "uri": s.hit.uri, "start": s.start,
                      "end": s.end, "score": s.hit.score, "scores": s.hit.scores_by_source,
                      "cited": any(c.number == s.number for c in answer.citations)} for s in prompt.sources],
            timings_ms=answer.timings_ms, error=answer.error,
        ), also_shown=[h.chunk.id for h in retrieved.hits if h.chunk.id is not None], steps=steps)


class _FirstToken:
    """An ``on_token`` that notes when the first token came (ms after it was made) and passes
    each token on."""

    def __init__(self, on_token: Callable[[str], None]) -> None:
        self.on_token = on_token
        self.started = time.perf_counter()
        self.ms: float | None = None

    def __call__(self, token: str) -> None:
        if self.ms is None:
            self.ms = round((time.perf_counter() - self.started) * 1000, 3)
        self.on_token(token)


def _says_no_answer(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _ABSTAIN_MARKERS) and len(lowered) < 200


def _citations(sources: Sequence[PromptSource], sentences: Sequence[AnswerSentence]) -> list[Citation]:
    by_number = {s.number: s for s in sources}
    cited = sorted({n for s in sentences for n in s.citations if n in by_number})
    out = []
    for n in cited:
        src = by_number[n]
        chunk = src.hit.chunk
        out.append(Citation(number=n, chunk_id=chunk.id or 0, document_id=src.hit.document_id, uri=src.hit.uri,
                            start=src.start, end=src.end, text=src.text))
    return out


def _read_answer(span: AnswerSpan) -> tuple[str, list[AnswerSentence]]:
    """The reader's answer: the span (or yes/no), cited; its sentence is what the citation shows."""
    words = span.text if span.kind == "span" else span.kind.capitalize()
    sentence = AnswerSentence(text=span.sentence, citations=(span.source,), support=span.confidence, supported=True)
    return f"{words} [{span.source}]", [sentence]


def _with_hint(messages: Sequence[Message], span: AnswerSpan) -> list[Message]:
    """The prompt with the reader's span added to the last user message."""
    words = span.text if span.kind == "span" else span.kind
    hint = (f"\n\nA reading model found this answer in source [{span.source}]: \"{words}\" "
            f"(confidence {span.confidence:.2f}).")
    out = list(messages)
    last = max(i for i, m in enumerate(out) if m.role == "user")
    out[last] = Message(role=out[last].role, content=out[last].content + hint)
    return out


def _relevance(text: str, span: AnswerSpan, read_answers: bool) -> float:
    """How well the answer answers the question: the reader's confidence in its span, times how far
    a generated answer agrees with that span (token F1, 1 when it contains the span)."""
    if read_answers:
        return span.confidence
    words = span.text if span.kind == "span" else span.kind
    answer = " ".join(strip_citations(text).lower().split())
    if words.lower() in answer:
        return span.confidence
    shared = set(words.lower().split()) & set(answer.split())
    if not shared:
        return 0.0
    precision, recall = len(shared) / max(1, len(set(answer.split()))), len(shared) / len(set(words.lower().split()))
    return round(span.confidence * 2 * precision * recall / (precision + recall), 4)


def _usage(completion: Completion | None, support: float, answerable: float | None,
           found: ReaderSpan | None = None) -> dict[str, float]:
    usage: dict[str, float] = {"question_support": round(support, 4)}
    if found is not None:
        usage["reader_no_answer"] = round(found.no_answer, 4)
    if answerable is not None:
        usage["answerable_probability"] = round(answerable, 4)
    if completion is not None:
        usage.update(prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens,
                     generation_seconds=round(completion.seconds, 3),
                     tokens_per_second=round(completion.tokens_per_second, 2))
    return usage


def answer_fields(answer: Answer, *, paths: bool = True) -> dict[str, Any]:
    """A JSON-ready view of an answer (``--json`` and the server, which leaves out folders on its
    machine: ``paths=False``)."""
    return {
        "question": answer.question, "answer": answer.text, "model": answer.model,
        "lineage": None if answer.lineage is None else answer.lineage.to_dict(paths=paths),
        "abstained": answer.abstained, "decided_by": answer.decided_by, "grounded": answer.grounded,
        "relevance": answer.relevance, "span": None if answer.span is None else answer.span.__dict__,
        "error": answer.error,
        "citations": [c.__dict__ for c in answer.citations],
        "sentences": [s.__dict__ for s in answer.sentences],
        "sources": [{"rank": h.rank, "score": h.score, "uri": h.uri, "chunk_id": h.chunk.id,
                     "start": h.chunk.start, "end": h.chunk.end, "text": h.chunk.text} for h in answer.hits],
        "usage": answer.usage, "timings_ms": answer.timings_ms, "trace_id": answer.trace_id,
    }


# -- near-duplicate sentences (_extractive) ---------------------------------------------------------
_NEAR_DUPLICATE = 0.9  # token Jaccard at or above which two sentences count as one


def _distinct(ranked: Sequence[Candidate], limit: int) -> list[Candidate]:
    """The first ``limit`` candidates of ``ranked`` that are not near-duplicates of an earlier one."""
    kept: list[Candidate] = []
    seen: list[frozenset[str]] = []
    for c in ranked:
        if len(kept) >= limit:
            break
        words = _words(c.text)
        if any(_near_duplicate(words, other) for other in seen):
            continue
        kept.append(c)
        seen.append(words)
    return kept


def _words(text: str) -> frozenset[str]:
    """A sentence's words without case, punctuation or line breaks."""
    return frozenset("".join(ch if ch.isalnum() else " " for ch in unwrap(text).casefold()).split())


def _near_duplicate(a: frozenset[str], b: frozenset[str]) -> bool:
    if a == b:  # also two sentences with no words at all
        return True
    return len(a & b) / len(a | b) >= _NEAR_DUPLICATE
