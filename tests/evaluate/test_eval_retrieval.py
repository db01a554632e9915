"""``ragtune eval retrieval`` on a BEIR-format folder, end to end (real database and model)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ragtune.cli.main import app
from ragtune.evaluate.retrieval import evaluate_retrieval
from tests.helpers import ProgressRecorder

TOPICS = {
    "d1": ("Volcano", "Magma rises through the crust and erupts as lava from volcanoes."),
    "d2": ("Glacier", "Glaciers are slow rivers of ice that carve valleys over millennia."),
    "d3": ("Coral", "Coral reefs grow in warm shallow seas and shelter many fish."),
    "d4": ("Desert", "Deserts receive less than 250 millimetres of rain in a year."),
    "d5": ("Tide", "Tides are caused by the gravitational pull of the moon on the oceans."),
}
QUERIES = {
    "q1": ("what erupts from a volcano", "d1"),
    "q2": ("how are valleys carved by ice", "d2"),
    "q3": ("where do coral reefs grow", "d3"),
    "q4": ("how much rain falls in a desert", "d4"),
    "q5": ("what causes the tides", "d5"),
}


def beir_folder(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for doc_id, (title, text) in TOPICS.items():
            fh.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as fh:
        for qid, (text, _doc) in QUERIES.items():
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, (_t, d) in QUERIES.items()]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_evaluate_retrieval_on_a_beir_folder(rt, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = beir_folder(tmp_path / "geo")
    result = evaluate_retrieval(rt, f"beir:{folder}")
    assert result["queries"] == 5 and result["corpus"] == 5
    for mode in ("bm25", "dense", "hybrid"):
        row = result["modes"][mode]
        assert row["nDCG@10"] > 0.9, (mode, row)  # each query has an obvious answer
        assert 0 < row["RR@10"] <= 1 and row["p50_ms"] > 0
    events = ProgressRecorder()
    again = evaluate_retrieval(rt, f"beir:{folder}", modes=["bm25", "dense"], progress=events)
    assert again["ingest"]["embedded"] == 0 and again["ingest"]["unchanged"] == 5
    # indexing's "documents" (the corpus size known), then the queries of every mode
    assert [(e.done, e.total) for e in events.of("documents")] == [(n, 5) for n in range(6)]
    queries = events.of("queries")
    assert [(e.done, e.total, e.detail) for e in queries] == [(n, 10, "bm25") for n in range(6)] + [
        (n, 10, "dense") for n in range(5, 11)]
    events.assert_monotone()


def test_eval_retrieval_cli_json(database_url: str, cache_dir: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", database_url)
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(cache_dir))
    folder = beir_folder(tmp_path / "geo")
    result = CliRunner().invoke(app, ["eval", "retrieval", "--dataset", f"beir:{folder}", "--modes", "bm25,hybrid",
                                      "--json"])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert set(payload["modes"]) == {"bm25", "hybrid"}
    assert payload["measures"] == ["nDCG@10", "R@1", "P@1", "R@5", "R@10", "RR@10"]
    bad = CliRunner().invoke(app, ["eval", "retrieval", "--dataset", "nonsense"])
    assert bad.exit_code == 2 and "unknown dataset" in bad.stderr
