"""``ragtune feedback`` and the trace list's feedback filter on the command line (issue 19), over
the real database and embedder."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.runner import invoke


def test_feedback_from_the_command_line_is_shown_and_filtered(cli_env: Path) -> None:
    doc = cli_env / "leave.md"
    doc.write_text("# Leave\n\nEvery employee receives 27 days of paid leave per year.\n", encoding="utf-8")
    assert invoke("ingest", str(doc), "-c", "fb")[0] == 0
    asked = []
    for question in ("How many days of paid leave?", "Who gets paid leave?"):
        code, out, err = invoke("ask", question, "-c", "fb", "-g", "extractive", "--json")
        assert code == 0, err
        asked.append(json.loads(out)["trace_id"])
    code, out, err = invoke("feedback", asked[0], "--down", "--label", "outdated", "--correction", "30 days.")
    assert code == 0 and f"on answer {asked[0]} stored" in out, err
    code, out, err = invoke("feedback", asked[1][:12], "--up")  # the full id, not the list's prefix
    assert code == 2 and f"no answer {asked[1][:12]}" in err, (out, err)
    code, out, err = invoke("feedback", asked[1])
    assert code == 2 and "empty feedback" in err, (out, err)
    code, out, err = invoke("traces", "list", "--feedback", "negative", "--since-hours", "1", "--json")
    assert code == 0, err
    assert [t["id"] for t in json.loads(out)] == [asked[0]]
    code, out, err = invoke("traces", "list", "--feedback", "sideways")
    assert code == 2 and "feedback='sideways'" in err, (out, err)
    code, out, err = invoke("traces", "show", asked[0])
    assert code == 0 and "feedback from" in out and "thumbs down; outdated; should be: 30 days." in out, out


def test_stats_on_the_command_line(cli_env: Path) -> None:
    doc = cli_env / "leave.md"
    doc.write_text("# Leave\n\nEvery employee receives 27 days of paid leave per year.\n", encoding="utf-8")
    assert invoke("ingest", str(doc), "-c", "st")[0] == 0
    for _ in range(2):
        assert invoke("ask", "How many days of paid leave?", "-c", "st", "-g", "extractive")[0] == 0
    code, out, err = invoke("stats", "--since-hours", "1", "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["requests"]["ask"]["requests"] == 2 and stats["requests"]["ingest"]["requests"] == 1
    assert {"retrieval", "prompt", "chunk", "embed", "write"} <= {s["stage"] for s in stats["stages"]}
    code, out, err = invoke("stats", "--since-hours", "1")
    assert code == 0 and "stages" in out and "answers abstained" in out, err
