"""Conversations: the turns so far, checked, and the query a follow-up question is retrieved with.

A follow-up ("and when did it end?") names nothing a search can find; the conversation before it
does. ``[retrieval] conversation`` chooses how a question asked with a ``history`` is searched:

* ``last``: the question alone, as without a history.
* ``concat``: the question with the earlier user turns, weighted by recency: the user turn ``k``
  turns back weighs ``decay**k`` (the question 1), for the ``turns`` most recent. The dense query
  is the normalised weighted sum of the question's and those turns' embeddings. BM25 takes whole
  term counts, so its query holds each text ``floor(weight / decay)`` times: with the default 0.5
  the question twice and the previous user turn once; turns lighter than ``decay`` are left out
  of it, where on the SQuAD follow-ups they mostly added words of other paragraphs (nDCG@10 of
  hybrid -0.025 with the three earlier turns in it). Assistant turns are not used.
* ``rewrite``: a generator (the local SmolLM2 by default) rewrites the question to stand alone.
  Asked for a whole standalone question, SmolLM2-135M answered it or asked another question in 7
  of 9 samples we tried; asked only what the question's pronoun refers to, it named the right thing
  in 14 of 20. So it is asked that (``REWRITE_SYSTEM``, three examples, ``rewrite_max_tokens``), and
  the question's personal pronouns are replaced by its reply. A reply is kept only when it names
  something the conversation's user turns said (its longest leading run of words found there);
  otherwise, or when the generator fails, the question is searched as it is.
* ``rewrite+concat``: the rewritten question in place of the question, with the earlier turns.

A question without earlier user turns is searched alone whatever the method. Measured on the
multi-turn SQuAD set (``evaluate/conversations.py``) by ``benchmarks/conversation_retrieval.py``
(README, "Conversations"), hybrid search: R@5 last 0.821, concat 0.972 on all 532 follow-ups; on
100 of them concat 0.940 (nDCG@10 0.888), rewrite 0.860 (0.797), rewrite+concat 0.940 (0.866) for
~340 ms of SmolLM2 per question. So ``concat`` is the default; the rewrite helps when the earlier
turns do not share words with the answer, which this set (standalone SQuAD questions as earlier
turns) rarely tests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.errors import ConfigError, GenerationError, LimitError, QueryError
from ragtune.models import Message
from ragtune.protocols import Embedder, Generator
from ragtune.retrieve.filters import bad_text
from ragtune.settings import CONVERSATION_METHODS, Settings

ROLES = ("system", "user", "assistant")
# The conversation so far as callers give it: messages, or {"role", "content"} mappings (JSON)
History = Iterable[Message | Mapping[str, Any]]

REWRITE_SYSTEM = ("You read a conversation and say what a pronoun in its last question refers to. "
                  "Reply with the name only, as it appears in the conversation.")
# (earlier user turn, follow-up, pronoun, reply): a 135M model follows examples better than rules
_REWRITE_EXAMPLES = (
    ("Who wrote Hamlet?", "When was it first performed?", "it", "Hamlet"),
    ("What is the capital of Kenya?", "What is its population?", "its", "Kenya"),
    ("Where do penguins live?", "What do they eat?", "they", "penguins"),
)
_PRONOUN = re.compile(r"\b(he|she|it|they|him|her|them|his|its|their|hers|theirs)\b", re.IGNORECASE)
_POSSESSIVE = frozenset(("his", "its", "their", "hers", "theirs"))
_WORD = re.compile(r"[\w'-]+")
_MAX_REFERENT_WORDS = 8


@dataclass(frozen=True)
class ConversationOptions:
    method: str = "concat"
    turns: int = 3
    decay: float = 0.5
    rewrite_max_tokens: int = 16
    max_messages: int = 200
    max_chars: int = 100_000

    def __post_init__(self) -> None:
        if self.method not in CONVERSATION_METHODS:
            raise ConfigError(f"unknown conversation method {self.method!r}; use one of "
                              f"{', '.join(CONVERSATION_METHODS)}")
        if not 0.0 < self.decay <= 1.0:
            raise ConfigError(f"conversation decay must be over 0 and at most 1, got {self.decay}")

    @classmethod
    def from_settings(cls, settings: Settings, method: str | None = None) -> ConversationOptions:
        r = settings.retrieval
        return cls(method=method or r.conversation, turns=r.conversation_turns, decay=r.conversation_decay,
                   rewrite_max_tokens=r.rewrite_max_tokens, max_messages=r.max_history_messages,
                   max_chars=r.max_history_chars)

    @property
    def rewrites(self) -> bool:
        return self.method.startswith("rewrite")


@dataclass(frozen=True)
class ConversationQuery:
    """What a follow-up is searched by: ``text`` is the BM25 query (and what the search trace
    records), ``vector`` the dense query (None: ``text`` is embedded as any query is);
    ``rewritten`` the standalone question a rewrite made (None when none was kept)."""

    question: str
    text: str
    vector: np.ndarray | None
    method: str
    turns: int  # earlier user turns used
    rewritten: str | None = None

    def trace(self) -> dict[str, Any]:
        return {"method": self.method, "question": self.question, "turns": self.turns,
                "rewritten": self.rewritten}


def check_question(question: str, name: str = "question") -> str:
    """``question`` when it is text a search can take; a ``QueryError`` naming ``name`` otherwise."""
    if not isinstance(question, str) or not question.strip():
        raise QueryError(f"the {name} is empty")
    problem = bad_text(question)
    if problem:
        raise QueryError(f"the {name} holds {problem}")
    return question


def as_conversation(history: History | None, options: ConversationOptions | None = None,
                    *, source: str = "history") -> list[Message]:
    """The conversation so far as messages, checked: each a ``Message`` or a ``{"role", "content"}``
    mapping, ``role`` system, user or assistant, ``content`` non-empty text; at most
    ``max_messages`` of them and ``max_chars`` characters in all. Errors name ``source`` and the
    message's index."""
    options = options or ConversationOptions()
    if history is None:
        return []
    if isinstance(history, str | bytes | Mapping):
        raise QueryError(f"{source} is not a conversation: expected a list of {{\"role\", \"content\"}} messages, "
                         f"got {type(history).__name__}")
    messages: list[Message] = []
    chars = 0
    for i, item in enumerate(history):
        if len(messages) >= options.max_messages:
            raise LimitError(f"{source} holds more than {options.max_messages} messages (max_history_messages)",
                             "max_history_messages")
        role: Any
        content: Any
        if isinstance(item, Message):
            role, content = item.role, item.content
        elif isinstance(item, Mapping):
            role, content = item.get("role"), item.get("content")
        else:
            raise QueryError(f"{source}[{i}] is not a message: expected {{\"role\", \"content\"}}, "
                             f"got {type(item).__name__}")
        if role not in ROLES:
            raise QueryError(f"{source}[{i}]: role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str) or not content.strip():
            raise QueryError(f"{source}[{i}]: content must be non-empty text, got {content!r}")
        problem = bad_text(content)
        if problem:
            raise QueryError(f"{source}[{i}]: content holds {problem}")
        chars += len(content)
        if chars > options.max_chars:
            raise LimitError(f"{source} holds more than {options.max_chars} characters (max_history_chars)",
                             "max_history_chars")
        messages.append(Message(str(role), content))
    return messages


def read_conversation(path: str | Path, options: ConversationOptions | None = None) -> list[Message]:
    """A conversation from a file: a JSON list of ``{"role", "content"}`` messages, an object with
    such a list under ``"messages"``, or JSON Lines of one message each. Errors name the file."""
    path = Path(path)
    source = f"history file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QueryError(f"{source} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise QueryError(f"{source} cannot be read: {exc}") from exc
    if not text.strip():
        raise QueryError(f"{source} is empty: expected a JSON list of {{\"role\", \"content\"}} messages")
    data: Any
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise QueryError(f"{source} is not a conversation: line {n} is not JSON ({exc.msg}); expected a "
                                 "JSON list of {\"role\", \"content\"} messages or one message per line") from None
    if isinstance(data, Mapping) and "role" in data:
        data = [data]  # JSON Lines of one message
    elif isinstance(data, Mapping):
        if "messages" not in data:
            raise QueryError(f"{source} is not a conversation: a JSON object needs a \"messages\" list")
        data = data["messages"]
    if not isinstance(data, list):
        raise QueryError(f"{source} is not a conversation: expected a list of messages, got {type(data).__name__}")
    return as_conversation(data, options, source=source)


def conversation_query(question: str, history: Sequence[Message], options: ConversationOptions, *,
                       embedder: Embedder | None, generator: Generator | None = None,
                       question_vector: np.ndarray | None = None) -> ConversationQuery:
    """The query ``question`` is searched by after ``history`` (module docstring). ``embedder``
    None: no dense query is wanted (BM25); ``question_vector`` the question's embedding when the
    caller has it. ``generator`` rewrites for the rewrite methods (required by them)."""
    earlier = [m.content for m in reversed(history) if m.role == "user"][:options.turns]  # most recent first
    if not earlier or options.method == "last":
        return ConversationQuery(question, question, question_vector, "last" if not earlier else options.method, 0)
    base, rewritten = question, None
    if options.rewrites:
        if generator is None:
            raise ConfigError(f"conversation method {options.method!r} needs a generator to rewrite with: set "
                              "[retrieval] rewrite_generator or [generation] generator to a model (e.g. smollm2)")
        rewritten = rewrite_question(question, history, generator, turns=options.turns,
                                     max_tokens=options.rewrite_max_tokens)
        base = rewritten or question
        if options.method == "rewrite":
            return ConversationQuery(question, base, None, options.method, len(earlier), rewritten)
    texts = [base, *earlier]
    weights = [options.decay ** k for k in range(len(texts))]
    # whole repetitions of the lightest weight BM25 keeps (module docstring)
    repeats = [int(w / options.decay + 1e-9) for w in weights]
    lexical = " ".join(t for t, n in zip(texts, repeats, strict=True) for _ in range(n))
    vector = None
    if embedder is not None:
        if question_vector is not None and rewritten is None:
            vectors = np.vstack([np.asarray(question_vector, dtype=np.float32)[None, :],
                                 np.asarray(embedder.embed_batch(earlier), dtype=np.float32)])
        else:
            vectors = np.asarray(embedder.embed_batch(texts), dtype=np.float32)
        summed = np.asarray(weights, dtype=np.float32) @ vectors
        vector = (summed / max(float(np.linalg.norm(summed)), 1e-12)).astype(np.float32)
    return ConversationQuery(question, lexical, vector, options.method, len(earlier), rewritten)


def rewrite_question(question: str, history: Sequence[Message], generator: Generator, *, turns: int = 3,
                     max_tokens: int = 16) -> str | None:
    """``question`` with its personal pronouns replaced by what the generator says the first refers
    to (appended in parentheses when it has none); None when the reply names nothing the user turns
    said, or the generator fails."""
    earlier = [m.content for m in history if m.role == "user"][-turns:] if turns else []
    if not earlier:
        return None
    found = _PRONOUN.search(question)
    ask = f'What does "{found.group(1)}" refer to?' if found else "What is the last question about?"
    messages = [Message("system", REWRITE_SYSTEM)]
    for before, follow_up, pronoun, reply in _REWRITE_EXAMPLES:
        messages += [Message("user", _rewrite_block([before], follow_up, f'What does "{pronoun}" refer to?')),
                     Message("assistant", reply)]
    messages.append(Message("user", _rewrite_block(earlier, question, ask)))
    try:
        completion = generator.generate(messages, max_tokens=max_tokens)
    except GenerationError:
        return None  # a failed rewrite leaves the question as it is, it does not fail the search
    referent = _grounded(completion.text, " ".join(earlier))
    if referent is None:
        return None
    referent = re.sub(r"^(The|A|An) ", lambda m: m.group(1).lower() + " ", referent)  # inside a sentence
    if found is None:
        return f"{question} ({referent})"

    def name(m: re.Match[str]) -> str:
        return f"{referent}'s" if m.group(1).lower() in _POSSESSIVE else referent

    return _PRONOUN.sub(name, question)


def _rewrite_block(earlier: Sequence[str], question: str, ask: str) -> str:
    turns = "\n".join(f"User: {t}" for t in earlier)
    return f"Conversation:\n{turns}\nLast question: {question}\n{ask}"


def _grounded(reply: str, said: str) -> str | None:
    """The longest leading run of the reply's first line (up to ``_MAX_REFERENT_WORDS`` words) that
    the conversation said, when it holds more than a pronoun or an article."""
    line = reply.strip().splitlines()[0] if reply.strip() else ""
    words = _WORD.findall(line)[:_MAX_REFERENT_WORDS]
    haystack = " ".join(_WORD.findall(said.lower()))
    for n in range(len(words), 0, -1):
        candidate = " ".join(words[:n])
        content = [w for w in words[:n] if w.lower() not in ("a", "an", "the") and not _PRONOUN.fullmatch(w)]
        if content and re.search(rf"(?<![\w'-]){re.escape(candidate.lower())}(?![\w'-])", haystack):
            return candidate
    return None
