"""BM25 statistics and ACLs (issue 14): what a principal sees of a search says nothing about the
documents it cannot read.

With ``bm25_statistics = "visible"`` (the default) N, avgdl and df count only the chunks the
principal can read, summed over the ACL classes it can read (migration 007). The reference is the
isolation a deployment could otherwise buy with one collection per tenant: a collection holding
only those documents must give the same scores, after any sequence of writes.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from psycopg.conninfo import make_conninfo

from ragtune import LoadedDocument, Principal
from ragtune.engine import Ragtune
from ragtune.errors import ConfigError, QueryError
from ragtune.retrieve.searcher import SearchOptions
from ragtune.settings import Settings
from ragtune.store.database import load_migrations
from tests.helpers import check_index_consistency

WORDS = ("budget", "review", "salary", "roadmap", "deploy", "kernel", "otter", "river", "forest", "quarter",
         "hiring", "policy", "design", "launch", "audit", "ledger")
SECRET = "HRSECRETOTTER"
ENG = Principal("eve", frozenset({"eng"}))
HR = Principal("hal", frozenset({"hr"}))


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


_VECTORS: dict[str, Any] = {}


def ranked(rt: Ragtune, query: str, collection: str, principal: Principal, mode: str = "bm25",
           **options: Any) -> list[tuple[str, float, dict[str, float]]]:
    if mode != "bm25" and query not in _VECTORS:  # each query embedded once per session
        _VECTORS[query] = rt.embedder.embed_batch([query])[0]
    hits = rt.search(query, collection=collection, mode=mode, top_k=50, principal=principal,
                     query_vector=_VECTORS.get(query) if mode != "bm25" else None, **options).hits
    return [(h.uri, h.score, h.scores_by_source) for h in hits]


def assert_same_hits(a: list[tuple[str, float, dict[str, float]]], b: list[tuple[str, float, dict[str, float]]],
                     tol: float = 1e-9) -> None:
    """Same chunks with the same scores; equal scores summed in another order may differ in the
    last bits and swap places, so ranks are compared by score."""
    assert [s for _, s, _ in a] == pytest.approx([s for _, s, _ in b], rel=tol, abs=tol)
    assert {u for u, _, _ in a} == {u for u, _, _ in b}
    by_uri = {u: (s, by) for u, s, by in b}
    for uri, score, by_source in a:
        assert score == pytest.approx(by_uri[uri][0], rel=tol, abs=tol), uri
        assert by_source == pytest.approx(by_uri[uri][1], rel=tol, abs=tol), uri


def test_the_setting_is_validated() -> None:
    assert Settings().retrieval.bm25_statistics == "visible"
    assert SearchOptions().bm25_statistics == "visible"
    with pytest.raises(ConfigError, match="bm25_statistics='everything'"):
        Settings.of(bm25_statistics="everything")
    with pytest.raises(QueryError, match="bm25_statistics"):
        SearchOptions(bm25_statistics="everything")
    assert SearchOptions.from_settings(Settings.of(bm25_statistics="global")).bm25_statistics == "global"


@pytest.mark.parametrize("mode", ["bm25", "hybrid"])
def test_a_hidden_document_moves_no_visible_score(rt: Ragtune, mode: str) -> None:
    """The attack: an eng key that can see (or write) a document holding a word learns from its
    score whether hr documents hold the word too. With visible statistics the eng key's hits,
    scores and traces are the same whether or not such an hr document exists; with global
    statistics (the control that shows the test can fail) they are not."""
    rng = random.Random(3)
    rt.ingest_documents([LoadedDocument(uri=f"pub{i}", text=sentence(rng, 6 + i)) for i in range(6)], collection="c")
    rt.ingest_documents([LoadedDocument(uri=f"eng{i}", text=sentence(rng, 5 + 2 * i)) for i in range(4)]
                        + [LoadedDocument(uri="eng-planted", text=f"{SECRET} budget review otter.")],
                        collection="c", acl=["eng"])
    queries = [f"{SECRET} budget", "budget review otter", SECRET.lower(), "salary ledger quarter"]

    def observe(statistics: str) -> tuple[list[Any], list[dict[str, Any]]]:
        results, traces = [], []
        for q in queries:
            results.append(ranked(rt, q, "c", ENG, mode, bm25_statistics=statistics))
            row = rt.traces.visible(Principal.system(), limit=1)[0]
            traces.append({"params": row["params"], "results": row["results"],
                           "timing_keys": sorted(row["timings_ms"])})
        return results, traces

    before, traces_before = observe("visible")
    global_before, _ = observe("global")
    assert before == global_before  # nothing hidden yet: the same numbers
    assert any(uri == "eng-planted" for uri, _, _ in before[0])
    # hr's document holds the secret word, words the eng documents hold, and is long (avgdl moves)
    rt.ingest_documents([LoadedDocument(uri="hr-secret", text=f"{SECRET} {SECRET} budget budget salary "
                                        + sentence(rng, 40))], collection="c", acl=["hr"])
    rt.ingest_documents([LoadedDocument(uri="hr-other", text=sentence(rng, 9))], collection="c", acl=["hr", "legal"])
    after, traces_after = observe("visible")
    for a, b in zip(after, before, strict=True):
        assert_same_hits(a, b, tol=1e-12)
    for a, b in zip(traces_after, traces_before, strict=True):
        assert "bm25_postings" not in a["params"]
        assert a["params"] == b["params"]
        assert a["timing_keys"] == b["timing_keys"]
        assert [r["chunk_id"] for r in a["results"]] == [r["chunk_id"] for r in b["results"]]
        assert [r["score"] for r in a["results"]] == pytest.approx([r["score"] for r in b["results"]], rel=1e-12)
    global_after, _ = observe("global")
    assert global_after != global_before, "global statistics should reveal the hidden document"
    planted = {u: s for u, s, _ in global_after[0]}["eng-planted"]
    assert planted != pytest.approx({u: s for u, s, _ in global_before[0]}["eng-planted"], rel=1e-6)
    # hr itself sees its document
    assert "hr-secret" in {u for u, _, _ in ranked(rt, SECRET, "c", HR, mode)}
    check_index_consistency(rt)


def test_traces_and_responses_carry_no_count_over_all_chunks(rt: Ragtune) -> None:
    rt.ingest_documents([LoadedDocument(uri="p", text="budget review")], collection="t")
    rt.ingest_documents([LoadedDocument(uri="h", text="budget salary secret")], collection="t", acl=["hr"])
    for mode in ("bm25", "dense", "hybrid"):
        for principal in (ENG, Principal.system()):
            result = rt.search("budget salary", collection="t", mode=mode, principal=principal)
            params = rt.traces.visible(Principal.system(), limit=1)[0]["params"]
            assert set(params) == {"mode", "top_k", "fusion", "normalization", "dense_weight", "exact_scan",
                                   "ef_search", "bm25_statistics", "filters"}, params
            assert params["bm25_statistics"] == (None if mode == "dense" else
                                                 "global" if principal.admin else "visible")
            assert not any("posting" in key or "chunks" in key for key in result.timings_ms), result.timings_ms


def test_an_admin_and_a_principal_reading_everything_get_the_collection_statistics(rt: Ragtune) -> None:
    rng = random.Random(8)
    rt.ingest_documents([LoadedDocument(uri=f"a{i}", text=sentence(rng, 4 + i)) for i in range(5)], collection="g")
    rt.ingest_documents([LoadedDocument(uri=f"e{i}", text=sentence(rng, 10 + i)) for i in range(5)], collection="g",
                        acl=["eng"])
    rt.ingest_documents([LoadedDocument(uri=f"h{i}", text=sentence(rng, 3 + 3 * i)) for i in range(5)],
                        collection="g", acl=["hr"])
    everything = Principal("both", frozenset({"eng", "hr"}))
    for query in ("budget review", "otter otter river", "kernel audit ledger"):
        for mode in ("bm25", "hybrid"):
            admin = ranked(rt, query, "g", Principal.system(), mode)
            # the same code path as before the change: exactly today's numbers
            assert admin == ranked(rt, query, "g", Principal.system(), mode, bm25_statistics="global")
            assert_same_hits(ranked(rt, query, "g", everything, mode), admin, tol=1e-12)
            # and a principal reading less gets other scores for the same public chunks
        public = ranked(rt, query, "g", Principal(), "bm25")
        some = {u: s for u, s, _ in ranked(rt, query, "g", Principal.system(), "bm25") if u.startswith("a")}
        if public:
            assert [s for _, s, _ in public] != pytest.approx([some[u] for u, _, _ in public], rel=1e-6)


# -- visible statistics equal an isolated collection's, under any sequence of writes ----------------------

ACLS = ((), ("eng",), ("hr",), ("eng", "hr"), ("legal",), ("hr", "legal"))
PRINCIPALS = {"eng": Principal("e", frozenset({"eng"})), "hr": Principal("h", frozenset({"hr"})),
              "eng+legal": Principal("el", frozenset({"eng", "legal"})), "anonymous": Principal()}


def readable(acl: tuple[str, ...], principal: Principal) -> bool:
    return not acl or bool(set(acl) & principal.groups)


@pytest.fixture(scope="module")
def world(tmp_path_factory, pg_admin_url, template_db, embedder, cache_dir):  # type: ignore[no-untyped-def]
    """One engine on its own database for the property test; each example uses fresh collections."""
    name = f"iso_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    # near_duplicates="index": two examples may draw the same sentence; the statistics compared here
    # are those of every document put
    settings = Settings(data_dir=tmp_path_factory.mktemp("iso"), database_url=make_conninfo(pg_admin_url, dbname=name),
                        cache_dir=cache_dir).replace(near_duplicates="index")
    rt = Ragtune(settings, embedder=embedder)
    yield rt
    rt.close()
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


OPERATIONS = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 5), st.integers(0, 10_000), st.sampled_from(ACLS)),  # add or rewrite
    st.tuples(st.just("acl"), st.integers(0, 5), st.just(0), st.sampled_from(ACLS)),  # ACL-only change
    st.tuples(st.just("delete"), st.integers(0, 5), st.just(0), st.just(())),
    st.tuples(st.just("drop"), st.just(0), st.just(0), st.just(())),  # drop the collection and rebuild it
)


@given(ops=st.lists(OPERATIONS, min_size=1, max_size=9))
@hsettings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_visible_statistics_equal_an_isolated_collection(world: Ragtune, ops: list[tuple[str, int, int, Any]]) -> None:
    rt = world
    tag = uuid.uuid4().hex[:8]
    shared = f"shared-{tag}"
    isolated = {p: f"iso-{p.replace('+', '-')}-{tag}" for p in PRINCIPALS}
    docs: dict[str, tuple[str, tuple[str, ...]]] = {}  # uri -> (text, ACL)

    def put(collection: str, uri: str, text: str, acl: tuple[str, ...] | None) -> None:
        rt.ingest_documents([LoadedDocument(uri=uri, text=text)], collection=collection,
                            acl=None if acl is None else list(acl), change_acl=acl is not None)

    def mirror(uri: str) -> None:
        """Each isolated collection holds exactly the documents its principal can read (public there)."""
        for p, collection in isolated.items():
            if uri in docs and readable(docs[uri][1], PRINCIPALS[p]):
                put(collection, uri, docs[uri][0], ())
            elif uri in {d.uri for d in _documents(rt, collection)}:
                rt.delete([uri], collection=collection)

    for collection in (shared, *isolated.values()):
        rt.collection(collection, create=True)
    try:
        for op, index, seed, acl in ops:
            uri = f"d{index}"
            if op == "put":
                text = sentence(random.Random(seed), 3 + seed % 13)
                docs[uri] = (text, acl)
                put(shared, uri, text, acl)
                mirror(uri)
            elif op == "acl" and uri in docs:
                docs[uri] = (docs[uri][0], acl)
                put(shared, uri, docs[uri][0], acl)  # same text: only the ACL changes, nothing re-embedded
                mirror(uri)
            elif op == "delete" and uri in docs:
                del docs[uri]
                rt.delete([uri], collection=shared)
                mirror(uri)
            elif op == "drop":
                rt.drop_collection(shared)
                rt.collection(shared, create=True)
                for u, (text, a) in docs.items():
                    put(shared, u, text, a)
            for name, principal in PRINCIPALS.items():
                for query in ("budget review otter kernel", "salary salary ledger audit"):
                    for mode in ("bm25", "hybrid"):
                        got = ranked(rt, query, shared, principal, mode)
                        assert all(readable(docs[u][1], principal) for u, _, _ in got)
                        assert_same_hits(got, ranked(rt, query, isolated[name], Principal.system(), mode))
        check_index_consistency(rt)
    finally:
        for collection in (shared, *isolated.values()):
            rt.drop_collection(collection)


def _documents(rt: Ragtune, collection: str) -> list[Any]:
    return rt.documents(collection=collection)


def test_an_acl_change_moves_the_statistics_and_empties_classes(rt: Ragtune) -> None:
    rt.ingest_documents([LoadedDocument(uri="x", text="budget review otter"),
                         LoadedDocument(uri="y", text="kernel ledger")], collection="m", acl=["hr"])
    rt.ingest_documents([LoadedDocument(uri="z", text="budget audit")], collection="m", acl=["eng"])
    rt.ingest_documents([LoadedDocument(uri="x", text="budget review otter"),
                         LoadedDocument(uri="y", text="kernel ledger")], collection="m", acl=["eng"], change_acl=True)
    check_index_consistency(rt)
    with rt.db.connection() as conn:
        classes = conn.execute("SELECT k.acl, k.n_chunks FROM acl_classes k"
                               " JOIN collections c ON c.id = k.collection_id WHERE c.name = 'm'").fetchall()
    assert [(r["acl"], r["n_chunks"]) for r in classes] == [(["eng"], 3)]  # hr's class went with its last chunk
    rt.ingest_documents([LoadedDocument(uri=u, text=t) for u, t in (("x", "budget review otter"),
                                                                    ("y", "kernel ledger"), ("z", "budget audit"))],
                        collection="solo")
    assert_same_hits(ranked(rt, "budget otter", "m", ENG), ranked(rt, "budget otter", "solo", Principal.system()))
    assert ranked(rt, "budget otter", "m", HR) == []


def test_the_migration_backfill_equals_the_maintained_statistics(rt: Ragtune) -> None:
    """Migration 007 computes the classes from the rows of a database that had none; on a database
    whose classes were kept by every write it must give the same rows (both of its paths: a
    collection of one class, and one of several)."""
    rng = random.Random(2)
    rt.ingest_documents([LoadedDocument(uri=f"o{i}", text=sentence(rng, 5 + i)) for i in range(8)], collection="one")
    for acl in ((), ("eng",), ("hr", "legal")):
        rt.ingest_documents([LoadedDocument(uri=f"{'-'.join(acl)}{i}", text=sentence(rng, 4 + i)) for i in range(6)],
                            collection="many", acl=list(acl))
    rt.delete(["eng2", "o3"], collection="many")
    rt.delete(["o3"], collection="one")
    snapshot = ("SELECT c.name, k.acl, k.n_chunks, k.total_len, t.term, x.df FROM acl_classes k"
                " JOIN collections c ON c.id = k.collection_id JOIN acl_class_terms x ON x.class_id = k.id"
                " JOIN terms t ON t.id = x.term_id WHERE x.df > 0 ORDER BY 1, 2, 5")
    (migration,) = [m for m in load_migrations() if m.version == 7]
    with rt.db.connection() as conn:
        maintained = conn.execute(snapshot).fetchall()
        with conn.transaction():
            conn.execute("DROP TABLE acl_class_terms, acl_classes")
            conn.execute(migration.sql.encode())
        backfilled = conn.execute(snapshot).fetchall()
    assert len(maintained) > 50
    assert backfilled == maintained
    check_index_consistency(rt)


@pytest.mark.parametrize("k", [1, 3, 20])
def test_readable_hits_are_found_below_many_unreadable_ones(rt: Ragtune, k: int) -> None:
    """Visible statistics give a word rare in what eng reads but common in hr's documents a high
    idf, so hr's chunks outrank eng's by far: the candidates are checked in growing windows until
    k readable ones are found, and those are exactly an isolated collection's top k."""
    rng = random.Random(k)
    readable = [LoadedDocument(uri=f"eng{i}", text=f"otter {sentence(rng, 6 + i)}") for i in range(5)]
    rt.ingest_documents(readable, collection="crowd", acl=["eng"])
    rt.ingest_documents([LoadedDocument(uri=f"hr{i}", text="otter otter otter budget.") for i in range(700)],
                        collection="crowd", acl=["hr"])
    rt.ingest_documents(readable, collection="crowd-iso")
    got = rt.search("otter budget", collection="crowd", mode="bm25", top_k=k, principal=ENG).hits
    want = rt.search("otter budget", collection="crowd-iso", mode="bm25", top_k=k, principal=Principal.system()).hits
    assert_same_hits([(h.uri, h.score, h.scores_by_source) for h in got],
                     [(h.uri, h.score, h.scores_by_source) for h in want])
    assert len(got) == min(k, len(readable))


def test_concurrent_writers_keep_the_class_statistics_exact(rt: Ragtune) -> None:
    """Writers of one collection (adds, rewrites, ACL-only changes, deletes) in parallel threads:
    every writer locks the collection first, so the class statistics end exact and none deadlocks."""
    import threading

    rng = random.Random(4)
    texts = [sentence(rng, 4 + i % 9) for i in range(24)]
    # embedded once here, so the threads only store (their embeddings come from the cache)
    rt.ingest_documents([LoadedDocument(uri=f"w{i}", text=t) for i, t in enumerate(texts)], collection="warm")
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        local = random.Random(seed)
        try:
            for _ in range(12):
                uri = f"t{seed}-{local.randrange(4)}"
                op = local.random()
                acl = list(local.choice(ACLS))
                if op < 0.5:
                    rt.ingest_documents([LoadedDocument(uri=uri, text=local.choice(texts))], collection="busy",
                                        acl=acl, change_acl=True)
                elif op < 0.8 and uri in {d.uri for d in rt.documents(collection="busy")}:
                    rt.ingest_documents([LoadedDocument(uri=uri, text=rt.document(uri, collection="busy")[1])],
                                        collection="busy", acl=acl, change_acl=True)  # ACL only
                else:
                    rt.delete([uri], collection="busy")
        except BaseException as exc:  # reported below
            errors.append(exc)

    rt.collection("busy", create=True)
    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    check_index_consistency(rt)
