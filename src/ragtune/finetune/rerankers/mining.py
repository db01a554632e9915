"""Training data for a reranker, mined from the collection itself: (query, positive, hard negative)
triples.

Positives come from qrels of an evaluation dataset (``triples_from_dataset``) or from questions a
generator wrote for chunks (``synthetic_pairs``); hard negatives are the top hybrid hits that are
not positive, i.e. exactly the mistakes the reranker is there to fix. ``hash_split`` halves a
dataset's questions by a hash of their ids, so the held-out half never reaches training.

Concessions: false negatives are not filtered beyond exact duplicates of a positive (an unjudged
relevant chunk can become a "negative"), and positives of a multi-chunk document are its
best-ranked chunk, which may not be the passage a question was written from.

Progress (``protocols.Progress``): ``mine_triples`` sends "mining", the questions mined so far of
all; ``synthetic_pairs`` sends "questions", the questions written so far of ``limit`` (``detail``:
the chunks tried).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ragtune.errors import ConfigError, DatasetError, GenerationError, NotFoundError
from ragtune.models import Message, Principal
from ragtune.progress import emit
from ragtune.protocols import Generator, Progress

log = logging.getLogger(__name__)

HASH_SPLIT = ("question ids halved by sha256(salt, id): the 'train' half mined for training, "
              "the other half never trained on")


@dataclass(frozen=True)
class Triple:
    query: str
    positive: str
    negative: str


def mine_triples(rt: Any, collection: str, pairs: Iterable[tuple[str, set[str]]], *, negatives_per_query: int = 4,
                 principal: Principal | None = None, progress: Progress | None = None) -> list[Triple]:
    """(query, positive chunk, hard negative) for each pair of (query, positive document uris).

    Negatives are the best hybrid hits from other documents (one chunk per document, none with
    the text of a positive); a positive is its document's best-ranked chunk, or the document's
    chunk closest to the query when the search missed it. Every positive gets every negative.
    """
    if negatives_per_query < 1:
        raise ConfigError(f"negatives_per_query must be at least 1, got {negatives_per_query}")
    principal = principal or Principal.system()
    pairs = [(q, set(p)) for q, p in pairs if q.strip() and p]
    triples: list[Triple] = []
    for start in range(0, len(pairs), 256):
        batch = pairs[start:start + 256]
        vectors = rt.embedder.embed_batch([q for q, _ in batch])
        for (query, positives), vector in zip(batch, vectors, strict=True):
            k = max(20, 2 * (negatives_per_query + len(positives)))
            hits = rt.search(query, collection=collection, top_k=k, mode="hybrid", principal=principal,
                             query_vector=vector).hits
            pos_texts = _positive_texts(rt, collection, query, vector, positives, hits)
            seen = {_norm(t) for t in pos_texts}
            taken = set(positives)  # positive documents, then one chunk per negative document
            negatives: list[str] = []
            for h in hits:
                if len(negatives) >= negatives_per_query:
                    break
                if h.uri in taken or _norm(h.chunk.text) in seen:
                    continue
                taken.add(h.uri)
                seen.add(_norm(h.chunk.text))
                negatives.append(h.chunk.text)
            triples.extend(Triple(query, p, n) for p in pos_texts for n in negatives)
        emit(progress, "mining", min(start + len(batch), len(pairs)), len(pairs))
    return triples


def _positive_texts(rt: Any, collection: str, query: str, vector: Any, positives: set[str], hits: list[Any]
                    ) -> list[str]:
    texts: list[str] = []
    for uri in sorted(positives):
        hit = next((h for h in hits if h.uri == uri), None)
        if hit is not None:
            texts.append(hit.chunk.text)
            continue
        try:
            _doc, _body, chunks = rt.document(uri, collection=collection)
        except NotFoundError:
            log.warning("positive %r of query %r is not in collection %r; skipped", uri, query, collection)
            continue
        if len(chunks) == 1:
            texts.append(chunks[0].text)
        elif chunks:
            sims = rt.embedder.embed_batch([c.text for c in chunks]) @ np.asarray(vector, dtype=np.float32)
            texts.append(chunks[int(np.argmax(sims))].text)
    return texts


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def hash_split(ids: Iterable[str], *, salt: str = "ragtune-rerank") -> tuple[list[str], list[str]]:
    """Split ids into (train, held-out) halves by a hash of each id: stable, and independent of
    order, of which other ids are present and of the dataset's size."""
    train: list[str] = []
    held: list[str] = []
    for i in ids:
        digest = hashlib.sha256(f"{salt}\x00{i}".encode()).digest()
        (train if digest[0] < 128 else held).append(i)
    return train, held


def triples_from_dataset(rt: Any, dataset: Any, collection: str, qids: Sequence[str], *,
                         negatives_per_query: int = 4, progress: Progress | None = None) -> list[Triple]:
    """Triples for ``qids`` of a ``RetrievalDataset`` indexed as ``collection`` (uri = document id)."""
    unknown = [q for q in qids if q not in dataset.queries]
    if unknown:
        raise DatasetError(f"{dataset.name}: unknown query ids, e.g. {unknown[:3]}")
    pairs = dataset.positives(qids)
    return mine_triples(rt, collection, pairs, negatives_per_query=negatives_per_query, progress=progress)


QUESTION_PROMPT = (
    "You write quiz questions. Read the passage and write ONE question that the passage answers. "
    "Reply with the question only, on one line, ending with a question mark."
)
_LABEL = re.compile(r"^\s*(?:[-*#>\d.)\s]+|\*\*)?\s*(?:question\s*\d*\s*[:.-]|q\s*[:.-])?\s*", re.I)
_WORD = re.compile(r"\w+")


def clean_question(text: str, chunk: str) -> str | None:
    """The generator's reply as one question, or None: the first non-empty line, labels and quotes
    stripped, cut after its first '?', at least three words, and not copied from the chunk."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = _LABEL.sub("", line).strip().strip("\"'`*“”‘’ ").strip()
    if "?" not in line:
        return None
    question = " ".join(line[: line.index("?")].split()).rstrip(" ,;:") + "?"
    words = _WORD.findall(question.lower())
    if len(words) < 3:
        return None
    if " ".join(words) in " ".join(_WORD.findall(chunk.lower())):
        return None  # a sentence of the chunk with a question mark added
    return question


def synthetic_pairs(rt: Any, collection: str, generator: Generator, *, limit: int, max_tokens: int = 48,
                    min_chars: int = 80, progress: Progress | None = None) -> list[tuple[str, set[str]]]:
    """(question, {document uri}) for up to ``limit`` chunks, questions written by ``generator``.

    Chunks are taken in the order of a hash of (uri, ordinal): deterministic, spread over the
    collection, and stable when other documents are added. Chunks shorter than ``min_chars`` are
    skipped; a reply that is not a usable question (see ``clean_question``) or a failed generation
    moves on to the next chunk, trying at most ``2 * limit`` chunks.
    """
    if limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit}")
    info = rt.collection(collection)
    with rt.db.connection() as conn:
        rows = conn.execute(
            "SELECT d.uri, c.body FROM chunks c JOIN documents d ON d.id = c.document_id"
            " WHERE c.collection_id = %s AND length(c.body) >= %s"
            " ORDER BY md5(d.uri || '#' || c.ordinal::text), c.id LIMIT %s",
            (info.id, min_chars, 2 * limit),
        ).fetchall()
    pairs: list[tuple[str, set[str]]] = []
    seen: set[str] = set()
    for tried, row in enumerate(rows, start=1):
        messages = [Message("system", QUESTION_PROMPT), Message("user", f"Passage:\n{row['body'][:2000]}")]
        try:
            reply = generator.generate(messages, max_tokens=max_tokens).text
        except GenerationError as exc:
            log.warning("no question for a chunk of %s: %s", row["uri"], exc)
            reply = ""
        question = clean_question(reply, row["body"])
        if question is not None and question.lower() not in seen:
            seen.add(question.lower())
            pairs.append((question, {row["uri"]}))
        emit(progress, "questions", len(pairs), limit, detail=f"{tried} chunks tried")
        if len(pairs) >= limit:
            break
    return pairs


def triples_hash(triples: Sequence[Triple]) -> str:
    data = json.dumps([[t.query, t.positive, t.negative] for t in triples], ensure_ascii=False)
    return hashlib.sha256(data.encode()).hexdigest()
