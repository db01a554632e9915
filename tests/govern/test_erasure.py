"""Erasure that follows lineage (issue 20, part 4) against the real PostgreSQL: a subject and a
document planted through every path (documents, chunks, the BM25 vocabulary, the embedding cache,
traces, feedback, a fine-tuning dataset, the pseudonym vault) are gone after one erasure, which its
own check and an independent search of every table confirm; a reranker trained on the collection is
listed for retraining; a request that matches nothing changes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ragtune.engine import Ragtune
from ragtune.errors import NotFoundError, PermissionDeniedError, QueryError
from ragtune.finetune.data.store import DatasetStore
from ragtune.finetune.data.versions import ImportOptions
from ragtune.govern.pii import Vault
from ragtune.models import Principal

SUBJECT = "jane.quist@example.org"
SURNAME = "Quistgaard"  # a rare word: only her documents put it in the BM25 vocabulary
PHONE = "+44 20 7946 0312"
QUOTED = "Jane Quistgaard leads the harbour logistics team and signs every shipping manifest herself."
ALICE = Principal("alice", frozenset({"staff"}))


@pytest.fixture(autouse=True)
def vault_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = "the key of this test's vault"
    monkeypatch.setenv(Vault.ENV, key)
    return key


def _all_text(rt: Ragtune) -> str:
    """Every text, JSON and array column of every table of ours, as one string (independent of the
    erasure's own check)."""
    with rt.db.connection() as conn:
        columns = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND data_type IN ('text', 'jsonb', 'ARRAY') AND table_name NOT LIKE 'spans\\_%'"
            " AND table_name NOT IN ('audit_events', 'erasures')").fetchall()
        parts = []
        for c in columns:
            rows = conn.execute(f'SELECT "{c["column_name"]}"::text AS v FROM "{c["table_name"]}"').fetchall()
            parts.extend(r["v"] or "" for r in rows)
    return "\n".join(parts)


def _plant(rt: Ragtune, tmp_path: Path) -> dict[str, Any]:
    docs = {
        "jane.md": f"# Harbour team\n\n{QUOTED} Write to {SUBJECT} or call {PHONE} about manifests.\n",
        "ferries.md": "# Ferries\n\nFerries to the island leave the harbour every two hours in summer.\n",
        "museum.md": "# Museum\n\nThe museum by the pier shows the history of the fishing fleet.\n",
    }
    for name, text in docs.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    rt.collection("harbour", create=True)
    rt.policies.set("harbour", '[pii.entities]\nPHONE_NUMBER = "pseudonymize"\n', Principal.system())
    report = rt.ingest(sorted(tmp_path.glob("*.md")), collection="harbour", acl=["staff"])
    assert report.added == 3 and not report.failed
    # traces naming her (a question), showing her chunk, and feedback on one of them
    rt.search(f"who is {SUBJECT}", collection="harbour", principal=ALICE)
    answer = rt.ask("Who signs the shipping manifests?", collection="harbour", generator="extractive",
                    principal=ALICE)
    rt.feedback(answer.trace_id or "", principal=ALICE, thumbs=-1, comment=f"ask {SUBJECT} directly")
    rt.search("ferries summer", collection="harbour", principal=ALICE)  # a trace not about her
    # a fine-tuning dataset quoting her document, and one row naming her
    rows = [{"messages": [{"role": "user", "content": "Who leads the harbour logistics team?"},
                          {"role": "assistant", "content": QUOTED}]},
            {"messages": [{"role": "user", "content": f"Email {SUBJECT} the manifest."},
                          {"role": "assistant", "content": "Sent."}]},
            {"messages": [{"role": "user", "content": "When do ferries leave?"},
                          {"role": "assistant", "content": "Every two hours in summer."}]}]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    store = DatasetStore(rt.db, cache_dir=rt.settings.resolved_cache_dir, audit=True)
    dataset = store.import_file(path, name="harbour-qa", options=ImportOptions(eval_fraction=0.0)).dataset
    rt.tracing.flush()
    return {"answer": answer, "dataset": dataset}


def test_a_subject_is_erased_everywhere_and_verified(rt: Ragtune, tmp_path: Path, vault_key: str) -> None:
    _plant(rt, tmp_path)
    token = Vault(vault_key).token("PHONE_NUMBER", PHONE)
    before = _all_text(rt)
    assert before.lower().count(SUBJECT) >= 5 and SURNAME.lower() in before.lower() and token in before

    dry = rt.erase(subject=SUBJECT, dry_run=True)
    assert [Path(d["uri"]).name for d in dry.documents] == ["jane.md"] and dry.erasure_id is None
    assert SUBJECT.lower() in _all_text(rt).lower()  # a dry run changes nothing
    with pytest.raises(PermissionDeniedError):
        rt.erase(subject=SUBJECT, principal=ALICE)

    report = rt.erase(subject=SUBJECT)
    assert report.clean, report.remaining
    counts = report.counts
    assert counts["documents"] == 1 and counts["chunks"] >= 1 and counts["embedding_cache"] >= 1
    assert counts["traces"] >= 2 and counts["feedback"] == 1
    assert counts["dataset_rows"] == 2  # the row naming her and the row quoting her document
    assert counts["pii_vault"] == 1 and counts["terms"] >= 1
    assert report.datasets == [{"dataset": "harbour-qa", "version": 1, "content_hash": report.datasets[0][
        "content_hash"], "rows": 2}]
    after = _all_text(rt)
    assert SUBJECT.lower() not in after.lower() and token not in after
    assert SURNAME.lower() not in after.lower()  # her document went, and her surname from the vocabulary
    assert "ferries" in after.lower()  # the rest stays
    assert rt.search("ferries summer", collection="harbour", principal=ALICE).hits
    # the receipt: in the audit log (the subject by its hash only) and checkable again
    [receipt] = [e for e in rt.audit.events() if e["action"] == "erasure"]
    assert SUBJECT not in json.dumps(receipt) and receipt["details"]["erasure"] == report.erasure_id
    assert rt.audit.verify().ok
    assert rt.verify_erasure(report.erasure_id or 0, subject=SUBJECT).clean
    with pytest.raises(QueryError, match="not the one"):
        rt.verify_erasure(report.erasure_id or 0, subject="someone.else@example.org")


def test_a_document_is_erased_with_the_rows_quoting_it_and_what_trained_on_it(rt: Ragtune, tmp_path: Path) -> None:
    from ragtune.retrieve.rerank import RERANKER
    from ragtune.store.artefacts import ArtefactStore, TrainingData

    planted = _plant(rt, tmp_path)
    store = ArtefactStore.of(rt.settings.data_dir, RERANKER, "harbour-rr")
    store.publish(lambda folder: (folder / "weights.bin").write_bytes(b"0"),
                  data=TrainingData("0" * 64, 10, "harbour", "by query hash"), metrics={}, thresholds={},
                  hyperparameters={}, fields={"collection": "harbour", "base_model": "test"})
    jane = next(d for d in rt.documents(collection="harbour") if d.uri.endswith("jane.md"))
    with rt.db.connection() as conn:
        chunk_ids = [r["id"] for r in conn.execute("SELECT id FROM chunks WHERE document_id = %s",
                                                   (jane.id,)).fetchall()]
    report = rt.erase(uri="*/jane.md", collection="harbour")
    assert report.clean, report.remaining
    assert [d["id"] for d in report.documents] == [jane.id]
    assert report.counts["dataset_rows"] == 1  # the row quoting her document (the one naming her stays)
    assert [(m["kind"], m["name"], m["action"]) for m in report.models] == [("reranker", "harbour-rr", "retrain")]
    with rt.db.connection() as conn:
        assert conn.execute("SELECT count(*) AS n FROM spans WHERE chunk_ids && %s::bigint[]",
                            (chunk_ids,)).fetchone()["n"] == 0
        assert conn.execute("SELECT count(*) AS n FROM spans WHERE trace_id = %s",
                            (planted["answer"].trace_id,)).fetchone()["n"] == 0
    assert QUOTED not in _all_text(rt)
    again = rt.verify_erasure(report.erasure_id or 0)
    assert again.clean and again.retained  # the receipts name the document, on purpose


def test_an_erasure_that_matches_nothing_is_refused_and_changes_nothing(rt: Ragtune, tmp_path: Path) -> None:
    _plant(rt, tmp_path)
    before = _all_text(rt)
    with pytest.raises(NotFoundError, match="matches no document"):
        rt.erase(document_ids=[987654])
    with pytest.raises(NotFoundError, match="no collection"):
        rt.erase(uri="*.md", collection="nowhere")
    with pytest.raises(QueryError):
        rt.erase(uri="*")
    with pytest.raises(QueryError):
        rt.erase(subject="ab")
    assert _all_text(rt) == before
    assert not [e for e in rt.audit.events() if e["action"] == "erasure"]
