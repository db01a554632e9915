"""Decoding controls against SmolLM2's loops: loop detection on the real tokenizer's ids, the
logits processors and stopping criterion on real tensors, the settings, and one generation with
the real packaged model on a prompt that loops without them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ragtune.errors import ConfigError
from ragtune.generate.decoding import (
    OFF,
    DecodingControls,
    LoopStop,
    NoRepeatInAnswer,
    banned_next_tokens,
    loop_start,
    max_ngram_count,
    trim_loop_text,
)
from ragtune.generate.local import TransformersGenerator
from ragtune.models import Message
from ragtune.settings import Settings
from ragtune.settings.sections import GenerationSettings


def _ids(gen: TransformersGenerator, text: str) -> list[int]:
    return list(gen.tokenizer(text, add_special_tokens=False)["input_ids"])


def _first_stop(ids: list[int]) -> int | None:
    """The token after which a generation with the loop stop on would have ended."""
    return next((k for k in range(1, len(ids) + 1) if loop_start(ids[:k]) is not None), None)


# (generated text, what is kept when the loop is cut; None: not a loop)
LOOPS = [
    ("The answer is: The answer is: The answer is: The answer is: The answer is: The answer is:",
     "The answer is: The"),
    ("magic_magic_magic_magic_magic_magic_magic_magic_magic_magic", "magic_"),
    ("The Norse originated from the North Sea, specifically from the North Sea, specifically from the North Sea",
     "The Norse originated from the North Sea, specifically"),
    ("The Frankish identity emerged in the 10th century, when the kingdom was founded.\n\nThe Frankish identity "
     "emerged in the 10th century, when the Franks came.\n\nThe Frankish identity emerged in the 10th century.",
     "The Frankish identity emerged in the 10th century, when the kingdom was founded.\n\n"),
    # not loops: a phrase and a citation that recur, as a cited answer's do
    ("The Normans came from Normandy [1]. The Normans spoke French [1]. The Normans were Catholic [1]. "
     "The Normans ruled England [2].", None),
    ("Rollo was the Norse leader who agreed to defend the lower Seine in return for land.", None),
    ("1. Install the package.\n2. Run the tool.\n3. Read the log.\n4. Remove the package.", None),
]


@pytest.mark.parametrize(("text", "kept"), LOOPS)
def test_loops_in_real_tokens(smollm2: TransformersGenerator, text: str, kept: str | None) -> None:
    ids = _ids(smollm2, text)
    stop = _first_stop(ids)
    if kept is None:
        assert stop is None
        return
    assert stop is not None and stop < len(ids)  # caught before the text ran on
    cut = loop_start(ids[:stop])
    assert cut is not None
    assert smollm2.tokenizer.decode(ids[:cut]) == kept
    assert max_ngram_count(_ids(smollm2, kept), 3) < 4  # what is kept is not itself a loop


@pytest.mark.parametrize(("kept", "following", "trimmed"), [
    ("The Yuan dynasty was ruled by the Ming dynasty. The Yuan dynasty", " was ruled",
     "The Yuan dynasty was ruled by the Ming dynasty."),
    ("The researchers include:\n\n1. Albrecht Cancer Research Institute\n2", ". Albrecht Cancer",
     "The researchers include:\n\n1. Albrecht Cancer Research Institute"),
    ("It rose by 3.5 percent. Then 2", " percent", "It rose by 3.5 percent."),
    ("The Norse originated from the North Sea, specifically", " from the North",
     "The Norse originated from the North Sea, specifically"),
    # a whole last line: the repetition starts on the next line
    ("Helgrind detects:\n\n- Uninitialised pthread barrier", "\n- Uninitialised p",
     "Helgrind detects:\n\n- Uninitialised pthread barrier"),
])
def test_a_cut_loop_ends_at_its_last_whole_sentence(kept: str, following: str, trimmed: str) -> None:
    assert trim_loop_text(kept, following) == trimmed


def test_the_criterion_and_processors_see_the_answer_not_the_prompt(smollm2: TransformersGenerator) -> None:
    prompt = _ids(smollm2, "magic_magic_magic_magic_magic_magic_magic_magic_magic_magic Question: what is it?")
    looping = _ids(smollm2, " magic" + "_magic" * 12)
    fine = _ids(smollm2, " It is magic, the one word that the source says again and again.")
    assert 12 < len(fine) <= len(looping)
    rows = torch.tensor([prompt + looping[: len(fine)], prompt + fine])  # same length: one batch
    assert LoopStop(len(prompt))(rows, None).tolist() == [True, False]
    # A prompt that ends in a loop, and an answer that goes on with it for a few tokens: only
    # counting the prompt would make it a loop.
    quoted = _ids(smollm2, "Say it:" + " magic_" * 8)
    short = torch.tensor([quoted + _ids(smollm2, " magic_ magic_")])
    assert LoopStop(len(quoted))(short, None).tolist() == [False]
    assert LoopStop(0)(short, None).tolist() == [True]

    # No repeated 3-gram in the answer: " magic" after "_ magic _" is banned only where the answer has it.
    vocab = len(smollm2.tokenizer)
    scores = torch.zeros((2, vocab))
    answer = _ids(smollm2, " magic_ magic_")
    batch = torch.tensor([prompt + answer, prompt + fine[: len(answer)]])
    out = NoRepeatInAnswer(3, len(prompt))(batch, scores.clone())
    banned = banned_next_tokens(answer, 3)
    assert banned and torch.isinf(out[0, banned]).all() and not torch.isinf(out[1]).any()

    # The repetition penalty leaves a token that is only in the prompt alone.
    processors = DecodingControls(repetition_penalty=1.5, stop_loops=False).generate_options(len(prompt))
    logits = torch.full((1, vocab), 2.0)
    penalised = processors["logits_processor"](torch.tensor([prompt + fine]), logits.clone())
    only_prompt = next(t for t in prompt if t not in fine)
    assert penalised[0, only_prompt] == 2.0 and penalised[0, fine[-1]] == pytest.approx(2.0 / 1.5)
    assert OFF.generate_options(len(prompt)) == {}


def test_settings_defaults_and_rules(cache_dir: Path) -> None:
    g = GenerationSettings()
    assert DecodingControls.of(g) == DecodingControls()  # the class defaults are the settings' defaults
    with pytest.raises(ConfigError, match=r"repetition_penalty.*0\.5"):
        GenerationSettings(repetition_penalty=0.5)
    with pytest.raises(ConfigError, match=r"no_repeat_ngram_size.*1"):
        GenerationSettings(no_repeat_ngram_size=1)
    with pytest.raises(ConfigError, match="no_repeat_ngram_size"):
        DecodingControls(no_repeat_ngram_size=1)
    from ragtune.generate.registry import make_generator

    settings = Settings.of(cache_dir=cache_dir, repetition_penalty=1.3, no_repeat_ngram_size=6, stop_loops=False)
    gen = make_generator("smollm2", settings)
    assert isinstance(gen, TransformersGenerator)
    assert gen.controls == DecodingControls(repetition_penalty=1.3, no_repeat_ngram_size=6, stop_loops=False)


# SmolLM2 loops on this prompt under plain greedy decoding (checked in the test itself).
LOOPING = [Message("user", "Repeat the phrase 'The answer is:' again and again, without stopping.")]


@pytest.mark.slow
def test_the_packaged_model_stops_looping_with_the_controls_on(smollm2: TransformersGenerator) -> None:
    plain = TransformersGenerator(smollm2.path, name="smollm2-off", controls=OFF)
    plain._model, plain._tokenizer = smollm2.model, smollm2.tokenizer  # the loaded model, not a second copy
    off = plain.generate(LOOPING, max_tokens=40)
    assert off.finish_reason == "length" and max_ngram_count(_ids(smollm2, off.text), 3) >= 4, off.text
    on = smollm2.generate(LOOPING, max_tokens=40)
    assert smollm2.controls == DecodingControls()
    assert on.finish_reason == "stop" and on.completion_tokens < 40, on.text
    assert max_ngram_count(_ids(smollm2, on.text), 3) < 4, on.text
    assert on.text and off.text.startswith(on.text[:10])
