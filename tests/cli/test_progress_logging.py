"""Progress away from a terminal (issue 18, item 4): plain log lines a CI log or nohup.out can
read while the job runs, at most one per task every few seconds, with the first and the last event
of each task; and a time left that works for slow steps and resumed runs, the same in the lines and
in the bars (``ragtune.progress.Eta``)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress

from ragtune.cli.common import ProgressBars, progress_interval, progress_line
from ragtune.errors import ConfigError
from ragtune.models import ProgressEvent
from ragtune.progress import Eta, clock_time

LINE = re.compile(r"^(?P<stamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?P<label>[^:]+): (?P<done>\d+)"
                  r"(?:/(?P<total>\d+)(?: \((?P<pct>\d+)%\))?)?, elapsed (?P<elapsed>\d+:\d\d:\d\d)"
                  r"(?:, eta (?P<eta>\d+:\d\d:\d\d|-:--:--))?(?: \| (?P<news>.+))?$")


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def log_bars(clock: Clock, **kwargs: object) -> tuple[ProgressBars, io.StringIO]:
    """Bars whose stderr is a file, not a terminal (forced, so FORCE_COLOR in the environment of a
    CI cannot make it one)."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=80)
    return ProgressBars(console=console, clock=clock, **kwargs), out  # type: ignore[arg-type]


def parsed(out: io.StringIO) -> list[dict[str, str]]:
    lines = out.getvalue().splitlines()
    matches = [LINE.match(line) for line in lines]
    assert all(matches), [line for line, m in zip(lines, matches, strict=True) if m is None]
    return [m.groupdict() for m in matches if m is not None]


# -- the estimate ---------------------------------------------------------------------------------
def run(events: list[tuple[float, int, int | None]]) -> Eta:
    """The estimate after events (time, done, total), the first one starting the task."""
    (t0, d0, n0), *rest = events
    eta = Eta.begin(d0, n0, t0)
    for t, done, total in rest:
        eta = eta.observe(done, total, t)
    return eta


STEPS = [(float(t), t, 100) for t in range(11)]  # a step a second, 10 of 100 done


@pytest.mark.parametrize(("events", "now", "left"), [
    ([(0, 0, 100), (10, 10, 100)], None, 90.0),                   # 1 step/s, 90 steps to go
    ([(0, 50, 100), (10, 60, 100)], None, 40.0),                  # resumed at 50: 10 steps in 10 s, not 60
    ([(0, 50, 100)], None, None),                                 # nothing done yet: unknown
    ([(0, 0, None), (10, 10, None)], None, None),                 # no total: unknown
    ([(0, 0, 100), (0, 5, 100)], None, None),                     # no time passed: no rate yet
    ([(0, 0, 100), (10, 100, 100)], None, 0.0),                   # finished
    ([(0, 0, 10), (60, 1, 10), (120, 2, 10)], 150.0, 450.0),      # counts down: 8 steps of 60 s, 30 s gone
    (STEPS, 10.5, 89.5),                                           # 1 step/s, half a second after the 10th
    # stalled: 100 s after the 10th step the 11th has not ended: at most 10 steps in the 109 s since the 1st
    (STEPS, 110.0, 89 * 109 / 10),
    # the first step pays for the warm-up (27 s for a small LoRA training here): measured from its end
    ([(0, 0, 100), (30, 1, 100), (32, 2, 100), (34, 3, 100)], None, 97 * 2.0),
    # an event per 10 units: the next is due at 20 s; at 25 s it is late, at most 20 units per 25 s
    ([(0, 0, 100), (10, 10, 100)], 15.0, 85.0),
    ([(0, 0, 100), (10, 10, 100)], 20.0, 80.0),                  # due now: both readings agree, no jump
    ([(0, 0, 100), (10, 10, 100)], 25.0, 80 * 25 / 20),
    ([(0, 0, 100), (10, 40, 100), (20, 5, 100), (30, 15, 100)], None, 85.0),  # went back: a new run at 5
    ([(0, 0, 10), (10, 10, 20), (20, 20, 40)], None, 20.0),       # a growing total keeps the rate
])
def test_the_time_left_is_the_rest_at_the_rate_since_the_start(
        events: list[tuple[float, int, int | None]], now: float | None, left: float | None) -> None:
    got = run(events).remaining(now)
    assert got == left if left is None else got == pytest.approx(left)


def test_steady_steps_agree_with_rich_and_slow_steps_still_have_an_estimate() -> None:
    """Rich's estimate (``Task.time_remaining``) as the reference where it works; where it does not
    (steps slower than its 30 s window, the cause of the training bar without an ETA), ours goes on."""
    for seconds_per_step, rich_knows in [(2.0, True), (20.0, True), (45.0, False)]:
        clock = Clock(0.0)
        bars = Progress(get_time=clock, disable=True)
        task = bars.add_task("training", total=100, completed=0)
        eta = Eta.begin(0, 100, clock.now)
        for step in range(1, 6):
            clock.now += seconds_per_step
            bars.update(task, completed=step)
            eta = eta.observe(step, 100, clock.now)
        reference = bars.tasks[0].time_remaining
        assert (reference is not None) is rich_knows, seconds_per_step
        if reference is not None:
            assert reference == pytest.approx(eta.remaining(), abs=1)
        assert eta.remaining() == pytest.approx(95 * seconds_per_step)


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "-:--:--"), (0.0, "0:00:00"), (89.9999, "0:01:30"), (90.0, "0:01:30"), (3599.6, "1:00:00"),
    (3 * 3600 + 25 * 60 + 7, "3:25:07"), (-3.0, "0:00:00"), (float("inf"), "-:--:--"),
])
def test_clock_time(seconds: float | None, text: str) -> None:
    assert clock_time(seconds) == text


# -- the log lines --------------------------------------------------------------------------------
def test_a_line_has_stamp_label_counts_percent_elapsed_eta_and_detail() -> None:
    clock = Clock()
    bars, out = log_bars(clock)
    with bars:
        bars(ProgressEvent("training", 0, 100))
        clock.now += 10
        bars(ProgressEvent("training", 10, 100, "loss 0.4123, 512 tok/s", {"loss": 0.4123, "tokens_per_second": 512}))
    first, second = parsed(out)
    assert (first["label"], first["done"], first["total"], first["pct"], first["elapsed"], first["eta"]) == (
        "training steps", "0", "100", "0", "0:00:00", "-:--:--")
    assert (second["done"], second["pct"], second["elapsed"], second["eta"], second["news"]) == (
        "10", "10", "0:00:10", "0:01:30", "loss 0.4123, 512 tok/s")
    # the stamps are the wall clock of each event: 10 s apart
    gap = datetime.fromisoformat(second["stamp"]) - datetime.fromisoformat(first["stamp"])
    assert gap.total_seconds() == pytest.approx(10, abs=1)
    assert "\x1b[" not in out.getvalue()  # no escape codes in a log


@pytest.mark.parametrize(("event", "line"), [
    (ProgressEvent("training", 3, 8, "loss 0.5", {"loss": 0.5}), "training steps: 3/8 (37%), elapsed 0:00:04, "
                                                                 "eta 0:00:07 | loss 0.5"),  # detail, not metrics
    (ProgressEvent("training", 3, 8, "", {"loss": 0.5, "tokens_per_second": 12.25}),
     "training steps: 3/8 (37%), elapsed 0:00:04, eta 0:00:07 | loss=0.5 tokens_per_second=12.25"),
    (ProgressEvent("chunks", 3), "chunks written: 3, elapsed 0:00:04"),  # no total: no percent, no eta
    (ProgressEvent("documents", 0, 0), "documents: 0/0, elapsed 0:00:04"),  # a stream's "nothing counted yet"
    (ProgressEvent("mystery", 8, 8), "mystery: 8/8 (100%), elapsed 0:00:04, eta 0:00:00"),
])
def test_the_parts_of_a_line(event: ProgressEvent, line: str) -> None:
    eta = Eta.begin(0, event.total, 0.0).observe(event.done, event.total, 4.0)
    assert progress_line(event, eta) == line


def test_a_resumed_task_estimates_from_what_this_run_did() -> None:
    clock = Clock()
    bars, out = log_bars(clock)
    with bars:
        bars(ProgressEvent("training", 50, 100))
        clock.now += 10
        bars(ProgressEvent("training", 60, 100))
    assert [(line["done"], line["elapsed"], line["eta"]) for line in parsed(out)] == [
        ("50", "0:00:00", "-:--:--"), ("60", "0:00:10", "0:00:40")]


def test_a_fast_task_prints_a_line_every_interval_with_its_first_and_last_event() -> None:
    clock = Clock()
    bars, out = log_bars(clock, interval=10)
    with bars:
        for step in range(101):  # one step every 0.5 s
            bars(ProgressEvent("training", step, 100, f"loss {1 / (step + 1):.4f}"))
            clock.now += 0.5
    lines = parsed(out)
    assert [int(line["done"]) for line in lines] == list(range(0, 101, 20))  # 0, then every 10 s, 100 at once
    assert [line["eta"] for line in lines][:3] == ["-:--:--", "0:00:40", "0:00:30"]
    assert lines[-1]["news"] == "loss 0.0099" and lines[-1]["eta"] == "0:00:00"


def test_a_task_reporting_less_often_than_the_interval_prints_every_event() -> None:
    clock = Clock()
    bars, out = log_bars(clock, interval=10)
    with bars:
        for step in range(6):
            bars(ProgressEvent("training", step, 5))
            clock.now += 45  # a LoRA step on CPU
    lines = parsed(out)
    assert [line["done"] for line in lines] == ["0", "1", "2", "3", "4", "5"]
    assert [line["eta"] for line in lines] == ["-:--:--", "0:03:00", "0:02:15", "0:01:30", "0:00:45", "0:00:00"]


def test_the_last_event_not_printed_yet_prints_when_the_bars_close() -> None:
    """A task with no total (or a growing one) has no event that says it ended: its latest state is
    printed at the end, with the time it happened, and a repeat of a printed event prints nothing."""
    clock = Clock()
    bars, out = log_bars(clock, interval=10)
    with bars:
        bars(ProgressEvent("chunks", 0))
        for n in range(1, 8):
            clock.now += 1
            bars(ProgressEvent("chunks", n * 3, None, "", {"seconds": n / 4}))
        clock.now += 100  # what happens after the task does not count in its line
    lines = parsed(out)
    assert [(line["label"], line["done"], line["total"], line["eta"]) for line in lines] == [
        ("chunks written", "0", None, None), ("chunks written", "21", None, None)]
    assert lines[-1]["elapsed"] == "0:00:07" and lines[-1]["news"] == "seconds=1.75"

    clock = Clock()
    bars, out = log_bars(clock, interval=10)
    with bars:
        for _ in range(3):
            bars(ProgressEvent("files", 4, 4))
            clock.now += 1
    assert len(parsed(out)) == 1


def test_reaching_a_growing_total_is_not_the_end() -> None:
    """Ingest's "embedded" total grows by each batch just before it is embedded: every batch ends
    at done == total, which must not print a line each time."""
    clock = Clock()
    bars, out = log_bars(clock, interval=10)
    with bars:
        for batch in range(1, 11):
            bars(ProgressEvent("embedded", (batch - 1) * 64, batch * 64))
            clock.now += 1
            bars(ProgressEvent("embedded", batch * 64, batch * 64))
    assert [line["done"] for line in parsed(out)] == ["0", "64", "640"]  # first, the first total reached, last


def test_a_restarted_task_flushes_its_last_state_and_starts_again() -> None:
    clock = Clock()
    bars, out = log_bars(clock, interval=10, lines=["trials"])
    with bars:
        bars(ProgressEvent("trials", 0, 2))
        for trial in range(2):
            for step in range(0, 8):  # pruned after 7 of 10 steps
                bars(ProgressEvent("training", step, 10))
                clock.now += 1
            bars(ProgressEvent("trials", trial + 1, 2, f"trial {trial}: pruned at step 7"))
    lines = [(line["label"], line["done"], line["news"]) for line in parsed(out)]
    assert lines == [
        ("trials", "0", None),
        ("training steps", "0", None),
        ("trials", "1", "trial 0: pruned at step 7"),  # a task in ``lines`` prints every event
        ("training steps", "7", None),  # the first run's last state, before the second starts
        ("training steps", "0", None),
        ("trials", "2", "trial 1: pruned at step 7"),
        ("training steps", "7", None),
    ]


def test_the_interval_comes_from_the_environment_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAGTUNE_PROGRESS_INTERVAL", raising=False)
    assert progress_interval() == 10.0
    monkeypatch.setenv("RAGTUNE_PROGRESS_INTERVAL", "2.5")
    assert progress_interval() == 2.5 and ProgressBars(log_lines=True).interval == 2.5
    assert progress_interval(0) == 0.0
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("RAGTUNE_PROGRESS_INTERVAL", bad)
        with pytest.raises(ConfigError, match=f"RAGTUNE_PROGRESS_INTERVAL='{bad}'"):
            ProgressBars()
    with pytest.raises(ConfigError, match="interval=-2"):
        progress_interval(-2)

    monkeypatch.setenv("RAGTUNE_PROGRESS_INTERVAL", "0")
    clock = Clock()
    bars, out = log_bars(clock)
    with bars:
        for step in range(5):
            bars(ProgressEvent("rows", step, 4 + 1))
    assert [line["done"] for line in parsed(out)] == ["0", "1", "2", "3", "4"]


# -- on a terminal --------------------------------------------------------------------------------
def test_on_a_terminal_the_bar_shows_the_same_time_left_and_no_lines() -> None:
    out = io.StringIO()
    clock = Clock()
    terminal = Console(file=out, force_terminal=True, force_interactive=True, width=120, color_system=None)
    bars = ProgressBars(console=terminal, clock=clock)
    assert not bars.log_lines
    bars(ProgressEvent("training", 50, 100))  # a resumed training whose steps take 45 s
    for step in (51, 52, 53):
        clock.now += 45
        bars(ProgressEvent("training", step, 100, "loss 0.1"))
    assert out.getvalue() == ""  # not started: nothing drawn, and no log line
    shown = Console(file=io.StringIO(), width=120, color_system=None)
    shown.print(bars.bars.get_renderable())
    row = shown.file.getvalue()  # type: ignore[attr-defined]
    assert "53/100" in row and row.rstrip().endswith(clock_time(47 * 45)), row
    clock.now += 15
    shown = Console(file=io.StringIO(), width=120, color_system=None)
    shown.print(bars.bars.get_renderable())
    assert shown.file.getvalue().rstrip().endswith(clock_time(47 * 45 - 15))  # type: ignore[attr-defined]


def test_the_default_console_decides_as_rich_does() -> None:
    pipe = Console(file=io.StringIO(), force_terminal=False)
    dumb = Console(file=io.StringIO(), force_terminal=True, force_interactive=False)
    terminal = Console(file=io.StringIO(), force_terminal=True, force_interactive=True)
    assert [ProgressBars(console=c).log_lines for c in (pipe, dumb, terminal)] == [True, True, False]


# -- end to end -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_an_ingest_into_a_pipe_logs_each_step(env: dict[str, str], tmp_path: Path) -> None:
    """``ragtune ingest`` in a process of its own with stderr to a pipe, as under nohup or in CI."""
    folder = tmp_path / "notes"
    folder.mkdir()
    for name, text in [("cats.md", "# Cats\n\nCats purr when content.\n"), ("tea.txt", "Green tea is steamed.\n"),
                       ("owls.md", "# Owls\n\nOwls hunt at night.\n"), ("moon.txt", "The moon has no air.\n")]:
        (folder / name).write_text(text, encoding="utf-8")
    child = {k: v for k, v in {**os.environ, **env}.items()
             if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    child["RAGTUNE_PROGRESS_INTERVAL"] = "0"  # every event: each file gets its line
    command = [str(Path(sys.executable).parent / "ragtune"), "ingest", str(folder), "--data-dir",
               str(tmp_path / "data")]
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=child,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    lines = [m.groupdict() for line in done.stderr.splitlines() if (m := LINE.match(line))]
    files = [(line["done"], line["total"]) for line in lines if line["label"] == "files"]
    assert {"0", "1", "2", "3", "4"} <= {d for d, _ in files} and all(t == "4" for _, t in files), done.stderr
    assert files[-1] == ("4", "4")
    documents = [line for line in lines if line["label"] == "documents"]
    assert documents and documents[-1]["done"] == "4", done.stderr
    assert "━" not in done.stderr  # no bar drawn at the end either
    assert "4 document(s)" in done.stdout
