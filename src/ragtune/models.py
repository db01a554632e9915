"""Plain data objects that flow between the layers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Principal:
    """Who is asking. ``groups`` decide which ACL'd documents are visible.

    ``admin`` sees everything; an anonymous principal (no groups) sees only public documents.
    """

    id: str = "anonymous"
    groups: frozenset[str] = frozenset()
    admin: bool = False

    @classmethod
    def system(cls) -> Principal:
        return cls(id="system", admin=True)


@dataclass(frozen=True)
class Section:
    """A heading that starts at ``start`` (character offset) in a loaded document's text."""

    start: int
    level: int
    title: str


@dataclass(frozen=True)
class LoadedDocument:
    """What a Loader yields: text plus what it knows about the source, before storage."""

    uri: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    sections: tuple[Section, ...] = ()  # headings in document order, offsets into ``text``
    mime: str = "text/plain"


@dataclass(frozen=True)
class Document:
    id: int
    collection: str
    uri: str
    content_hash: str
    version: int
    metadata: dict[str, Any]
    acl: tuple[str, ...]  # empty: public within the collection
    title: str | None = None
    chunk_count: int = 0
    updated_at: str | None = None


@dataclass(frozen=True)
class Chunk:
    """A piece of a document; ``start``/``end`` are character offsets into the document text."""

    ordinal: int
    text: str
    start: int
    end: int
    heading: str = ""  # heading path, " > " separated
    tokens: int = 0
    id: int | None = None
    document_id: int | None = None


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float
    rank: int
    uri: str
    document_id: int
    metadata: dict[str, Any]
    scores_by_source: dict[str, float] = field(default_factory=dict)
    # The chunk's prompt-injection score from ingest (govern.injection; None: not screened), and
    # what its collection's policy says of it ("flagged" or "demoted"; None: nothing).
    injection: float | None = None
    injection_flag: str | None = None


@dataclass(frozen=True)
class FileFailure:
    """A file (or one record of it, ``path:line``) that was not ingested; ``error`` is the error's
    ``code`` (``unsupported_format``, ``corrupt_file``...), the kind reports group failures by."""

    source: str
    error: str
    reason: str


@dataclass(frozen=True)
class FileWarning:
    """A warning a library gave while a file was read (pypdf's "EOF marker not found"), kept with
    the file it is about instead of printed without one; ``origin`` is the logger or warning
    category that gave it, the kind reports group warnings by."""

    source: str
    origin: str
    message: str


@dataclass
class IngestReport:
    """What one ingest or sync did. Every document (or record) the run met is counted once, in
    exactly one of added, updated, unchanged, removed and failed, so ``total`` is their sum;
    ``files`` is how many files were read (0 for documents given directly), fewer than ``total``
    when a file holds several documents (JSON Lines, archives) or a sync removes some."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    acl_changed: int = 0  # stored documents whose ACL this run changed (only when asked to)
    # of added and updated: near-duplicates stored linked to the document they copy, without chunks
    linked: int = 0
    failed: list[FileFailure] = field(default_factory=list)
    warnings: list[FileWarning] = field(default_factory=list)
    files: int = 0
    chunks: int = 0
    embedded: int = 0  # texts actually sent through the embedder (cache misses)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.added + self.updated + self.unchanged + self.removed + len(self.failed)

    def to_dict(self) -> dict[str, Any]:
        """The counts and every failure and warning, as JSON-ready values (``ingest --report``)."""
        return {
            "files": self.files, "total": self.total, "added": self.added, "updated": self.updated,
            "unchanged": self.unchanged, "removed": self.removed, "failed": len(self.failed),
            "acl_changed": self.acl_changed, "linked": self.linked, "chunks": self.chunks, "embedded": self.embedded,
            "seconds": round(self.seconds, 3),
            "failures": [{"source": f.source, "code": f.error, "reason": f.reason} for f in self.failed],
            "warnings": [{"source": w.source, "origin": w.origin, "message": w.message} for w in self.warnings],
        }


@dataclass(frozen=True)
class ProgressEvent:
    """How far one task of long work has got (``ragtune.protocols.Progress`` receives these).

    ``task`` is a stable name (each producer's docstring lists its tasks and units: "documents",
    "chunks", "embedded", "training", "mining", ...); ``done`` is the absolute count so far, never
    an increment, so a lost or repeated event does no harm; ``total`` is None while unknown.
    ``detail`` is short text for a person (a file name, "loss 0.312"); ``metrics`` the numbers
    behind it (``{"loss": 0.312}``)."""

    task: str
    done: int
    total: int | None = None
    detail: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.task:
            raise ValueError("a progress event needs a task name")
        if self.done < 0 or (self.total is not None and self.total < 0):
            raise ValueError(f"progress counts cannot be negative: {self.task} done={self.done} total={self.total}")


@dataclass(frozen=True)
class SearchResult:
    query: str
    mode: str
    hits: list[Hit]
    trace_id: str | None  # 32 hex digits (OpenTelemetry), None when not traced
    timings_ms: dict[str, float]


# -- generation ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Message:
    """One chat message; ``role`` is system, user or assistant."""

    role: str
    content: str


@dataclass(frozen=True)
class AdapterLineage:
    """A LoRA adapter applied on a base model: the folder it was loaded from, ``sha256`` over its
    config and weight files (names and bytes, the recipe of a base model's hash), and, for a
    registered version, ``registry`` (``NAME/VERSION``), the ``alias`` the request named and the
    training ``run_id``. ``label`` is how ``model`` names it (``smollm2-135m-instruct+LABEL``)."""

    path: str
    sha256: str
    label: str
    registry: str | None = None
    alias: str | None = None
    run_id: str | None = None

    def to_dict(self, *, paths: bool = True) -> dict[str, Any]:
        out = dict(self.__dict__)
        if not paths:
            del out["path"]
        return out


@dataclass(frozen=True)
class Lineage:
    """Which model wrote an answer: the ``generator`` spec asked for (``smollm2``,
    ``registry:acme@production``, ``extractive``), the ``base`` model (None without a generation
    model; ``base_sha256`` when it is known, as for registered versions) and the ``adapter`` on it."""

    generator: str
    base: str | None = None
    base_sha256: str | None = None
    adapter: AdapterLineage | None = None

    def to_dict(self, *, paths: bool = True) -> dict[str, Any]:
        """JSON-ready; ``paths=False`` leaves out folders on the machine (the server's views)."""
        return {"generator": self.generator, "base": self.base, "base_sha256": self.base_sha256,
                "adapter": None if self.adapter is None else self.adapter.to_dict(paths=paths)}


@dataclass(frozen=True)
class PromptFormat:
    """The prompt format a tuned model was trained on (``generate.prompt``: ``ragtune-sources/1`` or
    ``chat``). ``system`` is the system message it saw (for ``chat``: the one every training row
    shared, if they did); ``details`` say how the training prompts were made (collection, sources
    per prompt, share of prompts holding the gold source)."""

    name: str
    system: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.name, "system": self.system, **({"details": self.details} if self.details else {})}


@dataclass(frozen=True)
class Completion:
    """What a Generator returns: the text plus what it cost, and (when the generator knows it)
    the lineage of the model that wrote it."""

    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    finish_reason: str = "stop"  # stop, length, timeout, error
    lineage: Lineage | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Citation:
    """Source ``number`` as shown in the prompt, pointing at a real chunk and its place in the document."""

    number: int
    chunk_id: int
    document_id: int
    uri: str
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class AnswerSentence:
    """One sentence of an answer, the sources it cites and how well they support it (0..1)."""

    text: str
    citations: tuple[int, ...]
    support: float
    supported: bool
    inferred: bool = False  # the sentence cited nothing; the citation is the source that supports it best


@dataclass(frozen=True)
class AnswerSpan:
    """What the reader found: the answer's exact place in a document (character offsets into the
    document's text), the sentence around it, and the reader's confidence (0..1) that it answers."""

    text: str
    source: int  # the source number it was read from
    uri: str
    document_id: int
    chunk_id: int
    start: int
    end: int
    sentence: str
    sentence_start: int
    sentence_end: int
    confidence: float
    kind: str = "span"  # "yes" / "no": the question is answered by that word, the span is its evidence


@dataclass(frozen=True)
class Answer:
    question: str
    text: str
    citations: list[Citation]
    hits: list[Hit]
    model: str
    sentences: list[AnswerSentence] = field(default_factory=list)
    abstained: bool = False
    grounded: bool = True  # every sentence supported by what it cites
    error: str | None = None  # set when generation failed or timed out; hits are still returned
    usage: dict[str, float] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    trace_id: str | None = None
    prompt: list[Message] = field(default_factory=list)
    # Why the answer abstained: "retrieval" (the documents do not cover the question), "reader"
    # (they cover it but do not say), "answerability" (the answerability model), "generator" (the
    # generator said so); None when it answered.
    decided_by: str | None = None
    # Two separate signals: ``grounded`` (and each sentence's support) says the sources back what
    # the answer says; ``relevance`` (0..1, from the reader; None without one) says the answer
    # answers the question.
    relevance: float | None = None
    span: AnswerSpan | None = None
    # The generator spec, base model and adapter (with its content hash) behind the answer.
    lineage: Lineage | None = None
