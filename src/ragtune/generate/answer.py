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
5. The ask trace holds the rendered prompt, the response, the model, citations, support and timings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ragtune.errors import GenerationTimeoutError
from ragtune.generate.answerability import AnswerabilityModel
from ragtune.generate.grounding import Evidence, SupportScorer, parse_citations, strip_citations
from ragtune.generate.prompt import NO_ANSWER, Prompt, PromptSource, build_prompt
from ragtune.generate.sentences import sentence_spans, split_sentences
from ragtune.models import Answer, AnswerSentence, Citation, Completion, Principal, SearchResult
from ragtune.observe.traces import StageTimer, TraceRecord, TraceWriter
from ragtune.protocols import Generator, TokenBudget

EXTRACTIVE = "extractive"
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

    def __init__(self, generator: Generator | None, scorer: SupportScorer, traces: TraceWriter | None = None,
                 answerability: AnswerabilityModel | None = None) -> None:
        self.generator = generator
        self.scorer = scorer
        self.traces = traces
        self.answerability = answerability

    @property
    def model_name(self) -> str:
        return self.generator.name if self.generator is not None else EXTRACTIVE

    def answer(self, question: str, retrieved: SearchResult, options: AskOptions, *, principal: Principal,
               collection: str, on_token: Callable[[str], None] | None = None,
               timer: StageTimer | None = None) -> Answer:
        timer = timer or StageTimer()
        hits = retrieved.hits[: options.top_k]
        with timer.stage("prompt"):
            prompt = build_prompt(question, hits, count_tokens=self._count_tokens(), budget=self._budget(options))
        with timer.stage("support"):
            candidates = self._candidates(question, prompt.sources)
        best = max((c.evidence.support for c in candidates), default=0.0)
        answerable: float | None = None
        if self.answerability is not None and best >= options.abstain_threshold:
            with timer.stage("answerability"):
                answerable = self.answerability.probability(question, [s.text for s in prompt.sources])
        completion: Completion | None = None
        error = None
        sentences: list[AnswerSentence] = []
        if best < options.abstain_threshold or (
                answerable is not None and self.answerability is not None
                and answerable < self.answerability.threshold):
            text, abstained = NO_ANSWER, True
        elif self.generator is None:
            text, sentences = self._extractive(candidates, options)
            abstained = False
            if on_token is not None:
                on_token(text)
        else:
            with timer.stage("generate"):
                try:
                    completion = self.generator.generate(prompt.messages, max_tokens=options.max_tokens,
                                                         on_token=on_token)
                except GenerationTimeoutError as exc:
                    error = str(exc)
            if completion is not None and completion.finish_reason == "timeout":
                error = f"generation timed out after {completion.seconds:.1f}s; the answer is cut short"
            text = completion.text if completion is not None else ""
            abstained = completion is not None and _says_no_answer(text)
            with timer.stage("grounding"):
                sentences = [] if abstained or not text else self._check(text, prompt.sources, options)
        citations = _citations(prompt.sources, sentences)
        answer = Answer(
            question=question, text=text, citations=citations, hits=hits, model=self.model_name,
            sentences=sentences, abstained=abstained,
            grounded=not abstained and bool(sentences) and all(s.supported for s in sentences),
            error=error, usage=_usage(completion, best, answerable), timings_ms=dict(timer.timings_ms),
            prompt=prompt.messages,
        )
        trace_id = self._trace(answer, prompt, retrieved, principal, collection, completion)
        return Answer(**{**answer.__dict__, "trace_id": trace_id})

    # -- parts ---------------------------------------------------------------------------------
    def _count_tokens(self) -> Callable[[str], int]:
        if isinstance(self.generator, TokenBudget):
            return self.generator.count_tokens
        # No tokenizer (extractive, or a remote model): a conservative 3 characters per token.
        return lambda text: len(text) // 3 + 1

    def _budget(self, options: AskOptions) -> int:
        window = self.generator.context_window if isinstance(self.generator, TokenBudget) else 0
        if window > 0:
            # leave room for the system message, the question and the answer
            return max(64, min(options.context_tokens, window - options.max_tokens - 256))
        return options.context_tokens

    def _candidates(self, question: str, sources: Sequence[PromptSource]) -> list[Candidate]:
        spans = [(s, a, b) for s in sources for a, b in sentence_spans(s.text)]
        if not spans:
            return []
        evidence = self.scorer.evidence([question], [[s.text[a:b]] for s, a, b in spans])[0]
        return [Candidate(source=s, start=s.start + a, end=s.start + b, text=s.text[a:b], evidence=e)
                for (s, a, b), e in zip(spans, evidence, strict=True)]

    def _extractive(self, candidates: list[Candidate], options: AskOptions) -> tuple[str, list[AnswerSentence]]:
        ranked = sorted(candidates, key=lambda c: (-c.evidence.support, c.source.number, c.start))
        chosen = [c for c in ranked[: options.extractive_sentences]
                  if c.evidence.support >= max(options.abstain_threshold, ranked[0].evidence.support - 0.15)]
        chosen.sort(key=lambda c: (c.source.number, c.start))  # read in source order
        sentences = [AnswerSentence(text=c.text, citations=(c.source.number,), support=c.evidence.support,
                                    supported=True) for c in chosen]
        return " ".join(f"{c.text} [{c.source.number}]" for c in chosen), sentences

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
               collection: str, completion: Completion | None) -> int | None:
        if self.traces is None:
            return None
        return self.traces.write(TraceRecord(
            kind="ask", principal=principal, collection=collection, query=answer.question,
            params={
                "model": answer.model, "search_trace_id": retrieved.trace_id, "mode": retrieved.mode,
                "prompt": [{"role": m.role, "content": m.content} for m in prompt.messages],
                "response": answer.text, "abstained": answer.abstained, "grounded": answer.grounded,
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
        ))


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


def _usage(completion: Completion | None, support: float, answerable: float | None) -> dict[str, float]:
    usage: dict[str, float] = {"question_support": round(support, 4)}
    if answerable is not None:
        usage["answerable_probability"] = round(answerable, 4)
    if completion is not None:
        usage.update(prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens,
                     generation_seconds=round(completion.seconds, 3),
                     tokens_per_second=round(completion.tokens_per_second, 2))
    return usage


def answer_fields(answer: Answer) -> dict[str, Any]:
    """A JSON-ready view of an answer (``--json`` and, later, the server)."""
    return {
        "question": answer.question, "answer": answer.text, "model": answer.model,
        "abstained": answer.abstained, "grounded": answer.grounded, "error": answer.error,
        "citations": [c.__dict__ for c in answer.citations],
        "sentences": [s.__dict__ for s in answer.sentences],
        "sources": [{"rank": h.rank, "score": h.score, "uri": h.uri, "chunk_id": h.chunk.id,
                     "start": h.chunk.start, "end": h.chunk.end, "text": h.chunk.text} for h in answer.hits],
        "usage": answer.usage, "timings_ms": answer.timings_ms, "trace_id": answer.trace_id,
    }
