"""The ``ragtune`` command end to end (real database, real model, real files)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.cli.runner import invoke


def test_ingest_search_docs_roundtrip(env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "leave.md").write_text("# Leave\n\nParental leave is sixteen weeks at full pay.\n", encoding="utf-8")
    (folder / "expenses.md").write_text("# Expenses\n\nSubmit receipts within thirty days.\n", encoding="utf-8")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    code, out, err = invoke("ingest", str(folder), "--collection", "hr", "--meta", "dept=people", "--acl", "staff")
    assert code == 0, err
    assert "added" in out and "broken.pdf" in err
    # away from a terminal progress is log lines; each task's last line has its final n/total (the
    # documents' total is what has been read so far, so it never falls behind what is done)
    progress = [line for line in err.splitlines() if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line)]
    last = {line[20:].split(":")[0]: line for line in progress}
    assert "3/3" in last["files"] and "3/3" in last["documents"], err
    assert "chunks written" in err and "chunks embedded" in err
    code, out, err = invoke("search", "how long is parental leave", "-c", "hr", "--json", "--as-group", "staff")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["hits"][0]["uri"].endswith("leave.md")
    assert payload["hits"][0]["metadata"]["dept"] == "people" and payload["trace_id"]
    code, out, _ = invoke("search", "parental leave", "-c", "hr", "--json", "--as-user", "visitor")
    assert json.loads(out)["hits"] == []  # a user not in group staff
    code, out, _ = invoke("search", "parental leave", "-c", "hr", "--json")
    assert json.loads(out)["hits"][0]["uri"].endswith("leave.md")  # nobody named: the local operator
    code, out, _ = invoke(
        "search", "receipts", "-c", "hr", "--json", "--as-group", "staff", "--mode", "bm25", "--filter", "dept=people"
    )
    assert json.loads(out)["hits"][0]["uri"].endswith("expenses.md")
    code, out, _ = invoke("docs", "list", "-c", "hr", "--json")
    assert sorted(Path(d["uri"]).name for d in json.loads(out)) == ["expenses.md", "leave.md"]
    code, out, _ = invoke("docs", "show", str(folder / "leave.md"), "-c", "hr", "--json")
    shown = json.loads(out)
    assert shown["version"] == 1 and shown["chunks"][0]["text"].startswith("# Leave")
    code, out, _ = invoke("docs", "rm", str(folder / "leave.md"), "-c", "hr", "--yes")
    assert code == 0 and "removed 1" in out
    code, out, _ = invoke("traces", "list", "--limit", "1", "--json")
    assert json.loads(out)[0]["query"] == "receipts"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("search", "x", "-c", "nope"), "no collection named 'nope'"),
        (("search", "x", "--filter", "year>=soon"), "range needs a number"),
        (("search", "x", "--top-k", "0"), "top_k must be between"),
        (("search", "x", "--mode", "magic"), "unknown search mode"),
    ],
)
def test_errors_are_clear_messages_with_exit_code_2(env: dict[str, str], args: tuple[str, ...], message: str) -> None:
    if "nope" not in args:
        invoke("ingest", str(Path(__file__)), "--collection", "default")
    code, _out, err = invoke(*args)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_bad_config_names_the_key(env: dict[str, str], tmp_path: Path) -> None:
    toml = "[ragtune.ingest]\nchunk_max_tokens = 256\n[ragtune.retrieval]\nfusoin = 'rrf'\n"
    (tmp_path / "ragtune.toml").write_text(toml, encoding="utf-8")
    code, _out, err = invoke("config", "show")
    assert code == 2 and "fusoin" in err
    (tmp_path / "ragtune.toml").write_text("[retrieval]\nhnsw_m = 'many'\n", encoding="utf-8")
    code, _out, err = invoke("config", "show")
    assert code == 2 and "hnsw_m" in err


def test_config_show_never_prints_the_password(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", "postgresql://app:s3cr3t@db.example/rag")
    code, out, _ = invoke("config", "show")
    assert code == 0 and "s3cr3t" not in out and "app:***@db.example" in out


@pytest.mark.slow
def test_embedded_default_server_starts_is_reused_and_stops(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="ragtune-cli-"))  # see conftest: not under pytest's 0700 basetemp
    monkeypatch.delenv("RAGTUNE_DATABASE_URL", raising=False)
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("The embedded server keeps data in the project folder.", encoding="utf-8")
    try:
        code, out, err = invoke("ingest", "a.txt")
        assert code == 0, err
        assert (tmp_path / ".ragtune" / "pg" / "PG_VERSION").exists()
        code, out, _ = invoke("db", "status")
        assert "running" in out
        code, out, _ = invoke("search", "where is the data kept", "--json")
        assert json.loads(out)["hits"][0]["uri"].endswith("a.txt")
    finally:
        code, out, _ = invoke("db", "stop")
    assert "stopped" in out
    code, out, _ = invoke("db", "status")
    assert "stopped" in out
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_ask_prints_a_cited_answer_and_json(env: dict[str, str], tmp_path: Path) -> None:
    doc = tmp_path / "policy.md"
    doc.write_text("# Leave\n\nEvery employee receives 27 days of paid leave per year.\n", encoding="utf-8")
    assert invoke("ingest", str(doc), "-c", "kb")[0] == 0
    code, out, err = invoke("ask", "How many days of paid leave per year?", "-c", "kb", "--generator", "extractive")
    assert code == 0, err
    assert "27 days" in out and "policy.md" in out and "grounded" in out
    code, out, err = invoke("ask", "How many days of paid leave per year?", "-c", "kb", "-g", "extractive", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["citations"][0]["uri"].endswith("policy.md") and not data["abstained"]
    code, out, err = invoke("ask", "Who won the 1930 football world cup?", "-c", "kb", "-g", "extractive")
    assert code == 0 and "do not answer" in out and "closest sources" in out
    code, _, err = invoke("ask", "anything?", "-c", "kb", "-g", "no-such-model")
    assert code == 2 and "unknown generator 'no-such-model'" in err


def test_eval_answers_on_a_hotpotqa_subset(env: dict[str, str]) -> None:
    """--subset-corpus indexes only the chosen questions' paragraphs, so HotpotQA runs in seconds."""
    code, out, err = invoke("eval", "answers", "--dataset", "hotpotqa", "--generator", "extractive",
                            "--limit", "4", "--subset-corpus", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["dataset"] == "hotpotqa" and result["questions"] == 4
    assert result["collection"].endswith("-sub4")
    row = result["generators"]["extractive"]
    assert row["questions"] == 4 and row["citation_precision"] is not None


def test_eval_answers_takes_a_task_spec(env: dict[str, str], tmp_path: Path) -> None:
    """--task-spec: a bad spec is refused before anything is indexed; a text task adds ROUGE-L."""
    bad = tmp_path / "bad.json"
    bad.write_text('{"task": "json", "schema": {"properties": {"label": {}}}, "fields": {"label": "recall"}}',
                   encoding="utf-8")
    code, _, err = invoke("eval", "answers", "--dataset", "hotpotqa", "-g", "extractive", "--task-spec", str(bad))
    assert code == 2 and "bad.json: field 'label': unknown metric(s) 'recall'" in " ".join(err.split())
    text = tmp_path / "text.toml"
    text.write_text('task = "text"\n', encoding="utf-8")
    args = ("eval", "answers", "--dataset", "hotpotqa", "-g", "extractive", "--limit", "4", "--subset-corpus",
            "--task-spec", str(text))
    code, out, err = invoke(*args, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["task"] == {"source": str(text), "task": "text", "schema": None, "fields": {}, "description": ""}
    row = result["generators"]["extractive"]
    assert row["rouge_l"] is not None and 0 <= row["rouge_l"] <= 1
    code, out, err = invoke(*args)
    assert code == 0, err
    assert "text task" in out and "rouge_l" in out


@pytest.mark.parametrize("name", ["../../evil", "a/b", "-leading-dash", "tab\tname", "x" * 201, "nul\x00"])
def test_the_cli_refuses_collection_names_the_api_refuses(env: dict[str, str], tmp_path: Path, name: str) -> None:
    """One rule for every edge (issue 14): the API refuses these with 422, the CLI with exit 2."""
    (tmp_path / "note.md").write_text("# Note\n\nA note.\n", encoding="utf-8")
    code, _, err = invoke("ingest", str(tmp_path / "note.md"), "--collection", name)
    assert code == 2 and "invalid collection name" in err, (name, code, err)
    code, out, _ = invoke("collections", "list")
    assert code == 0 and name[:20] not in out


def test_docs_and_traces_read_as_a_user_or_group(env: dict[str, str], tmp_path: Path) -> None:
    """The local default is the system principal; --as-user/--as-group read as someone else (issue 15)."""
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "pay.md").write_text("# Pay\n\nSalary bands are reviewed each spring.\n", encoding="utf-8")
    (folder / "office.md").write_text("# Office\n\nThe office opens at nine.\n", encoding="utf-8")
    assert invoke("ingest", str(folder / "pay.md"), "-c", "kb", "--acl", "hr")[0] == 0
    assert invoke("ingest", str(folder / "office.md"), "-c", "kb", "--public")[0] == 0  # else it takes [hr]

    def listed(*who: str) -> set[str]:
        code, out, err = invoke("docs", "list", "-c", "kb", "--json", *who)
        assert code == 0, err
        return {Path(d["uri"]).name for d in json.loads(out)}

    assert listed() == {"pay.md", "office.md"}
    assert listed("--as-group", "eng") == {"office.md"} and listed("--as-group", "hr") == {"pay.md", "office.md"}
    code, _, err = invoke("docs", "show", str(folder / "pay.md"), "-c", "kb", "--as-user", "eve", "--as-group", "eng")
    assert code == 2 and "no document" in err
    assert invoke("docs", "rm", str(folder / "pay.md"), "-c", "kb", "--as-group", "eng", "--yes")[0] == 1  # kept
    assert listed() == {"pay.md", "office.md"}
    assert invoke("search", "salary bands", "-c", "kb", "--as-group", "hr", "--json")[0] == 0
    code, out, _ = invoke("traces", "list", "--limit", "5", "--as-user", "eve", "--as-group", "eng", "--json")
    assert code == 0 and "salary" not in out.lower()  # an hr member's trace, with hr's chunk in it
    code, out, _ = invoke("traces", "list", "--limit", "5", "--json")
    assert code == 0 and "salary bands" in out.lower()
