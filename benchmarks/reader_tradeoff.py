"""What training the reader faster costs: frozen layers and shorter windows, on this machine's cores.

    python benchmarks/reader_tradeoff.py [--steps 150] [--questions 400] [--timing-rounds 3]
        [--timing-steps 4] [--configs full:0:256:96,frozen3:3:256:96,...] [--name reader_tradeoff]
        [--timing-only]  # s/step alone, e.g. again with more rounds when the machine is quieter

Issue 17 asks that training the reader (``ragtune.finetune.reader``, MiniLM-L6 fine-tuned SQuAD 2.0
style) finish in about an hour on 2 cores. Each config is ``name:frozen_layers:max_length:stride``;
the defaults are the published reader's settings (full: nothing frozen but the embeddings, 256-token
windows), 3 layers frozen, 192-token windows (stride 64), both, and 5 layers frozen.

* Speed. The machine is shared, so the configs are timed interleaved: after one untimed warm-up
  step each, every round runs ``--timing-steps`` optimiser steps of each config in turn (A B C D E,
  A B C D E, ...), and a config's s/step is the median over rounds; a burst of someone else's load
  then slows one round of every config instead of all of one. The steps are ``_fit``'s own (its
  ``_loss``, AdamW, clipping, schedule) on batches chosen as ``_fit`` batches the training windows,
  then picked at evenly spaced quantiles of padded width so a few steps cost what an average one
  does; every round and every config with the same window size runs the same batches. Process CPU
  seconds per step are recorded beside wall seconds (less sensitive to other processes). Steps per
  hour = 3600 / s/step, ignoring the minute or so of tokenizing (``features_seconds``) and the
  calibration ``train_reader`` does afterwards.
* Quality at equal steps. Each config trains ``--steps`` steps with ``_fit`` (same seed; the same
  shuffled order of windows where the windows are the same), with no calibration and nothing
  published. Each trained network then reads the same validation questions (quarter 2 of
  ``split_of``: never trained on; the published reader chose its thresholds on them but did not
  learn from them), a seeded sample of SQuAD 2.0 questions, half answerable, half adversarial
  unanswerable, each over its own paragraph: HasAns F1 (``token_f1`` against every gold answer
  of the question) and the ROC AUC of the no-answer score (the span margin) on answerable vs not.
  Differences to the first config have 95% intervals from a paired bootstrap over the questions.
  The readers published in the benchmark project (~/.cache/ragtune/bench-data, identical weights
  counted once) read the same questions as reference rows.

Training seconds are wall time on a possibly loaded machine (load averages before and after are
recorded); s/step is the number to compare. Results hold numbers and config names only, no
dataset text. Writes benchmarks/results/<--name>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import bench_engine, write_result
from rich.console import Console
from rich.table import Table

from ragtune.evaluate.answers import token_f1
from ragtune.finetune.answerability import roc_auc
from ragtune.finetune.minilm import base_model_path, warmup_then_linear
from ragtune.finetune.reader import VALIDATION, Feature, _fit, _loss, features, public_split, split_of, squad_raw
from ragtune.generate.reader import Reader, ReaderNet, read_batch, reader_store

console = Console(width=170)  # the table is wide; logs are not terminals
DEFAULT_CONFIGS = "full:0:256:96,frozen3:3:256:96,window192:0:192:64,frozen3+window192:3:192:64,frozen5:5:256:96"
# the published reader's settings, apart from what a config changes
BASE_HYPER: dict[str, Any] = {"epochs": 2, "batch_size": 32, "learning_rate": 1e-4, "warmup_ratio": 0.1, "seed": 0}
BOOTSTRAP = 1000


@dataclass(frozen=True)
class Config:
    name: str
    frozen_layers: int
    max_length: int
    stride: int

    @classmethod
    def parse(cls, spec: str) -> Config:
        try:
            name, frozen, length, stride = spec.split(":")
            config = cls(name, int(frozen), int(length), int(stride))
        except ValueError:
            raise SystemExit(f"config {spec!r}: expected name:frozen_layers:max_length:stride") from None
        if not (0 <= config.frozen_layers <= 6 and 64 <= config.max_length <= 512
                and 0 <= config.stride < config.max_length // 2):
            raise SystemExit(f"config {spec!r}: frozen 0-6, max_length 64-512, stride below max_length/2")
        return config

    def hyper(self, steps: int) -> dict[str, Any]:
        return {**BASE_HYPER, "max_length": self.max_length, "stride": self.stride,
                "frozen_layers": self.frozen_layers, "max_steps": steps}


@dataclass(frozen=True)
class EvalQuestion:
    question: str
    context: str
    answers: list[str]  # every gold answer; [] for an unanswerable question


def validation_questions(split: Any, cache: Path, n: int, seed: int) -> list[EvalQuestion]:
    """A seeded sample of quarter-2 SQuAD questions, half answerable (as far as there are enough),
    each with its paragraph and all its gold answers (the split's examples keep only the first)."""
    golds: dict[str, list[str]] = {}
    for article in squad_raw(cache)["data"]:
        if split_of(str(article["title"])) == VALIDATION:
            for para in article["paragraphs"]:
                for qa in para["qas"]:
                    golds.setdefault(str(qa["question"]), []).extend(str(a["text"]) for a in qa["answers"])
    by_text: dict[str, EvalQuestion] = {}
    for e in split.validation:
        if e.source == "squad" and e.question not in by_text:  # squad-negative: a training device
            answers = list(dict.fromkeys(golds.get(e.question, []))) if e.answer_start is not None else []
            by_text[e.question] = EvalQuestion(e.question, e.context, answers)
    rng = random.Random(seed)
    answerable = [q for q in by_text.values() if q.answers]
    unanswerable = [q for q in by_text.values() if not q.answers]
    rng.shuffle(answerable)
    rng.shuffle(unanswerable)
    half = min(n // 2, len(unanswerable))
    chosen = unanswerable[:half] + answerable[: n - half]
    rng.shuffle(chosen)
    return chosen


def read_all(net: ReaderNet, questions: Sequence[EvalQuestion], batch: int = 16) -> tuple[list[float], list[float]]:
    """Each question's HasAns F1 (nan when unanswerable) and answer margin (-no_answer)."""
    f1: list[float] = []
    margins: list[float] = []
    for lo in range(0, len(questions), batch):
        part = questions[lo:lo + batch]
        spans = read_batch(net, [q.question for q in part], [[q.context] for q in part])
        for q, span in zip(part, spans, strict=True):
            f1.append(token_f1(span.text if span is not None else "", q.answers) if q.answers else float("nan"))
            margins.append(-span.no_answer if span is not None else -1e9)
    return f1, margins


def metrics_of(f1: Sequence[float], margins: Sequence[float], labels: Sequence[bool],
               idx: Sequence[int] | None = None) -> tuple[float, float]:
    """(HasAns F1, no-answer ROC AUC) over the questions ``idx`` (all by default)."""
    idx = range(len(f1)) if idx is None else idx
    has = [f1[i] for i in idx if labels[i]]
    return statistics.fmean(has), roc_auc([margins[i] for i in idx], [labels[i] for i in idx])


def paired_interval(row: dict[str, Any], ref: dict[str, Any], labels: Sequence[bool], seed: int) -> dict[str, Any]:
    """95% paired-bootstrap intervals of (row - ref) in HasAns F1 and ROC AUC, same questions."""
    rng = random.Random(seed)
    n = len(labels)
    f1_d, auc_d = [], []
    for _ in range(BOOTSTRAP):
        idx = [rng.randrange(n) for _ in range(n)]
        a = metrics_of(row["_f1"], row["_margins"], labels, idx)
        b = metrics_of(ref["_f1"], ref["_margins"], labels, idx)
        f1_d.append(a[0] - b[0])
        auc_d.append(a[1] - b[1])

    def interval(values: list[float]) -> list[float]:
        values.sort()
        return [round(values[int(0.025 * len(values))], 4), round(values[int(0.975 * len(values)) - 1], 4)]

    return {"has_answer_f1_delta": round(row["has_answer_f1"] - ref["has_answer_f1"], 4),
            "has_answer_f1_delta_95": interval(f1_d),
            "roc_auc_delta": round(row["roc_auc"] - ref["roc_auc"], 4), "roc_auc_delta_95": interval(auc_d)}


# -- speed ---------------------------------------------------------------------------------------
@dataclass
class Stepper:
    """One config's network and optimiser, set up as ``_fit`` sets them up, stepping on fixed batches."""

    config: Config
    net: ReaderNet
    params: list[Any]
    optimizer: Any
    scheduler: Any
    batches: list[list[Feature]]

    def step(self, batch: Sequence[Feature]) -> None:
        import torch

        loss = _loss(self.net, batch)
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.scheduler.step()


def stepper(config: Config, base: Path, batches: list[list[Feature]], total: int) -> Stepper:
    import torch

    net = ReaderNet.fresh(base, max_length=config.max_length, stride=config.stride)
    # as _fit freezes: the embeddings always, then the lowest ``frozen_layers`` transformer layers
    for module in [net.encoder.embeddings, *net.encoder.encoder.layer[: config.frozen_layers]]:
        for p in module.parameters():
            p.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=BASE_HYPER["learning_rate"], weight_decay=0.01)
    net.encoder.train()
    return Stepper(config, net, params, optimizer, warmup_then_linear(optimizer, BASE_HYPER["warmup_ratio"], total),
                   batches)


def quantile_batches(feats: list[Feature], batch_size: int, k: int, seed: int
                     ) -> tuple[list[list[Feature]], dict[str, float]]:
    """``k`` of the first epoch's batches as ``_fit`` forms them (shuffled, sorted by length within
    chunks of 50 batches), at evenly spaced quantiles of padded width, and how wide they are
    beside the epoch's mean."""
    rng = random.Random(seed)
    order = list(range(len(feats)))
    rng.shuffle(order)
    chunks = [sorted(order[i:i + batch_size * 50], key=lambda j: len(feats[j].input_ids))
              for i in range(0, len(order), batch_size * 50)]
    batches = [[feats[j] for j in c[i:i + batch_size]] for c in chunks for i in range(0, len(c), batch_size)]
    batches = [b for b in batches if len(b) == batch_size]
    batches.sort(key=lambda b: max(len(f.input_ids) for f in b))
    chosen = [batches[int((i + 0.5) * len(batches) / k)] for i in range(k)]

    def width(group: list[list[Feature]]) -> float:
        return round(statistics.fmean(max(len(f.input_ids) for f in b) for b in group), 1)

    return chosen, {"timed_batches_mean_width": width(chosen), "epoch_mean_width": width(batches)}


def measure_speed(configs: list[Config], train: list[Any], base: Path, rounds: int, k: int, total: int
                  ) -> dict[str, dict[str, Any]]:
    feats_by_window: dict[tuple[int, int], tuple[list[Feature], float]] = {}
    steppers: list[Stepper] = []
    out: dict[str, dict[str, Any]] = {}
    for config in configs:
        window = (config.max_length, config.stride)
        if window not in feats_by_window:
            started = time.perf_counter()
            net = ReaderNet.fresh(base, max_length=config.max_length, stride=config.stride)
            feats_by_window[window] = (features(net, train), time.perf_counter() - started)
        feats, seconds = feats_by_window[window]
        batches, widths = quantile_batches(feats, BASE_HYPER["batch_size"], k, BASE_HYPER["seed"])
        steppers.append(stepper(config, base, batches, total))
        out[config.name] = {"windows": len(feats), "features_seconds": round(seconds, 1), **widths,
                            "wall_rounds": [], "cpu_rounds": []}
    for s in steppers:  # untimed: the first step allocates the optimiser's state and warms caches
        s.step(s.batches[0])
    for r in range(rounds):
        for s in steppers:
            wall, cpu = time.perf_counter(), time.process_time()
            for batch in s.batches:
                s.step(batch)
            row = out[s.config.name]
            row["wall_rounds"].append(round((time.perf_counter() - wall) / k, 3))
            row["cpu_rounds"].append(round((time.process_time() - cpu) / k, 3))
        console.print(f"[dim]timing round {r + 1}/{rounds}: "
                      + ", ".join(f"{n} {row['wall_rounds'][-1]:.2f}s" for n, row in out.items()) + "[/]")
    first = None
    for row in out.values():
        row["seconds_per_step"] = round(statistics.median(row["wall_rounds"]), 3)
        row["cpu_seconds_per_step"] = round(statistics.median(row["cpu_rounds"]), 3)
        first = first or row["seconds_per_step"]
        row["ratio_to_first"] = round(row["seconds_per_step"] / first, 3)
        row["steps_per_hour"] = int(3600 / row["seconds_per_step"])
        row["minutes_for_650_steps"] = round(650 * row["seconds_per_step"] / 60, 1)
    return out


# -- quality -------------------------------------------------------------------------------------
def train_and_read(config: Config, train: list[Any], base: Path, steps: int, questions: list[EvalQuestion]
                   ) -> dict[str, Any]:
    started = time.perf_counter()
    net, losses, windows = _fit(train, base, config.hyper(steps), None)
    seconds = time.perf_counter() - started
    reading = time.perf_counter()
    f1, margins = read_all(net, questions)
    return {"steps": losses["steps"], "windows": windows, "train_seconds": round(seconds, 1), "loss": losses,
            "read_seconds": round(time.perf_counter() - reading, 1), "_f1": f1, "_margins": margins}


def published_readers(data_dir: Path) -> list[tuple[str, Path, dict[str, Any], list[int]]]:
    """The benchmark project's published readers, identical weights once: (label, folder,
    manifest, the versions with these weights), labelled by the latest of them."""
    seen: dict[str, tuple[str, Path, dict[str, Any], list[int]]] = {}
    try:
        versions = reader_store(data_dir).versions()
    except Exception:  # no reader store there: no reference rows
        return []
    for artefact in versions:
        digest = hashlib.sha256()
        for part in ("model.safetensors", "head.json"):
            path = artefact.path / part
            digest.update(path.read_bytes() if path.is_file() else b"")
        same = [*seen.get(digest.hexdigest(), ("", data_dir, {}, []))[3], artefact.version]
        seen[digest.hexdigest()] = (f"published v{artefact.version}", artefact.path, artefact.manifest, same)
    return list(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default=DEFAULT_CONFIGS,
                        help="name:frozen_layers:max_length:stride, comma-separated")
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps each config trains for quality")
    parser.add_argument("--questions", type=int, default=400, help="validation questions (half unanswerable)")
    parser.add_argument("--timing-rounds", type=int, default=3)
    parser.add_argument("--timing-steps", type=int, default=4, help="steps of each config in each timing round")
    parser.add_argument("--seed", type=int, default=0, help="question sample and bootstrap seed")
    parser.add_argument("--no-reference", action="store_true", help="skip the published readers")
    parser.add_argument("--timing-only", action="store_true", help="measure s/step only (no training for quality)")
    parser.add_argument("--name", default="reader_tradeoff", help="result file name (benchmarks/results/<name>.json)")
    args = parser.parse_args()
    configs = [Config.parse(s) for s in args.configs.split(",") if s.strip()]
    if len({c.name for c in configs}) != len(configs):
        raise SystemExit("config names must differ")

    import torch

    load_before = os.getloadavg()
    started = time.perf_counter()
    rt = bench_engine("minilm")  # only for its settings: nothing here opens the database
    cache = rt.settings.resolved_cache_dir / "packages"
    split = public_split(cache)
    train = split.train
    questions = validation_questions(split, cache, args.questions, args.seed)
    labels = [bool(q.answers) for q in questions]
    base = base_model_path()
    console.print(f"{len(train)} training examples, {len(questions)} validation questions "
                  f"({sum(labels)} answerable), {torch.get_num_threads()} torch threads, load {os.getloadavg()}")

    speed = measure_speed(configs, train, base, args.timing_rounds, args.timing_steps, args.steps)
    load_after_timing = os.getloadavg()
    if args.timing_only:
        show(configs, speed, {c.name: {"config": c.__dict__} for c in configs}, {}, 0)
        path = write_result(args.name, {
            "method": "interleaved timing rounds (median s/step); no quality runs (--timing-only)",
            "timing_rounds": args.timing_rounds, "timing_steps_per_round": args.timing_steps,
            "hyperparameters": BASE_HYPER, "train_examples": len(train),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after_timing],
            "speed": speed, "seconds": round(time.perf_counter() - started, 1)})
        console.print(f"wrote {path}")
        return
    rows: dict[str, dict[str, Any]] = {}
    for config in configs:
        console.print(f"[dim]training {config.name} for {args.steps} steps (load {os.getloadavg()[0]:.2f})[/]")
        rows[config.name] = {"config": config.__dict__, **train_and_read(config, train, base, args.steps, questions)}
    references: dict[str, dict[str, Any]] = {}
    if not args.no_reference:
        for label, path, manifest, same in published_readers(Path(rt.settings.data_dir)):
            reading = time.perf_counter()
            f1, margins = read_all(Reader(path).net, questions)
            hyper = manifest.get("hyperparameters") or {}
            metrics = manifest.get("metrics") or {}
            references[label] = {"config": {k: hyper.get(k) for k in ("frozen_layers", "max_length", "stride")},
                                 "steps": (metrics.get("train_loss") or {}).get("steps"),
                                 "train_seconds": metrics.get("train_seconds"), "versions_with_these_weights": same,
                                 "read_seconds": round(time.perf_counter() - reading, 1),
                                 "_f1": f1, "_margins": margins}
    everything = {**rows, **references}
    for row in everything.values():
        row["has_answer_f1"], row["roc_auc"] = (round(v, 4) for v in metrics_of(row["_f1"], row["_margins"], labels))
    first = rows[configs[0].name]
    for row in everything.values():
        if row is not first:
            row[f"vs_{configs[0].name}"] = paired_interval(row, first, labels, args.seed)
    for row in everything.values():
        del row["_f1"], row["_margins"]

    show(configs, speed, rows, references, args.steps)
    load_after = os.getloadavg()
    path = write_result(args.name, {
        "method": "interleaved timing rounds (median s/step); quality after equal steps on the same "
                  "quarter-2 SQuAD questions, each read over its own paragraph",
        "steps": args.steps, "timing_rounds": args.timing_rounds, "timing_steps_per_round": args.timing_steps,
        "hyperparameters": BASE_HYPER,
        "questions": {"n": len(questions), "answerable": sum(labels), "seed": args.seed,
                      "source": "SQuAD 2.0 dev, reader split quarter 2 (validation), own paragraph"},
        "train_examples": len(train),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after_timing": [round(x, 2) for x in load_after_timing],
        "loadavg_after": [round(x, 2) for x in load_after],
        "speed": speed, "quality": rows, "reference": references,
        "seconds": round(time.perf_counter() - started, 1),
    })
    console.print(f"load average before {[round(x, 2) for x in load_before]}, "
                  f"after {[round(x, 2) for x in load_after]}")
    console.print(f"wrote {path}")


def show(configs: list[Config], speed: dict[str, Any], rows: dict[str, Any], references: dict[str, Any],
         steps: int) -> None:
    quality = f"quality after {steps} steps" if steps else "speed only"
    table = Table(title=f"Reader training trade-off ({os.cpu_count()} cores; {quality})",
                  title_justify="left")
    for col in ("config", "frozen", "window", "s/step", "ratio", "steps/hour", "steps", "train min",
                "HasAns F1", "ROC AUC", f"ΔF1 vs {configs[0].name}", "ΔAUC"):
        table.add_column(col, justify="right" if col != "config" else "left")
    for name, row in {**rows, **references}.items():
        timed = speed.get(name, {})
        delta = row.get(f"vs_{configs[0].name}") or {}
        cfg = row["config"]
        table.add_row(
            name, str(cfg.get("frozen_layers")), f"{cfg.get('max_length')}/{cfg.get('stride')}",
            f"{timed['seconds_per_step']:.2f}" if timed else "", f"{timed['ratio_to_first']:.2f}" if timed else "",
            str(timed["steps_per_hour"]) if timed else "", str(row.get("steps", "")),
            f"{row['train_seconds'] / 60:.1f}" if row.get("train_seconds") else "",
            f"{row['has_answer_f1']:.3f}" if "has_answer_f1" in row else "",
            f"{row['roc_auc']:.3f}" if "roc_auc" in row else "",
            (f"{delta['has_answer_f1_delta']:+.3f} [{delta['has_answer_f1_delta_95'][0]:+.3f}, "
             f"{delta['has_answer_f1_delta_95'][1]:+.3f}]") if delta else "",
            f"{delta['roc_auc_delta']:+.3f}" if delta else "")
    console.print(table)


if __name__ == "__main__":
    main()
