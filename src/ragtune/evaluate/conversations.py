"""A multi-turn retrieval set from SQuAD 2.0 dev: follow-up questions that need the conversation.

SQuAD questions are standalone ("When did the Normans conquer England?"), so a conversation made of
them alone would not test anything: the last question already names what it is about. Each case is
built from the answerable questions of one article, in file order (the order their writers wrote
them, paragraph by paragraph):

1. **The follow-up.** The last question is a question whose text names the article's subject: the
   title with ``_`` as spaces (``Normans``, ``Steam engine``), the title without its parenthesis or
   comma part (``Sky (United Kingdom)`` -> ``Sky``, ``Fresno, California`` -> ``Fresno``), and the
   singular or plural of each (``Huguenot`` / ``Huguenots``), matched whole-word and case-blind, with
   a ``the`` before it included. Every mention must stand as a noun phrase of its own: the word before
   it is a preposition, an auxiliary, a conjunction, a wh-word or a participle (``-ed``), or there
   is none; the word after it is one of those, a participle, or (after ``did``, ``can``...) a
   verb that does not end in ``s``; a possessive ``'s`` always qualifies. A question with a mention
   that is a modifier ("liquid oxygen", "the first Huguenot church", "what force") or with no
   mention is never a last turn. Every mention is replaced by a pronoun: ``they``/``them``/``their``
   for a plural form (ending in ``s`` but not ``ss``, ``us`` or ``is``), else ``it``/``its``; the
   possessive form takes the possessive pronoun, a mention after a preposition or a participle the
   object pronoun; a quoted mention (the origin of "Huguenot") names the word, not the subject.
   So every follow-up had its subject removed ("When did the Normans conquer England?" -> "When did
   they conquer England?").
2. **The conversation so far.** The 1 to 3 questions just before it in the same article (how many:
   ``1 + sha256(question id)[0] % 3``, so the set is the same on every run), each followed by an
   assistant turn holding its first gold answer. A case is kept only when one of those earlier
   questions names the subject: a pronoun needs something said before to refer to.
3. **The target.** The last question's paragraph (one relevant document), in the same corpus as
   ``load_dataset("squad")``: a collection indexed for ``ragtune eval retrieval`` serves both.

Concessions: the earlier turns are the SQuAD questions as written (standalone, so they name the
subject more often than a person chatting would); the pronoun is chosen by form, not meaning, and
its grammar is approximate ("What is it?"), and the rules above misread a few questions ("When
did it area enlargement take place?"), which matters little to retrieval (BM25 drops pronouns as
stop words). HotpotQA is not converted: its questions bridge two articles, and the
"subject" of a two-hop question is not one title.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ragtune.errors import DatasetError
from ragtune.evaluate.datasets import CorpusDoc, RetrievalDataset, load_dataset
from ragtune.models import Message

MAX_EARLIER = 3
_PREPOSITIONS = frozenset("""about above across after against along among around at before behind below beside
between beyond by during for from in inside into near of off on onto over since than through to toward towards
under until upon with within without""".split())
_AUXILIARIES = frozenset("""is are was were be been being has have had do does did doesn didn don can could will
would should may might must""".split())
_MODALS = frozenset("do does did doesn didn don can could will would should may might must".split())
# Words a mention of the subject may follow or be followed by and still be a noun phrase of its own
# (what else stands beside it, "liquid oxygen", "the Huguenot church", is taken for a modifier).
_BEFORE = _PREPOSITIONS | _AUXILIARIES | frozenset("and or but that when where why how who whom as".split())
_AFTER = _PREPOSITIONS | _AUXILIARIES | frozenset("""and or but that which who when where as so because than
not also most often typically usually only sometimes currently originally successfully still first""".split())
@dataclass(frozen=True)
class ConversationCase:
    """One multi-turn query: ``history`` (user and assistant turns) then ``question``, the follow-up
    made from the SQuAD question ``original`` by replacing ``subject``; ``target`` is its paragraph."""

    id: str
    history: tuple[Message, ...]
    question: str
    original: str
    subject: str
    target: str


@dataclass
class ConversationSet:
    name: str
    corpus: dict[str, CorpusDoc]
    cases: list[ConversationCase]

    @property
    def qrels(self) -> dict[str, dict[str, int]]:
        return {c.id: {c.target: 1} for c in self.cases}

    def stats(self) -> dict[str, int]:
        turns = [sum(1 for m in c.history if m.role == "user") for c in self.cases]
        return {"documents": len(self.corpus), "conversations": len(self.cases),
                "earlier_user_turns": sum(turns)}


def load_conversations(spec: str = "squad", cache_dir: Path | None = None, *, limit: int | None = None
                       ) -> ConversationSet:
    """The multi-turn set built from ``spec`` (only ``squad``), its first ``limit`` cases."""
    if spec != "squad":
        raise DatasetError(f"no multi-turn set is built from {spec!r}; use 'squad'")
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be at least 1, got {limit}")
    result = squad_conversations(load_dataset("squad", cache_dir))
    if limit is not None:
        result.cases = result.cases[:limit]
    return result


def squad_conversations(dataset: RetrievalDataset) -> ConversationSet:
    """The cases of the module docstring, in file order of their last question."""
    by_article: dict[str, list[str]] = {}
    for qid in dataset.queries:  # file order
        doc = next(iter(dataset.qrels[qid]))
        by_article.setdefault(doc.split("-", 1)[0], []).append(qid)
    cases = []
    for qids in by_article.values():
        title = dataset.corpus[next(iter(dataset.qrels[qids[0]]))].title
        pattern = subject_pattern(title)
        for j, qid in enumerate(qids):
            if j == 0:
                continue
            question, subject = replace_subject(dataset.queries[qid], pattern)
            if subject is None:
                continue
            earlier = qids[max(0, j - 1 - hashlib.sha256(qid.encode()).digest()[0] % MAX_EARLIER):j]
            if not any(pattern.search(dataset.queries[q]) for q in earlier):
                continue
            history: list[Message] = []
            for q in earlier:
                history.append(Message("user", dataset.queries[q]))
                history.append(Message("assistant", (dataset.answers.get(q) or ["(no answer)"])[0]))
            cases.append(ConversationCase(qid, tuple(history), question, dataset.queries[qid], subject,
                                          next(iter(dataset.qrels[qid]))))
    return ConversationSet(f"{dataset.name}-conversations", dataset.corpus, cases)


def subject_forms(title: str) -> list[str]:
    """The names an article's subject goes by in its questions (module docstring, step 1), longest first."""
    full = title.replace("_", " ").strip()
    short = re.split(r"\s*[(,]", full, maxsplit=1)[0].strip()
    forms: set[str] = set()
    for name in {full, short}:
        if not name:
            continue
        forms.add(name)
        if name == short:  # "Fresno, Californias" is no one's plural
            forms.add(name[:-1] if _plural(name) else name + "s")
    return sorted(forms, key=lambda f: (-len(f), f))


def subject_pattern(title: str) -> re.Pattern[str]:
    names = "|".join(re.escape(f) for f in subject_forms(title))
    return re.compile(rf"\b(?:the\s+)?(?P<name>{names})(?P<poss>'s|')?(?=\W|$)", re.IGNORECASE)


def replace_subject(question: str, pattern: re.Pattern[str]) -> tuple[str, str | None]:
    """``question`` with every mention ``pattern`` finds replaced by a pronoun, and the first mention;
    ``(question, None)`` when there is no mention or one is a modifier (module docstring, step 1)."""
    found: list[str] = []
    for m in pattern.finditer(question):
        if m.group("poss") is None and not _noun_phrase(question, m):
            return question, None
        found.append(m.group("name"))
    if not found:
        return question, None

    def pronoun(m: re.Match[str]) -> str:
        plural = _plural(m.group("name"))
        before = question[:m.start()].split()
        if m.group("poss") is not None:
            word = "their" if plural else "its"
        elif before and (before[-1].lower() in _PREPOSITIONS or before[-1].lower().endswith("ed")):
            word = "them" if plural else "it"  # "the fall of them", "attended them"
        else:
            word = "they" if plural else "it"
        return word if before else word.capitalize()

    return pattern.sub(pronoun, question), found[0]


def _noun_phrase(question: str, m: re.Match[str]) -> bool:
    """Whether the mention ``m`` stands alone as a noun phrase by the words around it."""
    if question[max(0, m.start() - 1):m.start()] in ('"', "'", "“", "‘"):
        return False  # the word itself, in quotes
    before = re.findall(r"[\w']+", question[:m.start()].lower())
    previous = before[-1] if before else ""
    if previous and previous not in _BEFORE and not previous.endswith("ed"):
        return False  # "liquid oxygen", "the upper Rhine", "the word Norman", "what force"
    after = re.match(r"\s*([\w]+)", question[m.end():])
    if after is None:
        return True  # the end, or punctuation
    word = after.group(1)
    if word.lower() in _AFTER or (word.islower() and word.endswith("ed")):
        return True  # "the Normans were", "Oxygen is", "is Fresno located"
    # after "did"/"can" the subject is followed by its verb, which a plural noun is not
    return previous in _MODALS and word.islower() and not _plural(word)


def _plural(name: str) -> bool:
    last = name.split()[-1].lower()
    return last.endswith("s") and not last.endswith(("ss", "us", "is"))
