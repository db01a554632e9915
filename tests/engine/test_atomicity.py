"""Crash and concurrency safety: a reader never sees a mix of versions, and kill -9 in the
middle of an ingest leaves whole documents only, after which a rerun completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psycopg
import pytest

from ragtune import LoadedDocument
from ragtune.engine import Ragtune
from tests.helpers import check_index_consistency


def version_text(tag: str, paragraphs: int = 6) -> str:
    return "\n\n".join(
        f"Zulu section {i} of the policy, revision {tag}, says item {i} is handled by desk {tag}{i}."
        for i in range(paragraphs)
    )


def test_concurrent_reader_never_sees_a_mix_of_versions(settings, embedder) -> None:
    # near_duplicates="index": the warm-up documents share the text under test on purpose
    with Ragtune(settings.replace(chunk_max_tokens=24, chunk_overlap_tokens=0, near_duplicates="index"),
                 embedder=embedder) as rt:
        texts = {tag: version_text(tag) for tag in ("va", "vb")}
        for tag in texts:  # warm the embedding cache so the writer loop is fast
            rt.ingest_documents([LoadedDocument(uri=f"warm-{tag}", text=texts[tag])])
        rt.ingest_documents([LoadedDocument(uri="policy", text=texts["va"])])
        n_chunks = len(rt.document("policy")[2])
        assert n_chunks >= 4
        stop = threading.Event()
        errors: list[str] = []
        seen_versions: set[str] = set()

        def writer() -> None:
            for i in range(30):
                rt.ingest_documents([LoadedDocument(uri="policy", text=texts["vb" if i % 2 == 0 else "va"])])
            stop.set()

        def reader() -> None:
            while not stop.is_set():
                for mode in ("bm25", "hybrid"):
                    hits = [
                        h
                        for h in rt.search("zulu section policy revision", mode=mode, top_k=100).hits
                        if h.uri == "policy"
                    ]
                    tags = {("vb" if "revision vb" in h.chunk.text else "va") for h in hits}
                    if len(tags) > 1:
                        errors.append(f"{mode}: mixed versions {tags}")
                    if mode == "bm25" and len(hits) != n_chunks:
                        errors.append(f"bm25: saw {len(hits)} of {n_chunks} chunks")
                    seen_versions.update(tags)

        threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors[:5]
        assert seen_versions == {"va", "vb"}
        assert rt.document("policy")[0].version == 31
        check_index_consistency(rt)


INGEST_SCRIPT = textwrap.dedent(
    """
    import sys
    from ragtune.engine import Ragtune
    from ragtune.settings import Settings
    from ragtune.ingest.embedders import make_embedder
    settings = Settings(data_dir=sys.argv[3], database_url=sys.argv[1], cache_dir=sys.argv[4])
    rt = Ragtune(settings, embedder=make_embedder("minilm", cache_dir=settings.resolved_cache_dir))
    rt.ingest([sys.argv[2]])
    print("finished")
    """
)


@pytest.mark.slow
def test_kill_9_mid_ingest_leaves_no_partial_document_and_rerun_completes(settings, embedder, tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    n = 1200
    for i in range(n):
        body = "\n\n".join(f"File {i} paragraph {j}: the {j}th note on topic {i * 7 % 13}." for j in range(3))
        (folder / f"f{i:04d}.md").write_text(f"# Note {i}\n\n{body}\n", encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            INGEST_SCRIPT,
            settings.database_url,
            str(folder),
            str(tmp_path / "d"),
            str(settings.resolved_cache_dir),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    done_before_kill = 0
    try:
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    done_before_kill = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
                except psycopg.errors.UndefinedTable:
                    done_before_kill = 0
                if done_before_kill >= 50:
                    break
                time.sleep(0.02)
        assert proc.poll() is None, f"ingest ended before the kill: {proc.communicate()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    with Ragtune(settings, embedder=embedder) as rt:
        check_index_consistency(rt)  # includes: no document without chunks, no orphan postings
        stored = rt.documents(limit=None)
        assert 50 <= len(stored) < n
        chunker = rt.chunker()
        for doc in stored[:: max(1, len(stored) // 40)]:
            _d, text, chunks = rt.document(doc.uri)
            expected = chunker.split(LoadedDocument(uri=doc.uri, text=text))
            assert [c.text for c in chunks] == [c.text for c in expected], doc.uri
        rerun = rt.ingest([folder])
        assert rerun.unchanged == len(stored) and rerun.added == n - len(stored) and not rerun.failed
        assert len(rt.documents(limit=None)) == n
        check_index_consistency(rt)
