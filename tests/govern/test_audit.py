"""The audit log (issue 20, part 3): every read and write appends a hash-chained event in the real
PostgreSQL; tampering with the rows directly in SQL is found by ``verify``, which names the
first broken link; a write whose event cannot be appended does not happen."""

from __future__ import annotations

import io
import json
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ragtune.engine import Ragtune
from ragtune.errors import QueryError
from ragtune.govern.audit import parse_anchor
from ragtune.models import Principal
from ragtune.settings import Settings

ALICE = Principal("alice", frozenset({"hr"}))


def _ingested(rt: Ragtune, tmp_path: Path) -> list[Path]:
    paths = []
    for i, text in enumerate(["Parental leave is sixteen weeks at full pay.",
                              "Expense claims are filed within thirty days.",
                              "The office closes at six on Fridays."]):
        path = tmp_path / f"doc{i}.md"
        path.write_text(f"# Policy {i}\n\n{text}\n", encoding="utf-8")
        paths.append(path)
    rt.ingest(paths, collection="policies", acl=["hr"])
    return paths


def _sql(rt: Ragtune, statement: str, *params: Any) -> None:
    with rt.db.transaction() as conn:
        conn.execute(statement, params)


def test_reads_and_writes_are_recorded_with_who_what_and_which_versions(rt: Ragtune, tmp_path: Path) -> None:
    paths = _ingested(rt, tmp_path)
    result = rt.search("parental leave", collection="policies", principal=ALICE)
    answer = rt.ask("How long is parental leave?", collection="policies", generator="extractive", principal=ALICE)
    document, _, _ = rt.document(str(paths[0]), collection="policies", principal=ALICE)
    assert rt.delete(str(paths[2]), collection="policies") == 1
    events = rt.audit.events()
    assert [e["action"] for e in events] == ["ingest", "search", "ask", "document.read", "delete"]
    ingest, search, ask, read, delete = events
    assert ingest["principal"] == "system" and ingest["collection"] == "policies"
    assert sorted(d["uri"] for d in ingest["documents"]) == sorted(str(p) for p in paths)
    assert all(len(d["hash"]) == 64 and d["change"] == "added" for d in ingest["documents"])
    # a search names the principal, the documents and the chunks it returned, and its trace
    assert search["principal"] == "alice" and search["details"]["trace_id"] == result.trace_id
    assert {c for d in search["documents"] for c in d["chunks"]} == {h.chunk.id for h in result.hits}
    assert "parental" not in json.dumps(search)  # the query's hash, not its text
    assert ask["details"]["trace_id"] == answer.trace_id
    assert {c for d in ask["documents"] for c in d["chunks"]} == {h.chunk.id for h in answer.hits}
    assert set(ask["details"]["cited"]) == {c.chunk_id for c in answer.citations} != set()
    assert read["documents"] == [{"id": document.id, "uri": document.uri, "hash": document.content_hash}]
    assert delete["documents"][0]["uri"] == str(paths[2]) and delete["details"] == {"asked": 1}
    assert all(e["origin"].startswith("python ") for e in events)
    assert [e["seq"] for e in events] == list(range(1, 6))
    assert rt.audit.verify().ok


def test_verify_names_the_first_broken_link_for_an_edit_a_deletion_and_a_reordering(
        rt: Ragtune, tmp_path: Path) -> None:
    _ingested(rt, tmp_path)
    for q in ("leave", "expenses", "office", "fridays", "claims"):
        rt.search(q, collection="policies", principal=ALICE)
    whole = rt.audit.verify()
    assert whole.ok and whole.checked == whole.head_seq == 6 and whole.head_hash is not None

    # an edited row: its content no longer gives its hash
    _sql(rt, "UPDATE audit_events SET principal = 'mallory' WHERE seq = 3")
    found = rt.audit.verify()
    assert not found.ok and found.broken_at == 3 and "altered" in (found.problem or "") and found.checked == 2
    _sql(rt, "UPDATE audit_events SET principal = 'alice' WHERE seq = 3")
    assert rt.audit.verify().ok  # put back as it was: whole again

    # an edit with its own hash recomputed: the next row no longer follows it
    _sql(rt, "UPDATE audit_events SET principal = 'mallory',"
             " hash = sha256(prev_hash || ragtune_audit_text(seq, at, 'mallory', key_id, origin, action, collection,"
             " documents, details)) WHERE seq = 3")
    found = rt.audit.verify()
    assert not found.ok and found.broken_at == 4 and "does not follow" in (found.problem or "")


def test_a_removed_row_and_swapped_rows_are_found(rt: Ragtune, tmp_path: Path) -> None:
    _ingested(rt, tmp_path)
    for q in ("leave", "expenses", "office", "fridays"):
        rt.search(q, collection="policies", principal=ALICE)
    with rt.db.connection() as conn:
        saved = [dict(r) for r in conn.execute("SELECT * FROM audit_events ORDER BY seq").fetchall()]

    _sql(rt, "DELETE FROM audit_events WHERE seq = 2")
    found = rt.audit.verify()
    assert not found.ok and found.broken_at == 2 and "missing" in (found.problem or "")

    # reordered: rows 3 and 4 change places (their sequence numbers swapped)
    _sql(rt, "DELETE FROM audit_events")
    columns = list(saved[0])
    with rt.db.transaction() as conn:
        for row in saved:
            swapped = {**row, "seq": {3: 4, 4: 3}.get(row["seq"], row["seq"])}
            conn.execute(f"INSERT INTO audit_events ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})",
                         [json.dumps(swapped[c]) if c in ("documents", "details") else swapped[c] for c in columns])
    found = rt.audit.verify()
    assert not found.ok and found.broken_at == 3


def test_an_anchor_catches_rows_cut_from_the_end(rt: Ragtune, tmp_path: Path) -> None:
    _ingested(rt, tmp_path)
    rt.search("leave", collection="policies", principal=ALICE)
    head = rt.audit.verify()
    anchor = parse_anchor(f"{head.head_seq}:{head.head_hash}")
    rt.search("office", collection="policies", principal=ALICE)
    assert rt.audit.verify(anchor=anchor).ok
    _sql(rt, "DELETE FROM audit_events WHERE seq >= %s", head.head_seq)
    assert rt.audit.verify().ok  # a chain cut short at its end looks whole on its own
    found = rt.audit.verify(anchor=anchor)
    assert not found.ok and found.broken_at == head.head_seq and "gone" in (found.problem or "")
    with pytest.raises(QueryError, match="SEQ:HASH"):
        parse_anchor("12:abc")


def test_a_write_whose_event_cannot_be_appended_does_not_happen(rt: Ragtune, tmp_path: Path) -> None:
    paths = _ingested(rt, tmp_path)
    # the log refuses every new row (a constraint only new rows are checked against)
    _sql(rt, "ALTER TABLE audit_events ADD CONSTRAINT refuse_all CHECK (false) NOT VALID")
    with pytest.raises(Exception, match="refuse_all"):
        rt.delete(str(paths[0]), collection="policies")
    assert len(rt.documents(collection="policies")) == 3  # nothing deleted
    with pytest.raises(Exception, match="refuse_all"):  # a read whose event fails returns nothing
        rt.search("leave", collection="policies", principal=ALICE)
    _sql(rt, "ALTER TABLE audit_events DROP CONSTRAINT refuse_all")
    assert rt.delete(str(paths[0]), collection="policies") == 1


def test_concurrent_appends_keep_one_unbroken_chain(rt: Ragtune, tmp_path: Path) -> None:
    _ingested(rt, tmp_path)
    errors: list[BaseException] = []

    def searches(n: int) -> None:
        try:
            for i in range(n):
                rt.search(f"leave {i}", collection="policies", principal=ALICE)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=searches, args=(15,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    verified = rt.audit.verify()
    assert verified.ok and verified.checked == 1 + 4 * 15


def test_export_writes_json_lines_that_hold_the_chain(rt: Ragtune, tmp_path: Path) -> None:
    _ingested(rt, tmp_path)
    rt.search("leave", collection="policies", principal=ALICE)
    out = io.StringIO()
    assert rt.audit.export(out) == 2
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["action"] for r in rows] == ["ingest", "search"]
    assert rows[1]["prev_hash"] == rows[0]["hash"] and rows[0]["prev_hash"] == "0" * 64
    later = io.StringIO()
    assert rt.audit.export(later, since=datetime.fromisoformat(rows[1]["at"])) == 1


def test_with_the_log_off_nothing_is_recorded(settings: Any, embedder: Any, tmp_path: Path) -> None:
    with Ragtune(settings.replace(audit=False), embedder=embedder) as rt:
        _ingested(rt, tmp_path)
        rt.search("leave", collection="policies", principal=ALICE)
        assert rt.audit.events() == [] and rt.audit.verify().checked == 0


def test_the_cli_verifies_lists_and_exports_and_fails_on_a_broken_chain(cli_env: Path) -> None:
    from tests.cli.runner import invoke

    doc = cli_env / "leave.md"
    doc.write_text("# Leave\n\nParental leave is sixteen weeks.\n", encoding="utf-8")
    assert invoke("ingest", str(doc))[0] == 0
    assert invoke("search", "parental leave")[0] == 0
    code, out, _ = invoke("audit", "verify")
    assert code == 0 and "ok" in out and "2 events" in out
    head = out.split("head ")[1].split()[0]
    code, out, _ = invoke("audit", "list", "--json")
    listed = json.loads(out)
    assert code == 0 and [e["action"] for e in listed] == ["ingest", "search"]
    assert all(e["origin"].startswith("cli ") for e in listed)
    code, out, _ = invoke("audit", "export", "-o", "audit.jsonl")
    assert code == 0 and len((cli_env / "audit.jsonl").read_text().splitlines()) == 2
    code, _, err = invoke("audit", "list", "--since", "yesterday")
    assert code == 2 and "--since 'yesterday'" in err
    assert invoke("audit", "verify", "--anchor", head)[0] == 0

    with Ragtune(Settings.load()) as rt:
        _sql(rt, "UPDATE audit_events SET collection = 'elsewhere' WHERE seq = 1")
    code, out, _ = invoke("audit", "verify")
    assert code == 1 and "broken" in out and "row 1" in out


def test_reads_audited_without_waiting_for_the_disk_are_chained_alike(settings: Any, embedder: Any,
                                                                      tmp_path: Path) -> None:
    with Ragtune(settings.replace(audit_reads="async"), embedder=embedder) as rt:
        _ingested(rt, tmp_path)
        rt.search("leave", collection="policies", principal=ALICE)
        rt.search("expenses", collection="policies", principal=ALICE)  # a read's event, not waiting for the disk:
        with rt.db.connection() as conn:  # that setting was its own transaction's, not left on the pool's connection
            assert conn.execute("SHOW synchronous_commit").fetchone()["synchronous_commit"] == "on"
        assert [e["action"] for e in rt.audit.events()] == ["ingest", "search", "search"] and rt.audit.verify().ok


def test_feedback_schedules_and_datasets_are_audited_in_their_own_transactions(rt: Ragtune, tmp_path: Path,
                                                                               cache_dir: Path) -> None:
    from ragtune.finetune.data.store import DatasetStore

    _ingested(rt, tmp_path)
    answer = rt.ask("How long is parental leave?", collection="policies", generator="extractive", principal=ALICE)
    rt.feedback(answer.trace_id or "", principal=ALICE, thumbs=-1, comment="too vague")
    made = rt.add_schedule(tmp_path, every_s=3600, collection="policies")
    rt.delete_schedule(made.id)
    store = DatasetStore(rt.db, cache_dir=cache_dir, audit=True)
    rows = tmp_path / "qa.jsonl"
    rows.write_text("".join(json.dumps({"instruction": f"Question {i}?", "output": f"Answer {i}."}) + "\n"
                            for i in range(12)), encoding="utf-8")
    imported = store.import_file(rows, name="qa").dataset
    store.remove("qa", principal=Principal.system())
    events = rt.audit.events()
    assert [e["action"] for e in events] == ["ingest", "ask", "feedback", "schedule.create", "schedule.delete",
                                             "dataset.import", "dataset.remove"]
    feedback = events[2]
    assert feedback["principal"] == "alice" and feedback["details"]["trace_id"] == answer.trace_id
    assert feedback["details"]["thumbs"] == -1 and feedback["details"]["comment"] is True
    assert "too vague" not in json.dumps(events)  # texts stay out of the log
    assert events[3]["details"]["schedule_id"] == made.id == events[4]["details"]["schedule_id"]
    assert events[5]["details"]["version"] == imported.version and events[5]["details"]["rows"] == 12
    assert rt.audit.verify().ok


def test_reading_a_trace_is_audited_with_the_chunks_it_shows(rt: Ragtune, tmp_path: Path) -> None:
    _ingested(rt, tmp_path)
    answer = rt.ask("How long is parental leave?", collection="policies", generator="extractive", principal=ALICE)
    shown = rt.trace(answer.trace_id or "", principal=ALICE)
    read = rt.audit.events(action="trace.read")
    assert [(e["principal"], e["details"]["trace_id"], e["details"]["kind"]) for e in read] == [
        ("alice", shown["id"], "ask")]
    assert set(read[0]["documents"][0]["chunks"]) == {h.chunk.id for h in answer.hits}
    with pytest.raises(Exception, match="no trace"):  # another's trace is not found, and not audited as read
        rt.trace(answer.trace_id or "", principal=Principal("bob", frozenset({"hr"})))
    assert len(rt.audit.events(action="trace.read")) == 1
