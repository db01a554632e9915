"""The one progress protocol: the event, the counter producers share, and the JSON-lines transport
the LoRA training workers report through."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ragtune.models import ProgressEvent
from ragtune.progress import JsonLinesReader, JsonLinesWriter, ProgressCounter, emit, from_json, to_json
from ragtune.protocols import Progress
from tests.helpers import ProgressRecorder


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"task": "", "done": 0}, "task name"),
    ({"task": "rows", "done": -1}, "done=-1"),
    ({"task": "rows", "done": 0, "total": -2}, "total=-2"),
])
def test_an_impossible_event_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProgressEvent(**kwargs)  # type: ignore[arg-type]


def test_a_recorder_and_a_function_are_progress_receivers() -> None:
    def receive(event: ProgressEvent) -> None:
        pass

    assert isinstance(ProgressRecorder(), Progress) and isinstance(receive, Progress)
    emit(None, "rows", 1)  # no receiver: nothing happens


def test_the_counter_sends_absolute_counts_in_order_from_many_threads() -> None:
    recorder = ProgressRecorder()
    counts = ProgressCounter(recorder)
    counts.start("documents", 800)

    def count() -> None:
        for _ in range(200):
            counts.add("documents", detail="x")
            counts.add("chunks", 3)

    threads = [threading.Thread(target=count) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [e.done for e in recorder.of("documents")] == list(range(801))  # from the start event's 0, none lost
    assert [e.done for e in recorder.of("chunks")] == list(range(3, 2401, 3))
    assert {e.total for e in recorder.of("documents")} == {800} and {e.total for e in recorder.of("chunks")} == {None}
    assert counts.done("documents") == 800 and counts.done("nothing") == 0


def test_events_cross_a_process_boundary_as_json_lines(tmp_path: Path) -> None:
    events = [ProgressEvent("training", 0, 8), ProgressEvent("training", 1, 8, "loss 2.3456, 910 tok/s",
                                                             {"loss": 2.345678901234, "tokens_per_second": 910.5}),
              ProgressEvent("files", 3, None, "naïve.md")]
    assert [from_json(to_json(e)) for e in events] == events
    path = tmp_path / "progress.jsonl"
    received = ProgressRecorder()
    reader = JsonLinesReader(path, received)
    assert reader.relay() == 0  # the worker has not started writing
    writer = JsonLinesWriter(path)
    writer(events[0])
    writer(events[1])
    with open(path, "a", encoding="utf-8") as fh:  # a line the worker is still writing waits
        fh.write(to_json(events[2])[:10])
    assert reader.relay() == 2 and received.events == events[:2]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(to_json(events[2])[10:] + "\n" + "not json\n")
    assert reader.relay() == 1 and received.events == events  # the bad line is skipped
    assert reader.relay() == 0
