"""Reader training examples written from a collection's own chunks, as the reranker's synthetic
questions are (``rerankers.mining.synthetic_pairs``), but with the answer taken from the text.

A small local model (SmolLM2-135M) writes poor free-form question/answer pairs: its answers are
rarely a span of the passage, often the whole sentence, sometimes invented. So the answer comes
first and from the text: a candidate in a chunk sentence found by simple deterministic patterns
(a date, a number with two or more digits or a unit, a run of capitalised words that is not just
the sentence's first word, a quoted term). The generator then sees only that sentence with the candidate
blanked out (``___``) and a question word that fits the candidate's kind, and turns it into a
question. Blanking keeps the model from copying the answer into the question. Tried on 39
candidates of held-out SQuAD paragraphs before this was written: asking SmolLM2 for "a question
whose answer is X" gave 2 usable questions (most replies were "The answer is X."), the blanked
sentence with two worked examples 35; benchmarks/reader_synthetic.py measures the result.

A reply is kept only when it is a question (``clean_question``), a wh-question (a span answers
it, not yes/no) with the question words it was given (a date is asked with "When"), not longer
than ``MAX_QUESTION_WORDS``, does not hold the answer, and shares a
content term (the BM25 analyzer's stemmed terms) other than the answer's with its sentence.
The example's context is the chunk text (cut at ``max_context`` characters; only sentences inside
the cut are used) and ``answer_start`` the candidate's offset in it.

Unanswerable examples: for a share ``negatives`` of the kept questions (chosen by a hash of the
question), the best hybrid hit for the question that is another chunk and does not contain the
answer (case-insensitive) is added with ``answer_start=None``: what retrieval puts beside the right
passage, as SQuAD's other paragraph of the same article is.

Every example's ``group`` is a hash of its source chunk's (uri, ordinal), so a split by group
keeps one chunk's questions together; ``source`` is "synthetic". The same collection and the same
(greedy) generator give the same examples: chunks are taken in the order of a hash of (uri,
ordinal) as ``synthetic_pairs`` takes them, and within a chunk candidates by kind, then position.

Concessions: the patterns are English-centred and know no grammar (a capitalised run may be a
title or a heading's words; a number may be a list index); beyond the question word, nothing
checks that the question asks for the blank rather than something else of the sentence (for
names nothing at all); an unanswerable pairing may still
answer the question in other words than the answer's. ``benchmarks/reader_synthetic.py`` measures
how often the questions are good. Chunks are read as the operator: training is an operator action
and the examples never leave the project.

Progress (``protocols.Progress``): "questions", the questions kept so far of ``limit`` (``detail``:
the candidates tried).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ragtune.errors import ConfigError, DatasetError, GenerationError
from ragtune.finetune.reader import ReaderExample
from ragtune.finetune.rerankers.mining import clean_question
from ragtune.generate.sentences import sentence_spans
from ragtune.models import Message, Principal
from ragtune.progress import emit
from ragtune.protocols import Generator, Progress

log = logging.getLogger(__name__)

SOURCE = "synthetic"
MAX_QUESTION_WORDS = 30
MAX_ANSWER_WORDS = 5
MIN_SENTENCE_WORDS = 6

_MONTH = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
_DATE = re.compile(rf"\b(?:\d{{1,2}} {_MONTH}(?:,? \d{{3,4}})?|{_MONTH} \d{{1,2}}(?:, \d{{3,4}})?|{_MONTH} \d{{4}})\b")
_UNIT = r"(?:%| percent| per cent| million| billion| thousand| km| kilometres| kilometers| miles| metres| meters)"
# Two or more digits, or one digit with a unit: a lone digit is mostly a list index or a subscript.
_NUMBER = re.compile(
    rf"(?<![\w.,$£€-])[$£€]?(?:\d{{1,3}}(?:,\d{{3}})+|\d{{2,}}|\d(?={_UNIT}|\.\d))(?:\.\d+)?{_UNIT}?(?![\w,]|\.\d)")
_CAPITAL = r"(?:[A-Z][a-z][\w'’-]*|[A-Z]{2,}s?)"
_NAME = re.compile(rf"\b{_CAPITAL}(?: (?:(?:of|the|de|du|la|le|von|van|der|da|and|for) )?{_CAPITAL})*")
_QUOTED = re.compile(r"[\"“]([^\"“”\n]{2,60})[\"”]")
_POSSESSIVE = re.compile(r"['’]s?$")
# Capitalised words that start a clause (after a quote or a colon) rather than name anything.
_COMMON = frozenset("a an the in on at by for from however this these those it its he she his her they their we our "
                    "after before during although while when as since with some many most one".split())
# Candidates by kind, best first. Dates and years make the best questions: on 60 SmolLM2 questions
# about held-out SQuAD paragraphs (benchmarks/reader_synthetic.py) the trained reader read the
# synthetic answer with token F1 0.62 (dates) and 0.72 (years), but 0.29 for numbers and 0.31 for
# multi-word names; too few single names and quoted terms (3 and 2) to rank them.
_KINDS = ("date", "year", "number", "names", "quoted", "name")
_YEAR = re.compile(r"(?:1[0-9]|20)\d\d")
_WH = frozenset("what when where who whom whose which why how".split())
_TERM = re.compile(r"\w+")

PROMPT = ("You turn a sentence with a blank (___) into a quiz question whose answer is the missing words. "
          "Reply with the question only, ending with a question mark.")
# Two worked examples: the model copies their shape (measured: without them most replies restate
# the answer instead of asking for it).
SHOTS = (
    Message("user", "Sentence: The Eiffel Tower was finished in ___ for the World's Fair in Paris.\n"
                    "Start with: In what year"),
    Message("assistant", "In what year was the Eiffel Tower finished for the World's Fair in Paris?"),
    Message("user", "Sentence: The novel was written by ___ while he lived in Dublin."),
    Message("assistant", "Who wrote the novel while he lived in Dublin?"),
)


@dataclass(frozen=True)
class Candidate:
    """An answer candidate: ``start`` is its offset in the chunk's (capped) text."""

    kind: str
    start: int
    text: str
    sentence: tuple[int, int]  # the sentence's span in the chunk text


@dataclass
class SyntheticRun:
    """What a run wrote: the examples, and how many candidates were tried and why replies were
    dropped (keys: ``generation_failed``, ``not_a_question``, ``copies_blank``, ``not_wh``,
    ``wrong_kind``, ``too_long``, ``holds_answer``, ``off_topic``, ``duplicate``)."""

    examples: list[ReaderExample] = field(default_factory=list)
    tried: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    @property
    def answerable(self) -> int:
        return sum(1 for e in self.examples if e.answer_start is not None)


def synthetic_reader_examples(rt: Any, collection: str, generator: Generator, *, limit: int,
                              negatives: float = 0.5, progress: Progress | None = None) -> list[ReaderExample]:
    """``limit`` answerable examples (fewer if the collection runs out) written from the chunks of
    ``collection`` by ``generator``, plus unanswerable pairings for a share ``negatives`` of them."""
    return write_synthetic(rt, collection, generator, limit=limit, negatives=negatives, progress=progress).examples


def write_synthetic(rt: Any, collection: str, generator: Generator, *, limit: int, negatives: float = 0.5,
                    max_tries: int | None = None, max_context: int = 4000, min_chars: int = 80,
                    max_tokens: int = 40, progress: Progress | None = None) -> SyntheticRun:
    """``synthetic_reader_examples`` with the counts behind it. At most ``max_tries`` (default
    ``3 * limit``) candidates are asked about; chunks give their best candidate first, their next
    best after every chunk has given one."""
    tries = 3 * limit if max_tries is None else max_tries
    checks = {"limit": (limit, limit >= 1), "negatives": (negatives, 0.0 <= negatives <= 1.0),
              "max_tries": (tries, tries >= 1), "max_context": (max_context, max_context >= 200)}
    for key, (value, ok) in checks.items():
        if not ok:
            raise ConfigError(f"synthetic reader examples: invalid {key}={value!r} "
                              "(limit and max_tries at least 1, negatives from 0 to 1, max_context at least 200)")
    info = rt.collection(collection)  # NotFoundError names an unknown collection
    chunks = _chunks(rt, info.id, min_chars=min_chars, limit=tries)
    if not chunks:
        raise DatasetError(f"collection {collection!r} has no chunk of at least {min_chars} characters "
                           "to write reader questions from; ingest documents first")
    run = SyntheticRun()
    seen: set[str] = set()
    for chunk, candidate in _schedule(chunks, max_context):
        if run.tried >= tries or run.answerable >= limit:
            break
        run.tried += 1
        example = _ask(rt, generator, chunk, chunk.text[:max_context], candidate, run, seen, max_tokens)
        if example is not None:
            run.examples.append(example)
            if _wants_negative(example, negatives):
                negative = _negative(rt, collection, chunk, example, max_context)
                if negative is not None:
                    run.examples.append(negative)
        emit(progress, "questions", run.answerable, limit, detail=f"{run.tried} candidates tried")
    if not run.examples:
        raise DatasetError(f"no usable reader question from collection {collection!r}: "
                           f"{run.tried} answer candidates tried, replies dropped: {dict(run.rejected)}"
                           if run.tried else
                           f"collection {collection!r} has no sentence with an answer candidate (a date, a "
                           "number, a name or a quoted term) to write reader questions about")
    log.info("synthetic reader examples from %s: %d questions of %d candidates tried (%s)", collection,
             run.answerable, run.tried, dict(run.rejected))
    return run


@dataclass(frozen=True)
class _Chunk:
    uri: str
    ordinal: int
    text: str

    @property
    def group(self) -> str:
        return chunk_group(self.uri, self.ordinal)


def chunk_group(uri: str, ordinal: int) -> str:
    """The split group of a chunk's examples: a hash of (uri, ordinal)."""
    return hashlib.sha256(f"{uri}#{ordinal}".encode()).hexdigest()[:16]


def _chunks(rt: Any, collection_id: int, *, min_chars: int, limit: int) -> list[_Chunk]:
    # The order of synthetic_pairs: a hash of (uri, ordinal), spread over the collection and stable
    # when other documents are added.
    with rt.db.connection() as conn:
        rows = conn.execute(
            "SELECT d.uri, c.ordinal, c.body FROM chunks c JOIN documents d ON d.id = c.document_id"
            " WHERE c.collection_id = %s AND length(c.body) >= %s"
            " ORDER BY md5(d.uri || '#' || c.ordinal::text), c.id LIMIT %s",
            (collection_id, min_chars, limit),
        ).fetchall()
    return [_Chunk(str(r["uri"]), int(r["ordinal"]), str(r["body"])) for r in rows]


def _schedule(chunks: Sequence[_Chunk], max_context: int) -> Iterator[tuple[_Chunk, Candidate]]:
    """Round robin: every chunk's best candidate, then every chunk's second best, and so on."""
    lists = [answer_candidates(c.text[:max_context]) for c in chunks]
    for rank in range(max((len(x) for x in lists), default=0)):
        for chunk, candidates in zip(chunks, lists, strict=True):
            if rank < len(candidates):
                yield chunk, candidates[rank]


def answer_candidates(text: str) -> list[Candidate]:
    """Answer candidates of ``text``, best kind first (``_KINDS``), then by position; at most one
    per sentence and kind, each answer text once, none overlapping another, none occurring twice
    in its sentence (the blank must be unambiguous)."""
    found: list[Candidate] = []
    answers: set[str] = set()
    for a, b in sentence_spans(text):
        sentence = text[a:b]
        if len(sentence.split()) < MIN_SENTENCE_WORDS:
            continue  # titles, headings, fragments: nothing to ask about
        taken: list[tuple[int, int]] = []
        kinds: set[str] = set()
        for kind, start, end in _matches(sentence):
            answer = sentence[start:end]
            if (kind in kinds or answer in answers or any(start < y and x < end for x, y in taken)
                    or len(answer.split()) > MAX_ANSWER_WORDS or sentence.count(answer) != 1
                    or len(answer) * 2 > len(sentence)):
                continue
            taken.append((start, end))
            kinds.add(kind)
            answers.add(answer)
            found.append(Candidate(kind, a + start, answer, (a, b)))
    return sorted(found, key=lambda c: (_KINDS.index(c.kind), c.start))


def _matches(sentence: str) -> Iterator[tuple[str, int, int]]:
    for m in _DATE.finditer(sentence):
        yield "date", m.start(), m.end()
    for m in _NUMBER.finditer(sentence):
        yield ("year" if _YEAR.fullmatch(m.group()) else "number"), m.start(), m.end()
    for m in _QUOTED.finditer(sentence):
        yield "quoted", m.start(1), m.end(1)
    for m in _NAME.finditer(sentence):
        start, name = m.start(), _POSSESSIVE.sub("", m.group())  # "Ostrava's" names Ostrava
        if start == 0:
            # The first word is capitalised anyway: a common word ("The Kessler Bridge") is dropped;
            # any other ("Veltria is", "Robert Boyle proved") may or may not be a name, so no candidate.
            first, _, rest = name.partition(" ")
            if first.lower() not in _COMMON or not rest:
                continue
            start, name = len(first) + 1, rest
        if " " in name:
            yield "names", start, start + len(name)
        elif len(name) >= 3 and name.lower() not in _COMMON:
            yield "name", start, start + len(name)


def _question_word(candidate: Candidate) -> str | None:
    """The question word for the candidate's kind; names get none (person, place or thing is not
    known: the model chooses)."""
    if candidate.kind == "date":
        return "When"
    if candidate.kind == "year":
        return "In what year"
    if candidate.kind == "number":
        if "%" in candidate.text or "per" in candidate.text:
            return "What percentage"
        return "How much" if candidate.text[0] in "$£€" else "How many"
    return None


def question_messages(text: str, candidate: Candidate) -> list[Message]:
    """The prompt: the candidate's sentence with the candidate blanked out."""
    a, b = candidate.sentence
    blanked = text[a:candidate.start] + "___" + text[candidate.start + len(candidate.text):b]
    word = _question_word(candidate)
    user = f"Sentence: {' '.join(blanked.split())}" + (f"\nStart with: {word}" if word else "")
    return [Message("system", PROMPT), *SHOTS, Message("user", user)]


def _ask(rt: Any, generator: Generator, chunk: _Chunk, context: str, candidate: Candidate, run: SyntheticRun,
         seen: set[str], max_tokens: int) -> ReaderExample | None:
    try:
        reply = generator.generate(question_messages(context, candidate), max_tokens=max_tokens).text
    except GenerationError as exc:
        log.warning("no question for a candidate of %s#%d: %s", chunk.uri, chunk.ordinal, exc)
        run.rejected["generation_failed"] += 1
        return None
    a, b = candidate.sentence
    verdict, question = check_question(reply, context, context[a:b], candidate.text, rt.analyzer,
                                       asks=_question_word(candidate))
    if question is not None and question.lower() in seen:
        verdict = "duplicate"
    if verdict != "ok" or question is None:
        run.rejected[verdict] += 1
        return None
    seen.add(question.lower())
    return ReaderExample(question, context, candidate.start, candidate.text, group=chunk.group, source=SOURCE)


def check_question(reply: str, chunk: str, sentence: str, answer: str, analyzer: Any, *, asks: str | None = None
                   ) -> tuple[str, str | None]:
    """("ok", question) or (why not, question or None), for a reply asking for ``answer`` of
    ``sentence`` (see the module's docstring); ``asks``: the question words it was told to start
    with, which it must hold (a "Who ...?" question does not ask for a date)."""
    question = clean_question(reply, chunk)
    if question is None:
        return "not_a_question", None
    words = _TERM.findall(question.lower())
    if "___" in question or "blank" in words:
        return "copies_blank", question
    if not _WH.intersection(words):
        return "not_wh", question
    if asks is not None and not set(_TERM.findall(asks.lower())) <= set(words):
        return "wrong_kind", question
    if len(words) > MAX_QUESTION_WORDS:
        return "too_long", question
    if _holds(words, _TERM.findall(answer.lower())):
        return "holds_answer", question
    shared = set(analyzer.terms(question)) & set(analyzer.terms(sentence)) - set(analyzer.terms(answer))
    if not shared:
        return "off_topic", question
    return "ok", question


def _holds(words: list[str], answer: list[str]) -> bool:
    n = len(answer)
    return n > 0 and any(words[i:i + n] == answer for i in range(len(words) - n + 1))


def _wants_negative(example: ReaderExample, share: float) -> bool:
    digest = hashlib.sha256(f"{example.group}\x00{example.question}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < share


def _negative(rt: Any, collection: str, chunk: _Chunk, example: ReaderExample, max_context: int
              ) -> ReaderExample | None:
    hits = rt.search(example.question, collection=collection, top_k=10, mode="hybrid", principal=Principal.system(),
                     reranker=False).hits
    answer = example.answer.lower()
    for hit in hits:
        text = hit.chunk.text[:max_context]
        if (hit.uri, hit.chunk.ordinal) != (chunk.uri, chunk.ordinal) and answer not in text.lower():
            return ReaderExample(example.question, text, None, "", group=example.group, source=SOURCE)
    return None
