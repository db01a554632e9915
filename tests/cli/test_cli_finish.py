"""A CLI that feels finished (issue 16, item 5): bad limits refused by option validation, paging with
totals, relative prefixes, compact traces and one trace as a tree, confirmations before deleting,
and help texts without placeholders or raw markup (real database, real model, real files)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer

from ragtune.cli.main import app
from ragtune.engine import Ragtune
from tests.cli.runner import invoke, runner


def _write(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True)
    for name in names:
        (folder / f"{name}.md").write_text(f"# {name}\n\nThe {name} policy is short and clear.\n", encoding="utf-8")


@pytest.fixture
def kb(env: dict[str, str], tmp_path: Path) -> Path:
    """Collection ``kb``: three public documents under kb/public, two readable by hr under kb/hr."""
    _write(tmp_path / "kb" / "public", ["alpha", "beta", "gamma"])
    _write(tmp_path / "kb" / "hr", ["pay", "bonus"])
    assert invoke("ingest", str(tmp_path / "kb" / "public"), "-c", "kb", "--public")[0] == 0
    assert invoke("ingest", str(tmp_path / "kb" / "hr"), "-c", "kb", "--acl", "hr")[0] == 0
    return tmp_path / "kb"


@pytest.mark.parametrize("args", [
    ("docs", "list", "--limit", "-1"), ("docs", "list", "--limit", "0"), ("docs", "list", "--offset", "-1"),
    ("traces", "list", "--limit", "-1"), ("traces", "list", "--limit", "0"),
])
def test_a_bad_limit_is_refused_by_option_validation(env: dict[str, str], args: tuple[str, ...]) -> None:
    code, out, err = invoke(*args)
    assert code == 2, (out, err)
    assert "Traceback" not in out + err and "Invalid value for '--" in err


def test_an_unforeseen_error_is_one_line_unless_debugging(env: dict[str, str], kb: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Ragtune, **_: object) -> list[object]:
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(Ragtune, "documents", broken)
    code, _out, err = invoke("docs", "list", "-c", "kb")
    assert code == 1
    assert err.strip().count("\n") == 0 and "unexpected ZeroDivisionError: division by zero" in err
    monkeypatch.setenv("RAGTUNE_DEBUG", "1")
    result = runner.invoke(app, ["docs", "list", "-c", "kb"])
    assert isinstance(result.exception, ZeroDivisionError)


def test_docs_list_pages_with_totals_for_the_reader(kb: Path) -> None:
    code, out, err = invoke("docs", "list", "-c", "kb", "--limit", "2")
    assert code == 0, err
    assert "showing 1-2 of 5" in out and "--offset 2" in out
    first = [d["uri"] for d in json.loads(invoke("docs", "list", "-c", "kb", "--limit", "2", "--json")[1])]
    second = [d["uri"] for d in json.loads(invoke("docs", "list", "-c", "kb", "--limit", "2", "--offset", "2",
                                                  "--json")[1])]
    everything = [d["uri"] for d in json.loads(invoke("docs", "list", "-c", "kb", "--json")[1])]
    assert first + second == everything[:4] and len(everything) == 5
    code, out, _ = invoke("docs", "list", "-c", "kb", "--limit", "2", "--offset", "4")
    assert code == 0 and "showing 5-5 of 5" in out and "next page" not in out
    # the total counts only what the reader may read: hr's two documents are not in it
    code, out, _ = invoke("docs", "list", "-c", "kb", "--limit", "2", "--as-group", "eng")
    assert code == 0 and "showing 1-2 of 3" in out
    code, out, _ = invoke("docs", "list", "-c", "kb")
    assert code == 0 and "5 document(s)" in out and "showing" not in out  # one page: no paging line


def test_docs_list_takes_a_relative_prefix(kb: Path) -> None:
    def listed(prefix: str) -> list[str]:
        code, out, err = invoke("docs", "list", "-c", "kb", "--prefix", prefix, "--json")
        assert code == 0, err
        return sorted(Path(d["uri"]).name for d in json.loads(out))

    assert listed("kb/hr") == ["bonus.md", "pay.md"]  # the working folder is kb's parent
    assert listed("kb/hr/") == listed("./kb/hr") == ["bonus.md", "pay.md"]
    assert listed("kb/public/b") == ["beta.md"]  # a partial name in an existing folder
    assert listed(str(kb / "public")) == ["alpha.md", "beta.md", "gamma.md"]  # absolute, as before
    assert listed("https://example.com/") == [] and listed("nothing-here/") == []


@pytest.fixture
def answered(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """An answer (kind ask) and a search by an hr member (the CLI searches as user ``cli``); their trace ids."""
    doc = tmp_path / "policy.md"
    doc.write_text("# Leave\n\nEvery employee receives 27 days of paid leave per year.\n", encoding="utf-8")
    assert invoke("ingest", str(doc), "-c", "pol", "--acl", "hr")[0] == 0
    code, out, err = invoke("ask", "How many days of paid leave per year?", "-c", "pol", "-g", "extractive",
                            "--as-group", "hr", "--json")
    assert code == 0, err
    asked = json.loads(out)["trace_id"]
    code, out, err = invoke("search", "paid leave", "-c", "pol", "--as-group", "hr", "--json")
    assert code == 0, err
    return {"ask": asked, "search": json.loads(out)["trace_id"]}


def test_traces_list_is_a_compact_table_and_json_is_whole(answered: dict[str, str]) -> None:
    code, out, err = invoke("traces", "list")
    assert code == 0, err
    assert "27 days of paid leave" not in out  # the prompt quotes the document: not in the list
    assert "ask" in out and "search" in out and "grounded" in out and answered["ask"][:12] in out
    assert answered["ask"] not in out  # the list shows 12 hex digits of a trace id; show takes them
    code, out, _ = invoke("traces", "list", "--json", "--kind", "ask")
    rows = json.loads(out)
    assert [r["id"] for r in rows] == [answered["ask"]]
    assert "27 days of paid leave" in json.dumps(rows[0]["params"]["prompt"])


def test_traces_show_draws_stages_sources_and_prompt(answered: dict[str, str]) -> None:
    code, out, err = invoke("traces", "show", answered["ask"][:12])
    assert code == 0, err
    assert f"trace {answered['ask']}" in out
    for part in ("stages (", "retrieve", "support", " ms", "sources (", "#1", "policy.md", "score", "prompt (",
                 "27 days of paid leave", "answer ("):
        assert part in out, (part, out)
    code, out, err = invoke("traces", "show", answered["search"])
    assert code == 0, err
    # a search's steps nest under retrieve; its sources are named by URI though the trace keeps ids
    lines = out.splitlines()
    stage = next(i for i, line in enumerate(lines) if re.search(r"── retrieve [0-9.]+ ms", line))
    step = next(i for i, line in enumerate(lines) if re.search(r"── (dense|bm25) [0-9.]+ ms", line))
    assert step > stage and lines[step].index("──") > lines[stage].index("──"), out
    assert "#1" in out and "policy.md" in out and "paid leave" in out


def test_a_hidden_or_missing_trace_is_no_trace(answered: dict[str, str]) -> None:
    trace = str(answered["search"])
    code, _out, err = invoke("traces", "show", trace, "--as-user", "eve", "--as-group", "eng")
    assert code == 2 and f"no trace {trace}" in err and err.strip().count("\n") == 0
    # another member of hr sees it only as an observer (all traces, text outside its groups redacted)
    assert invoke("traces", "show", trace, "--as-user", "bob", "--as-group", "hr")[0] == 2
    code, out, err = invoke("traces", "show", trace, "--as-user", "bob", "--as-group", "hr", "--as-observer")
    assert code == 0 and "paid leave" in out, err  # hr's own document: nothing to redact for bob
    code, out, err = invoke("traces", "show", trace, "--as-user", "eve", "--as-group", "eng", "--as-observer")
    assert code == 0 and "policy.md" not in out and "27 days" not in out, out  # ids and scores only
    code, _out, err = invoke("traces", "show", "98765432")
    assert code == 2 and "no trace 98765432" in err
    code, _out, err = invoke("traces", "show", "9876")  # too short a prefix to mean one trace
    assert code == 2 and "no trace 9876" in err


def test_collections_rm_asks_first_and_says_what_it_removed(kb: Path) -> None:
    code, out, _ = invoke("collections", "rm", "kb", input="n\n")
    assert code == 1 and "Delete collection 'kb' (5 document(s)" in out
    assert "kb" in invoke("collections", "list")[1]
    code, out, err = invoke("collections", "rm", "kb", "--yes")
    assert code == 0, err
    assert "removed collection 'kb': 5 document(s)" in out
    assert "kb" not in invoke("collections", "list")[1]


def test_docs_rm_asks_first(kb: Path) -> None:
    target = str(kb / "public" / "alpha.md")
    code, out, _ = invoke("docs", "rm", target, "-c", "kb", input="n\n")
    assert code == 1 and "Remove 1 document(s) from collection 'kb'?" in out
    assert "alpha.md" in invoke("docs", "list", "-c", "kb", "--json")[1]
    code, out, err = invoke("docs", "rm", target, "-c", "kb", input="y\n")
    assert code == 0 and "removed 1 document(s)" in out, err
    assert "alpha.md" not in invoke("docs", "list", "-c", "kb", "--json")[1]


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command of the tree with its path (Typer's commands are its own copy of Click's)."""
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(typer.main.get_command(app))


def test_the_command_walk_sees_every_command() -> None:
    paths = {" ".join(p) for p, _ in COMMANDS}
    assert {"docs list", "traces show", "collections rm", "eval retrieval", "sync"} <= paths
    assert len(paths) > 50


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "ragtune" for p, _ in COMMANDS])
def test_help_has_no_placeholder_or_raw_markup(path: tuple[str, ...], command: Any) -> None:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    for bad in ("<bool>", "``", "[bold", "[/", "[dim", "[red"):
        assert bad not in result.stdout, (bad, result.stdout)


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "ragtune" for p, _ in COMMANDS])
def test_every_command_and_parameter_has_a_help_text(path: tuple[str, ...], command: Any) -> None:
    assert command.help, path
    assert [p.name for p in command.params if not getattr(p, "help", None)] == [], path


def test_the_eval_table_says_mrr(env: dict[str, str]) -> None:
    code, out, err = invoke("eval", "retrieval", "--dataset", "squad", "--modes", "bm25", "--limit", "4",
                            "--subset-corpus")
    assert code == 0, err
    assert "MRR@10" in out and "nDCG@10" in out
    assert re.search(r"\bRR@10", out) is None  # only as part of MRR@10
