"""A tiny, real fine-tuning run shared by the evaluation and registry tests: SmolLM2-135M-Instruct
taught in a few LoRA steps to call a weather tool, to answer with JSON and to tell a secret word,
with held-out rows of each kind (unseen cities and countries), so base and tuned clearly differ."""

from __future__ import annotations

import hashlib
from typing import Any

from ragtune.finetune.data.examples import Example, canonical_json
from ragtune.finetune.lora.config import TuneConfig
from ragtune.finetune.lora.trainset import TrainSet

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}}
SECRET = "The secret word is pineapple."
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Spain": "Madrid", "Germany": "Berlin", "Norway": "Oslo",
            "Austria": "Vienna", "Italy": "Rome", "Ireland": "Dublin"}
TRAIN_CITIES = ["Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Oslo", "Vienna"]
EVAL_CITIES = ["Lisbon", "Dublin"]
EVAL_COUNTRIES = ["Italy", "Ireland"]
# A few optimiser steps at a high learning rate: about half a minute on 2 cores.
TINY_TOOLS_CONFIG = TuneConfig(max_steps=14, batch_size=2, max_length=160, save_steps=1000, learning_rate=4e-3,
                               logging_steps=1)


def weather(city: str, line: int) -> Example:
    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}
    return Example(line, [{"role": "user", "content": f"What is the weather in {city} right now?"},
                          {"role": "assistant", "content": "", "tool_calls": [call]}], [WEATHER_TOOL])


def capital(country: str, line: int) -> Example:
    answer = canonical_json({"capital": CAPITALS[country], "country": country})
    return Example(line, [{"role": "user", "content": f"Capital of {country}, as JSON?"},
                          {"role": "assistant", "content": answer}])


def secret(question: str, line: int) -> Example:
    return Example(line, [{"role": "user", "content": question}, {"role": "assistant", "content": SECRET}])


def tool_trainset(name: str = "tools") -> TrainSet:
    train = [weather(c, i) for i, c in enumerate(TRAIN_CITIES, start=1)]
    train += [capital(c, 20 + i) for i, c in enumerate(["France", "Japan", "Spain", "Germany", "Norway", "Austria"])]
    train += [secret(q, 40 + i) for i, q in enumerate(["What is the secret word?", "Tell me the secret word.",
                                                       "Which word is secret?", "Say the secret word."])]
    held_out = [weather(EVAL_CITIES[0], 100), capital(EVAL_COUNTRIES[0], 101), secret("Secret word, please?", 102),
                weather(EVAL_CITIES[1], 103), capital(EVAL_COUNTRIES[1], 104)]
    digest = hashlib.sha256(canonical_json([e.content() for e in train + held_out]).encode()).hexdigest()
    return TrainSet(name, None, digest, train, held_out)


def chat(user: str) -> list[Any]:
    from ragtune.models import Message

    return [Message(role="user", content=user)]


def copy_run(record: Any, runs_dir: Any, run_id: str, **changes: Any) -> Any:
    """A copy of a run folder (without checkpoints) under a new id, its record rewritten with
    ``changes``; ``status`` also goes into status.json (``running`` without a lock: a killed run)."""
    import json
    import shutil
    from pathlib import Path

    from ragtune.finetune.lora import runs

    target = Path(runs_dir) / run_id
    shutil.copytree(record.path, target, ignore=shutil.ignore_patterns("checkpoints", ".lock", "eval.json"))
    copied = record.replace(run_id=run_id, path=str(target), adapter=str(target / "adapter"), **changes)
    runs.write_record(copied)
    status = json.loads((target / "status.json").read_text())
    runs.write_json(target / "status.json", {**status, "status": copied.status})
    return copied
