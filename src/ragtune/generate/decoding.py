"""Decoding controls against the loops of small local models.

Greedy decoding of SmolLM2-135M falls into loops ("The answer is: The answer is: ...",
"magic_magic_magic...") that run to the token cap or the timeout. Three controls, each a plain
callable that transformers' ``generate`` accepts in its ``logits_processor`` and
``stopping_criteria`` lists (so this module imports neither transformers nor torch):

* ``repetition_penalty`` over the answer's own tokens. transformers' ``repetition_penalty`` option
  also counts the prompt, so it would penalise copying names and numbers from the sources, which
  is exactly what a grounded answer does; the same processor with ``prompt_ignore_length`` does not;
* ``no_repeat_ngram_size``: no n-gram of that many tokens twice in the answer (again without the
  prompt, for the same reason);
* ``stop_loops``: the answer ends at a loop, and its text is cut where the repetition began
  (:func:`loop_start`): consecutive copies of one run of tokens covering ``LOOP_TOKENS`` tokens
  ("The answer is:" three times, "magic_" six times, a clause twice), or one ``LOOP_NGRAM``-token
  phrase met ``LOOP_REPEATS`` times anywhere in the answer (a sentence coming back); then back to
  the last sentence or line end, if any (:func:`trim_loop_text`).

Measured on SmolLM2 (benchmarks/generation_controls.py) only the loop stop is on by default. A
repetition penalty changes right answers into wrong ones: SmolLM2 writes numbers digit by digit,
so "in March 1974 ... $12" has its "1" penalised and becomes "$2.05". No repeated n-gram turns
the exact loops the stop cuts cleanly into near-loops that run on to the token cap.

A streamed answer has already shown the repeated words when the loop is cut; the final text is the
cut one.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ragtune.errors import ConfigError

if TYPE_CHECKING:
    from ragtune.settings.sections import GenerationSettings

# Short phrases recur legitimately: " [1]. The" is four tokens, and an answer may cite [1] and
# start the next sentence with "The" three times. Text does not repeat itself back to back over
# twelve tokens, nor say the same eight tokens three times.
LOOP_TOKENS = 12
LOOP_NGRAM = 8
LOOP_REPEATS = 3
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*(?=\s|$)|\n")


@dataclass(frozen=True)
class DecodingControls:
    """How a local generator guards its decoding against repetition. The defaults are the
    measured ones of ``[generation]`` (benchmarks/generation_controls.py); ``OFF`` is plain greedy."""

    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    stop_loops: bool = True

    def __post_init__(self) -> None:
        if not 1.0 <= self.repetition_penalty <= 2.0:
            raise ConfigError(f"repetition_penalty must be between 1.0 (off) and 2.0, got {self.repetition_penalty}")
        if self.no_repeat_ngram_size != 0 and not 2 <= self.no_repeat_ngram_size <= 64:
            raise ConfigError(f"no_repeat_ngram_size must be 0 (off) or between 2 and 64, "
                              f"got {self.no_repeat_ngram_size}")

    @classmethod
    def of(cls, settings: GenerationSettings) -> DecodingControls:
        return cls(repetition_penalty=settings.repetition_penalty,
                   no_repeat_ngram_size=settings.no_repeat_ngram_size, stop_loops=settings.stop_loops)

    @property
    def active(self) -> bool:
        return self.repetition_penalty != 1.0 or self.no_repeat_ngram_size > 0 or self.stop_loops

    def generate_options(self, prompt_length: int) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` whose input is ``prompt_length`` tokens long."""
        if not self.active:
            return {}
        from transformers import LogitsProcessorList, StoppingCriteriaList
        from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

        processors: list[Any] = []
        if self.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(float(self.repetition_penalty),
                                                               prompt_ignore_length=prompt_length))
        if self.no_repeat_ngram_size:
            processors.append(NoRepeatInAnswer(self.no_repeat_ngram_size, prompt_length))
        options: dict[str, Any] = {}
        if processors:
            options["logits_processor"] = LogitsProcessorList(processors)
        if self.stop_loops:
            options["stopping_criteria"] = StoppingCriteriaList([LoopStop(prompt_length)])
        return options


OFF = DecodingControls(repetition_penalty=1.0, no_repeat_ngram_size=0, stop_loops=False)


def banned_next_tokens(ids: Sequence[int], size: int) -> list[int]:
    """Tokens that would complete an n-gram of ``size`` tokens already in ``ids``."""
    if size < 2 or len(ids) < size:
        return []
    prefix = list(ids[len(ids) - size + 1:])
    return [ids[i + size - 1] for i in range(len(ids) - size + 1) if list(ids[i:i + size - 1]) == prefix]


def loop_start(ids: Sequence[int]) -> int | None:
    """If ``ids`` ends in a loop, where the loop began (the first copy of the repeated part is kept);
    otherwise None. Checked after every token, so a loop is caught as soon as it qualifies."""
    ids = list(ids)
    n = len(ids)
    for period in range(1, n // 2 + 1):
        if ids[n - 1] != ids[n - 1 - period]:
            continue
        unit = ids[n - period:]
        copies = 1
        while (copies + 1) * period <= n and ids[n - (copies + 1) * period:n - copies * period] == unit:
            copies += 1
        if copies >= 2 and copies * period >= LOOP_TOKENS:
            return n - (copies - 1) * period
    if n >= LOOP_NGRAM:
        tail = ids[n - LOOP_NGRAM:]
        starts = [i for i in range(n - LOOP_NGRAM + 1) if ids[i:i + LOOP_NGRAM] == tail]
        if len(starts) >= LOOP_REPEATS:
            return starts[1]
    return None


def trim_loop_text(kept: str, following: str = "") -> str:
    """The text kept before a loop (``following``: the first words of the repetition), back to its
    last sentence or line end when what comes after that end is a fragment that the repetition
    went on with ("...dynasty. The Yuan dynasty" + " was", "...Institute\\n2" + ". Albrecht"). A
    last line that the repetition starts after with a line break is whole ("- item" + "\\n- item")."""
    ends = [m.end() for m in _SENTENCE_END.finditer(kept)]
    if not ends or following.lstrip(" \t").startswith("\n") or not following.strip():
        return kept.rstrip()
    return kept[:ends[-1]].rstrip()


def max_ngram_count(ids: Sequence[int], n: int) -> int:
    """How often the most frequent n-gram of ``ids`` occurs (overlapping occurrences count)."""
    counts = Counter(tuple(ids[i:i + n]) for i in range(len(ids) - n + 1))
    return max(counts.values(), default=0)


class NoRepeatInAnswer:
    """A logits processor: no n-gram of ``size`` tokens twice in the generated part."""

    def __init__(self, size: int, prompt_length: int) -> None:
        self.size = size
        self.prompt_length = prompt_length

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        for row in range(input_ids.shape[0]):
            banned = banned_next_tokens(input_ids[row, self.prompt_length:].tolist(), self.size)
            if banned:
                scores[row, banned] = -float("inf")
        return scores


class LoopStop:
    """A stopping criterion: a row is done once :func:`loop_start` finds a loop in its answer."""

    def __init__(self, prompt_length: int) -> None:
        self.prompt_length = prompt_length

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        done = [loop_start(input_ids[row, self.prompt_length:].tolist()) is not None
                for row in range(input_ids.shape[0])]
        return input_ids.new_tensor(done).bool()
