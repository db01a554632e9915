"""Watching a training: a TrainerCallback that keeps the numbers a run records (loss curve,
tokens/s, peak memory, the step a resumed run started from) and, on the main process, sends
progress events (``protocols.Progress``): "training", the optimiser steps done of ``max_steps``
(a resumed run starts at the step it resumed from), with the latest loss and tokens/s in
``metrics`` (``loss``, ``tokens_per_second``) and ``detail``.

It also keeps the run's timeline (``timeline``): each epoch's and each evaluation's start and end
(ns since the epoch, as span times are) with the step, loss and learning rate or the evaluation's
metrics; the orchestrating process turns it into the ``train`` span's children
(``lora.train``), so a data-parallel run (whose workers are other processes) is traced alike.

Tokens are the non-padding input tokens the Trainer counts (``include_num_input_tokens_seen``),
summed over every process of a data-parallel run. Peak memory is this process's peak resident set
(``ru_maxrss``), which on Linux is reported in KiB.
"""

from __future__ import annotations

import resource
import time
from typing import Any

from transformers import TrainerCallback

from ragtune.progress import emit
from ragtune.protocols import Progress


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class TrainingMonitor(TrainerCallback):
    """Collects metrics on every process; sends events only from the world's main process."""

    def __init__(self, progress: Progress | None = None) -> None:
        self.progress = progress
        self.losses: list[tuple[int, float]] = []
        self.eval_losses: list[tuple[int, float]] = []
        self.resumed_from_step = 0
        self.start_step = 0
        self.start_tokens = 0
        self.tokens = 0
        self.steps = 0
        self.max_steps = 0
        self.seconds = 0.0
        self._first_step: tuple[int, float] | None = None  # (tokens, seconds) when the first step ended
        self._started = 0.0
        self._main = False
        self._loss: float | None = None
        self._learning_rate: float | None = None
        self._epoch_started: int | None = None
        self.epochs: list[dict[str, Any]] = []
        self.evaluations: list[dict[str, Any]] = []

    # -- callback hooks ------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # On resume the Trainer restores its state before this hook: global_step is where it goes on from.
        self.start_step = self.resumed_from_step = int(state.global_step)
        self.start_tokens = int(state.num_input_tokens_seen or 0)
        self.max_steps = int(state.max_steps)
        self._started = time.perf_counter()
        self._main = bool(state.is_world_process_zero)
        self._emit(self.start_step)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._epoch_started = time.time_ns()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._epoch_started is None:
            return
        # state.epoch is fractional (2.0 at the end of the second; less when max_steps cut it short)
        self.epochs.append({"epoch": len(self.epochs) + 1, "start_ns": self._epoch_started, "end_ns": time.time_ns(),
                            "step": int(state.global_step), "epoch_progress": round(float(state.epoch or 0), 4),
                            "loss": self._loss, "learning_rate": self._learning_rate})
        self._epoch_started = None

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None,
                    **kwargs: Any) -> None:
        metrics = metrics or {}
        ended = time.time_ns()
        runtime = metrics.get("eval_runtime")
        started = ended - int(float(runtime) * 1e9) if isinstance(runtime, int | float) else ended
        self.evaluations.append({"step": int(state.global_step), "epoch_progress": round(float(state.epoch or 0), 4),
                                 "start_ns": started, "end_ns": ended,
                                 "metrics": {k: float(v) for k, v in metrics.items()
                                             if isinstance(v, int | float) and not isinstance(v, bool)}})

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.steps = int(state.global_step)
        self.tokens = int(state.num_input_tokens_seen or 0)
        self.seconds = time.perf_counter() - self._started
        if self._first_step is None:
            self._first_step = (self.tokens, self.seconds)
        if not control.should_log:  # a logging step reports from on_log, with this step's loss
            self._emit(self.steps)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        step = int(state.global_step)
        if "loss" in logs:
            self.losses.append((step, float(logs["loss"])))
            self._loss = float(logs["loss"])
            self._emit(step)  # the step's event went out before its loss was logged
        if "learning_rate" in logs:
            self._learning_rate = float(logs["learning_rate"])
        if "eval_loss" in logs:
            self.eval_losses.append((step, float(logs["eval_loss"])))

    def _emit(self, step: int) -> None:
        if not self._main or self.progress is None:
            return
        metrics = {"tokens_per_second": round(self.tokens_per_second, 2)}
        shown = [f"{self.tokens_per_second:,.0f} tok/s"] if step > self.start_step else []
        if self._loss is not None:
            metrics["loss"] = self._loss
            shown.insert(0, f"loss {self._loss:.4f}")
        emit(self.progress, "training", step, self.max_steps, detail=", ".join(shown), metrics=metrics)

    # -- results -------------------------------------------------------------------------------
    @property
    def session_tokens(self) -> int:
        return self.tokens - self.start_tokens

    @property
    def tokens_per_second(self) -> float:
        return self.session_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_tokens_per_second(self) -> float | None:
        """Tokens/s after the session's first step (which also pays for warm-up), if there were two."""
        if self._first_step is None or self.seconds <= self._first_step[1]:
            return None
        return (self.tokens - self._first_step[0]) / (self.seconds - self._first_step[1])

    def metrics(self) -> dict[str, Any]:
        """What this session of the run measured (a resumed run measures only what it trained)."""
        return {
            "steps": self.steps,
            "resumed_from_step": self.resumed_from_step,
            "session_steps": self.steps - self.start_step,
            "tokens": self.tokens,
            "session_tokens": self.session_tokens,
            "seconds": round(self.seconds, 3),
            "tokens_per_second": round(self.tokens_per_second, 2),
            "steady_tokens_per_second": None if (v := self.steady_tokens_per_second) is None else round(v, 2),
            "first_loss": self.losses[0][1] if self.losses else None,
            "last_loss": self.losses[-1][1] if self.losses else None,
            "losses": [[s, round(v, 6)] for s, v in self.losses],
            "eval_losses": [[s, round(v, 6)] for s, v in self.eval_losses],
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "timeline": {"epochs": self.epochs, "evaluations": self.evaluations},
        }
