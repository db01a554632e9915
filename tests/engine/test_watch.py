"""``Ragtune.watch`` (``ragtune sync --watch``): a folder kept in sync as it changes, on the real
file system notifications (watchfiles) and the real database: files written are ingested (a new
one takes its folder's ACL, as sync gives it), edited ones updated, deleted ones removed; hidden and
excluded files are left alone; setting the stop event ends the loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ragtune.engine import Ragtune
from ragtune.models import IngestReport, Principal


def eventually(check: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the watched folder was not synced in time"
        time.sleep(0.1)


def test_a_watched_folder_follows_its_files(rt: Ragtune, tmp_path: Path) -> None:
    folder = tmp_path / "handbook"
    (folder / "hr").mkdir(parents=True)
    (folder / "hr" / "leave.md").write_text("# Leave\n\nParental leave lasts sixteen weeks.\n")
    rt.ingest([folder], collection="kb", acl=["hr"])
    stop = threading.Event()
    reports: list[IngestReport] = []
    worker = threading.Thread(target=rt.watch, args=(folder,),
                              kwargs={"stop": stop, "collection": "kb", "exclude": ["*.tmp"], "debounce_ms": 200,
                                      "on_sync": reports.append}, daemon=True)
    worker.start()

    def docs() -> dict[str, tuple[int, tuple[str, ...]]]:
        return {Path(d.uri).name: (d.version, d.acl) for d in rt.documents(collection="kb")}

    try:
        eventually(lambda: len(reports) >= 1)  # the first sync
        assert reports[0].unchanged == 1 and docs() == {"leave.md": (1, ("hr",))}
        (folder / "hr" / "travel.md").write_text("# Travel\n\nBook trains by Friday.\n")
        eventually(lambda: "travel.md" in docs())
        assert docs()["travel.md"] == (1, ("hr",))  # the folder's ACL, as sync gives a new file
        (folder / "hr" / "leave.md").write_text("# Leave\n\nParental leave lasts twenty weeks.\n")
        eventually(lambda: docs().get("leave.md", (0,))[0] == 2)
        hits = rt.search("how many weeks of parental leave", collection="kb", mode="bm25",
                         principal=Principal("ann", frozenset({"hr"}))).hits
        assert "twenty weeks" in hits[0].chunk.text
        (folder / "hr" / ".draft.md").write_text("hidden draft")
        (folder / "hr" / "notes.tmp").write_text("excluded scratch")
        (folder / "hr" / "leave.md").unlink()
        eventually(lambda: "leave.md" not in docs())
        assert set(docs()) == {"travel.md"}  # neither the hidden nor the excluded file came in
        assert any(r.removed == 1 for r in reports)
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()
    # every sync of the watch is an ingest trace: the first, and one per batch of changes that wrote
    ingests = rt.traces.visible(Principal.system(), kind="ingest", limit=50)
    assert len(ingests) >= 4, ingests  # the ingest, the first sync, travel.md, the edit of leave.md


@pytest.mark.parametrize("stop_signal", ["SIGINT", "SIGTERM"])
def test_sync_watch_in_the_cli_follows_the_folder_until_ctrl_c_or_sigterm(
        database_url: str, cache_dir: Path, tmp_path: Path, stop_signal: str) -> None:
    import os
    import signal
    import subprocess
    import sys

    from ragtune.settings import Settings

    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "desk.md").write_text("Hot desks are booked in the app by nine.\n")
    env = {**os.environ, "RAGTUNE_DATABASE_URL": database_url, "RAGTUNE_CACHE_DIR": str(cache_dir)}

    def as_from_a_terminal() -> None:
        # A suite started in the background of a non-interactive shell (`./.ci/run &`) ignores
        # SIGINT, and a child inherits that: Python then installs no Ctrl-C handler and the signal
        # is lost. This was the "sometimes not acted on" Ctrl-C of earlier sessions. A terminal's
        # Ctrl-C reaches a process whose SIGINT is at its default, as here.
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen([sys.executable, "-m", "ragtune.cli.main", "sync", str(folder), "--watch", "-c", "notes"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=as_from_a_terminal)
    try:
        with Ragtune(Settings.of(database_url=database_url, cache_dir=cache_dir, data_dir=tmp_path / "d")) as rt:
            def names() -> set[str]:
                try:
                    return {Path(d.uri).name for d in rt.documents(collection="notes")}
                except Exception:  # the collection is made by the first sync
                    return set()

            eventually(lambda: names() == {"desk.md"}, 120)
            (folder / "parking.md").write_text("Parking is free for visitors.\n")
            eventually(lambda: names() == {"desk.md", "parking.md"})
    finally:
        proc.send_signal(getattr(signal, stop_signal))
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise AssertionError(f"{stop_signal} did not stop the watch within 30 s: {out}") from None
    assert proc.returncode == 0, out
    assert "stopped watching" in out and "Traceback" not in out
