"""``ragtune search`` with int8 query vectors (``[retrieval] query_embedder = "int8"``, issue 16): the
command runs in a fresh process, as a user's does, imports neither torch nor transformers nor
sentence-transformers, and ranks as the fp32 path does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ragtune.ingest.embedders import OnnxInt8Embedder, packaged_model_path
from tests.cli.runner import invoke

HEAVY = ("torch", "transformers", "sentence_transformers")
DOCS = {
    "leave.md": "# Parental leave\n\nParents get sixteen weeks of paid parental leave after a birth or adoption.\n",
    "expenses.md": "# Expenses\n\nTravel costs are reimbursed within thirty days of submitting the receipts.\n",
    "laptops.md": "# Laptops\n\nEvery laptop must use full-disk encryption and lock after five minutes.\n",
}
QUERIES = [  # (query, mode, the document it must rank first)
    ("how many weeks off do new mothers and fathers get", "dense", "leave.md"),
    ("when do I get my money back for a business trip", "dense", "expenses.md"),
    ("reimbursed travel receipts", "hybrid", "expenses.md"),
    ("disk encryption on company computers", "hybrid", "laptops.md"),
]


@pytest.fixture
def collection(env: dict[str, str], tmp_path: Path, cache_dir: Path) -> str:
    folder = tmp_path / "kb"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    code, _, err = invoke("ingest", str(folder), "--collection", "kb")
    assert code == 0, err
    # the int8 file the fast path reads: built once per cache (with torch, in this process)
    OnnxInt8Embedder(packaged_model_path(), cache_dir=cache_dir).warm_up()
    return "kb"


def _search(query: str, mode: str, env: dict[str, str], cwd: Path, **extra: str) -> tuple[dict, set[str]]:
    """The ``--json`` output of ``ragtune search`` in a new process, and the heavy modules it imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ragtune.cli.main", "search", query, "-c", "kb",
         "--mode", mode, "--json"],
        cwd=cwd, env={**env, **extra}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return json.loads(done.stdout), imported & set(HEAVY)


@pytest.mark.slow
def test_int8_queries_rank_the_right_document_first_without_torch(
        collection: str, env: dict[str, str], tmp_path: Path) -> None:
    for query, mode, expected in QUERIES:
        fast, heavy = _search(query, mode, env, tmp_path, RAGTUNE_RETRIEVAL_QUERY_EMBEDDER="int8")
        assert not heavy, f"the int8 query path imported {heavy}"
        assert fast["mode"] == mode and Path(fast["hits"][0]["uri"]).name == expected, (query, fast["hits"])
        reference, _ = _search(query, mode, env, tmp_path, RAGTUNE_RETRIEVAL_QUERY_EMBEDDER="embedder")  # fp32 queries
        assert [h["uri"] for h in fast["hits"]] == [h["uri"] for h in reference["hits"]], query
        for ours, theirs in zip(fast["hits"], reference["hits"], strict=True):
            assert ours["score"] == pytest.approx(theirs["score"], abs=0.05 if mode == "dense" else 0.3)


@pytest.mark.slow
def test_default_query_path_is_int8_and_the_empty_setting_the_collections_embedder(
        collection: str, env: dict[str, str], tmp_path: Path) -> None:
    """By default ("auto") a dense search embeds its query with the int8 build, without torch;
    ``query_embedder = "embedder"`` embeds it with the collection's fp32 model."""
    result, heavy = _search(QUERIES[0][0], "dense", env, tmp_path)
    assert not heavy and Path(result["hits"][0]["uri"]).name == QUERIES[0][2]
    result, heavy = _search(QUERIES[0][0], "dense", env, tmp_path, RAGTUNE_RETRIEVAL_QUERY_EMBEDDER="embedder")
    assert "sentence_transformers" in heavy
    assert Path(result["hits"][0]["uri"]).name == QUERIES[0][2]


def test_query_embedder_setting_is_checked() -> None:
    from ragtune.errors import ConfigError
    from ragtune.settings import Settings

    with pytest.raises(ConfigError, match="query_embedder"):
        Settings.of(query_embedder="fp16")
    assert Settings.of(query_embedder="int8").retrieval.query_embedder == "int8"
    assert Settings.of().retrieval.query_embedder == "auto"
