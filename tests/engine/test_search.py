"""Search against the real PostgreSQL and embedder: BM25 exactness (against bm25s), filters,
access control (property-based), selective filters, and SQL-looking input treated as data."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from ragtune import Filter, LoadedDocument, Principal
from ragtune.engine import Ragtune
from ragtune.errors import NotFoundError, QueryError
from ragtune.ingest.lexical import LexicalAnalyzer
from tests.helpers import check_index_consistency

WORDS = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
)
GROUPS = ("hr", "eng", "legal", "sales")


def sentence(rng: random.Random, n: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def test_bm25_scores_equal_bm25s(rt: Ragtune) -> None:
    import bm25s
    import Stemmer

    rng = random.Random(7)
    texts = [sentence(rng, rng.randint(3, 30)) for _ in range(120)]
    rt.ingest_documents([LoadedDocument(uri=f"d{i}", text=t) for i, t in enumerate(texts)], collection="bm")
    rt.delete(["d3", "d50", "d77"], collection="bm")  # statistics must stay exact after deletes
    rt.ingest_documents([LoadedDocument(uri="d10", text="alpha alpha alpha kilo.")], collection="bm")  # update
    live = {f"d{i}": t for i, t in enumerate(texts) if i not in (3, 50, 77)}
    live["d10"] = "alpha alpha alpha kilo."
    uris = sorted(live)
    retriever = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    stemmer = Stemmer.Stemmer("english")
    retriever.index(
        bm25s.tokenize([live[u] for u in uris], stopwords="en", stemmer=stemmer, show_progress=False),
        show_progress=False,
    )
    for query in ("alpha kilo", "tango tango romeo", "november oscar papa quebec", "echo"):
        tokens = bm25s.tokenize([query], stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)[0]
        expected = retriever.get_scores(tokens)
        got = {h.uri: h.score for h in rt.search(query, collection="bm", mode="bm25", top_k=200).hits}
        for uri, score in zip(uris, expected, strict=True):
            assert got.get(uri, 0.0) == pytest.approx(float(score), rel=1e-4, abs=1e-5), (query, uri)
    check_index_consistency(rt)


def assert_same_ranking(a: list, b: list) -> None:  # type: ignore[type-arg]
    """Same scores rank by rank, and each chunk the same score. Equal scores summed in another
    order may differ in the last bit and swap places (even across the k-th place), so chunks in
    only one list must tie with the last score."""
    assert [h.score for h in a] == pytest.approx([h.score for h in b], rel=1e-9, abs=1e-12)
    sa, sb = {h.uri: h for h in a}, {h.uri: h for h in b}
    for uri in sa.keys() & sb.keys():
        assert sa[uri].scores_by_source == pytest.approx(sb[uri].scores_by_source, rel=1e-9, abs=1e-12)
    for uri in sa.keys() ^ sb.keys():
        assert (sa.get(uri) or sb[uri]).score == pytest.approx(a[-1].score, rel=1e-9, abs=1e-12)


def sql_bm25(rt: Ragtune, collection: str, query: str, k: int, filters: list[Filter],
             principal: Principal) -> list[tuple[str, float]]:
    """BM25 top-k summed over the plain postings rows, in SQL: an independent check of the
    packed blocks summed in numpy. N, avgdl and df are counted from the rows of the chunks the
    principal can read (``bm25_statistics = "visible"``; metadata filters do not narrow them)."""
    from psycopg import sql

    from ragtune.retrieve.filters import compile_conditions

    info = rt.repo.collection(collection)
    terms = rt.searcher.analyzer.term_counts(query)
    cond = compile_conditions(filters, principal)
    readable = compile_conditions([], principal)
    k1, b = rt.settings.retrieval.bm25_k1, rt.settings.retrieval.bm25_b
    statement = sql.SQL(
        "WITH r AS MATERIALIZED (SELECT c.id, c.lex_len FROM chunks c WHERE c.collection_id = %s AND {readable}),"
        " s AS (SELECT count(*) AS n_chunks, sum(lex_len) AS total_len FROM r),"
        " q AS (SELECT t.id, x.n * ln(1 + (s.n_chunks - f.df + 0.5) / (f.df + 0.5)) AS w,"
        "  s.total_len::float8 / s.n_chunks AS avgdl"
        "  FROM unnest(%s::text[], %s::int[]) AS x(term, n) JOIN terms t ON t.term = x.term AND t.collection_id = %s"
        "  CROSS JOIN s CROSS JOIN LATERAL (SELECT count(*) AS df FROM postings p JOIN r ON r.id = p.chunk_id"
        "   WHERE p.term_id = t.id) f WHERE f.df > 0)"
        " SELECT d.uri, sum(q.w * p.tf / (p.tf + {k1} * (1 - {b} + {b} * p.dl / q.avgdl))) AS score"
        " FROM q JOIN postings p ON p.term_id = q.id JOIN chunks c ON c.id = p.chunk_id"
        " JOIN documents d ON d.id = c.document_id WHERE {cond}"
        " GROUP BY c.id, d.uri ORDER BY score DESC, c.id LIMIT {limit}"
    ).format(k1=sql.Literal(k1), b=sql.Literal(b), cond=cond.sql, readable=readable.sql, limit=sql.Literal(k))
    with rt.db.connection() as conn:
        rows = conn.execute(statement, [info.id, *readable.params, list(terms), list(terms.values()), info.id,
                                        *cond.params]).fetchall()
    return [(r["uri"], float(r["score"])) for r in rows]


def test_bm25_from_packed_blocks_equals_sql_over_postings(settings, embedder) -> None:  # type: ignore[no-untyped-def]
    """The packed posting blocks, kept through adds, replacements and deletes, give the same
    BM25 top-k as summing the postings rows in SQL, also under filters and ACL; each block is
    exactly the postings of its chunk-id range (check_index_consistency)."""
    rng = random.Random(5)
    rt = Ragtune(settings, embedder=embedder)
    try:
        docs = [LoadedDocument(uri=f"d{i}", text=sentence(rng, rng.randint(4, 40)), metadata={"n": i % 3})
                for i in range(400)]
        rt.ingest_documents(docs[:200], collection="s")
        with rt.db.connection() as conn:  # chunk ids spread over millions: numpy's sparse summing path
            conn.execute("SELECT setval('chunks_id_seq', nextval('chunks_id_seq') + 3000000)")
        rt.ingest_documents(docs[200:], collection="s", acl=["eng"])
        rt.ingest_documents([LoadedDocument(uri=f"d{i}", text=sentence(rng, 9), metadata={"n": 1})
                             for i in range(0, 400, 7)], collection="s")  # replaced: their blocks re-packed
        rt.delete([f"d{i}" for i in range(3, 400, 11)], collection="s")
        check_index_consistency(rt)
        principals = [Principal.system(), Principal("p", {"eng"}), Principal("q", {"hr"})]
        compared = 0
        for _ in range(30):
            query = " ".join(rng.sample(WORDS, rng.randint(1, 5)))
            filters = [Filter("n", "eq", rng.randint(0, 2))] if rng.random() < 0.5 else []
            principal = rng.choice(principals)
            k = rng.choice([1, 10, 50, 400])
            got = rt.search(query, collection="s", mode="bm25", top_k=k, filters=filters, principal=principal).hits
            expected = sql_bm25(rt, "s", query, k, filters, principal)
            assert [h.score for h in got] == pytest.approx([s for _, s in expected], rel=1e-9, abs=1e-12)
            # equal scores may swap places; every chunk scores the same either way
            by_uri = dict(expected)
            for h in got:
                if h.uri in by_uri:
                    assert h.score == pytest.approx(by_uri[h.uri], rel=1e-9, abs=1e-12)
                else:
                    assert h.score == pytest.approx(expected[-1][1], rel=1e-9, abs=1e-12)
            compared += len(got)
        assert compared > 1000
    finally:
        rt.close()


def test_lexical_analyzer_matches_bm25s_tokenisation() -> None:
    import bm25s
    import Stemmer

    text = "The Normans' 10th-century conquests; running, RAN, runs: it's Don't DROP TABLE x;-- naïve café"
    ours = LexicalAnalyzer().terms(text)
    theirs = bm25s.tokenize(
        [text], stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=False, show_progress=False
    )[0]
    assert ours == theirs


@pytest.fixture(scope="module")
def acl_world(tmp_path_factory, pg_admin_url, template_db, embedder, cache_dir):  # type: ignore[no-untyped-def]
    """One collection of 60 documents with random ACLs and metadata, shared by the property test."""
    import uuid

    import psycopg
    from psycopg.conninfo import make_conninfo

    from ragtune.settings import Settings

    name = f"acl_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    settings = Settings.of(
        data_dir=tmp_path_factory.mktemp("acl"),
        database_url=make_conninfo(pg_admin_url, dbname=name),
        cache_dir=cache_dir,
        exact_scan_threshold=10,
    )
    rt = Ragtune(settings, embedder=embedder)
    rng = random.Random(11)
    acl_of: dict[str, tuple[str, ...]] = {}
    for i in range(60):
        acl = tuple(sorted(rng.sample(GROUPS, rng.randint(0, 2))))
        uri = f"doc{i}"
        acl_of[uri] = acl
        rt.ingest_documents(
            [LoadedDocument(uri=uri, text=sentence(rng, 20), metadata={"n": i})],
            acl=acl,
            metadata={"dept": rng.choice(["a", "b", "c"]), "year": 2000 + i % 10},
        )
    with rt.db.connection() as conn:
        uri_of_chunk = {r["id"]: r["uri"] for r in conn.execute(
            "SELECT c.id, d.uri FROM chunks c JOIN documents d ON d.id = c.document_id").fetchall()}
    # the same engine over HTTP, with one read key per set of groups (made when first asked for)
    from ragtune.server.app import create_app
    from ragtune.server.auth import KeyStore
    from ragtune.testing.serve import serve_in_thread

    keys: dict[frozenset[str], str] = {}

    def http(groups: frozenset[str], path: str, body: dict) -> dict:  # type: ignore[type-arg]
        if groups not in keys:
            keys[groups] = KeyStore(rt.db).create("p", groups=sorted(groups), scopes=["read"]).key
        response = httpx.post(url + path, json=body, headers={"Authorization": f"Bearer {keys[groups]}"}, timeout=60)
        assert response.status_code in (200, 404), response.text
        return response.json() if response.status_code == 200 else {"hits": [], "sources": []}

    with serve_in_thread(create_app(rt, settings.replace(server={"rate_limit": 0}), auth=True), settings) as url:
        yield rt, acl_of, uri_of_chunk, http
    rt.close()


@given(
    groups=st.frozensets(st.sampled_from((*GROUPS, "nobody"))),
    mode=st.sampled_from(["dense", "bm25", "hybrid"]),
    words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=4),
    dept=st.none() | st.sampled_from(["a", "b", "c", "x' OR '1'='1"]),
    year_min=st.none() | st.integers(1995, 2012),
    top_k=st.integers(1, 30),
)
@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_acl_never_leaks(acl_world, groups, mode, words, dept, year_min, top_k) -> None:  # type: ignore[no-untyped-def]
    """Search, documents, single documents, traces, and search and ask through the Python API and
    HTTP alike (the parity paths): nothing outside the principal's groups, ever."""
    rt, acl_of, uri_of_chunk, http = acl_world
    filters = []
    if dept is not None:
        filters.append(Filter("dept", "eq", dept))
    if year_min is not None:
        filters.append(Filter("year", "gte", year_min))
    # one id per set of groups, as an API key has: a principal always sees its own traces
    principal = Principal("p:" + ",".join(sorted(groups)), groups)
    hits = rt.search(" ".join(words), mode=mode, top_k=top_k, filters=filters, principal=principal).hits
    visible = {u for u, acl in acl_of.items() if not acl or set(acl) & groups}
    assert {d.uri for d in rt.documents(principal=principal, limit=1000)} == visible
    for uri in sorted(set(acl_of) - visible)[:3]:
        with pytest.raises(NotFoundError):
            rt.document(uri, principal=principal)
    for trace in rt.traces.visible(principal, limit=200):
        shown = {uri_of_chunk.get(r["chunk_id"]) for r in trace["results"]}
        assert shown <= visible, (trace["id"], shown - visible, groups)
    for h in hits:
        assert h.uri in visible, (h.uri, acl_of[h.uri], groups)
        if dept is not None:
            assert h.metadata["dept"] == dept
        if year_min is not None:
            assert h.metadata["year"] >= year_min
    assert len(hits) <= top_k
    wire_filters = [{"key": f.key, "op": f.op, "value": f.value} for f in filters]
    over_http = http(groups, "/collections/default/search",
                     {"query": " ".join(words), "mode": mode, "top_k": top_k, "filters": wire_filters})
    assert [(h["uri"], h["chunk_id"]) for h in over_http["hits"]] == [(h.uri, h.chunk.id) for h in hits]
    answer = rt.ask(" ".join(words), mode=mode, filters=filters, principal=principal, generator="extractive")
    asked = http(groups, "/collections/default/ask",
                 {"question": " ".join(words), "mode": mode, "filters": wire_filters, "generator": "extractive"})
    assert {h.uri for h in answer.hits} <= visible and {c.uri for c in answer.citations} <= visible
    assert [s["uri"] for s in asked["sources"]] == [h.uri for h in answer.hits]
    if mode == "dense":  # dense ranks every visible matching chunk, so it must fill k when it can
        matching = [u for u in visible]
        if dept is None and year_min is None:
            assert len(hits) == min(top_k, len(matching))


@pytest.mark.parametrize("threshold", [0, 100_000], ids=["hnsw-iterative", "exact"])
def test_selective_filter_still_returns_k_hits(settings, embedder, threshold: int) -> None:
    rng = random.Random(3)
    with Ragtune(settings.replace(exact_scan_threshold=threshold), embedder=embedder) as rt:
        docs = [
            LoadedDocument(uri=f"r{i}", text=sentence(rng, 15), metadata={"bucket": i % 50, "i": i}) for i in range(600)
        ]
        rt.ingest_documents(docs, collection="sel")
        for mode in ("dense", "hybrid", "bm25"):
            hits = rt.search("alpha bravo charlie", collection="sel", mode=mode, top_k=10, filters={"bucket": 7}).hits
            assert len(hits) == 10, (mode, len(hits))  # 12 of 600 documents match
            assert all(h.metadata["bucket"] == 7 for h in hits)
        trace = rt.traces.visible(Principal.system(), kind="search", limit=1)[0]
        assert trace["params"]["filters"] == [{"key": "bucket", "op": "eq", "value": 7}]


def test_filters_equality_membership_ranges_and_lists(rt: Ragtune) -> None:
    docs = [
        LoadedDocument(
            uri="a",
            text="quarterly report revenue",
            metadata={"team": "fin", "year": 2021, "date": "2021-03-01", "tags": ["q1", "pub"]},
        ),
        LoadedDocument(
            uri="b",
            text="quarterly report hiring",
            metadata={"team": "hr", "year": 2023, "date": "2023-06-15", "tags": ["q2"]},
        ),
        LoadedDocument(
            uri="c",
            text="quarterly report legal",
            metadata={"team": "legal", "year": "2024", "date": "not a date", "tags": []},
        ),
    ]
    rt.ingest_documents(docs)

    def uris(*filters: Filter | str) -> set[str]:
        return {h.uri for h in rt.search("quarterly report", mode="bm25", filters=list(filters)).hits}

    assert uris("team=fin") == {"a"}
    assert uris("team=fin|hr") == {"a", "b"}
    assert uris("team!=fin") == {"b", "c"}
    assert uris("year>=2022") == {"b"}  # "2024" is a string, not a number: no range match
    assert uris("year=2024") == {"c"}  # but equality matches its spelling
    assert uris("date>=2021-01-01", "date<2022-01-01") == {"a"}
    assert uris(Filter("date", "gt", dt.date(2022, 1, 1))) == {"b"}
    assert uris("tags=q1") == {"a"}
    assert uris("missing=1") == set()
    with pytest.raises(QueryError):
        Filter.parse("year>=soon")
    with pytest.raises(QueryError):
        Filter.parse("no operator here")


SQLISH = [
    "'; DROP TABLE chunks; --",
    "x' OR '1'='1",
    '"; DELETE FROM documents WHERE 1=1; --',
    "$$; SELECT pg_sleep(10); $$",
    "robert'); DROP TABLE students;--",
]


@pytest.mark.parametrize("evil", SQLISH)
def test_sql_like_text_is_data(rt: Ragtune, evil: str, tmp_path: Path) -> None:
    rt.ingest_documents(
        [LoadedDocument(uri=f"evil-{evil}", text=f"note about {evil} injection", metadata={evil: evil, "kind": evil})],
        acl=[evil],
    )
    rt.ingest_documents([LoadedDocument(uri="plain", text="plain note about injection")])
    for mode in ("dense", "bm25", "hybrid"):
        query = f"note {evil}"  # "note" so that BM25 has a term even when every SQL-ish token is a stop word
        res = rt.search(
            query, mode=mode, filters=[Filter(evil, "eq", evil)], principal=Principal("x", frozenset({evil}))
        )
        assert [h.uri for h in res.hits] == [f"evil-{evil}"], mode
        res = rt.search(query, mode=mode, filters={"kind": evil}, principal=Principal())  # anonymous: ACL hides it
        assert res.hits == []
    assert len(rt.documents()) == 2
    assert rt.search("plain note", mode="bm25").hits[0].uri == "plain"
    check_index_consistency(rt)


def test_bad_query_arguments(rt: Ragtune) -> None:
    rt.ingest_documents([LoadedDocument(uri="x", text="something")])
    with pytest.raises(QueryError):
        rt.search("something", top_k=0)
    with pytest.raises(QueryError):
        rt.search("something", mode="fuzzy")
    with pytest.raises(QueryError):
        rt.search("   ")


def test_every_search_writes_a_trace(rt: Ragtune) -> None:
    rt.ingest_documents(
        [
            LoadedDocument(uri="t1", text="traces record every search"),
            LoadedDocument(uri="t2", text="another document entirely"),
        ]
    )
    res = rt.search("record search", mode="hybrid", principal=Principal("ann", frozenset({"eng"})))
    row = rt.traces.visible(Principal.system(), limit=1)[0]
    assert row["id"] == res.trace_id and row["query"] == "record search" and row["principal"] == "ann"
    assert row["groups"] == ["eng"] and row["params"]["mode"] == "hybrid"
    assert [r["chunk_id"] for r in row["results"]] == [h.chunk.id for h in res.hits]
    assert set(row["results"][0]["scores"]) == {"dense", "bm25"}
    assert {"embed", "dense", "bm25", "fuse", "fetch"} <= set(row["timings_ms"])


def test_hybrid_and_dense_use_their_own_ef_search(rt: Ragtune) -> None:
    rt.ingest_documents([LoadedDocument(uri="ef1", text="hnsw candidates for the fused list")])
    for mode, options, expected in [
        ("dense", {}, rt.settings.retrieval.hnsw_ef_search),
        ("hybrid", {}, rt.settings.retrieval.hybrid_ef_search),
        ("hybrid", {"hybrid_ef_search": 150}, 150),
        ("dense", {"ef_search": 40}, 40),
        ("bm25", {}, None),
    ]:
        rt.search("fused candidates", mode=mode, **options)
        assert rt.traces.visible(Principal.system(), limit=1)[0]["params"]["ef_search"] == expected, (mode, options)
    assert rt.settings.retrieval.hybrid_ef_search != rt.settings.retrieval.hnsw_ef_search
