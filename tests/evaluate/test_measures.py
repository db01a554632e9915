"""``ragtune eval retrieval --measures`` (issue 17): ir_measures names, each checked, a bad one named;
the default adds R@1 and P@1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.errors import ConfigError
from ragtune.evaluate.metrics import DEFAULT_MEASURES, measure_depth, parse_measures, retrieval_metrics
from tests.cli.runner import invoke
from tests.evaluate.test_eval_retrieval import beir_folder


@pytest.mark.parametrize(("text", "names"), [
    ("nDCG@10 R@1 P@1 RR@10", ("nDCG@10", "R@1", "P@1", "RR@10")),
    ("R@5,R@10, AP", ("R@5", "R@10", "AP")),
    ("  R@1  R@1 ", ("R@1",)),
    (["nDCG@10", " P@1 "], ("nDCG@10", "P@1")),
])
def test_measures_are_read_from_a_list(text: str | list[str], names: tuple[str, ...]) -> None:
    assert parse_measures(text) == names


@pytest.mark.parametrize(("text", "bad"), [
    ("nDCG@10 Recal@5", "Recal@5"),
    ("R@1 nDCG@ten", "nDCG@ten"),
    ("R@0", "R@0"),
    ("R@", "R@"),
])
def test_a_bad_measure_is_named(text: str, bad: str) -> None:
    with pytest.raises(ConfigError, match=f"measure '{bad}'"):
        parse_measures(text)
    with pytest.raises(ConfigError, match="no measures given"):
        parse_measures(" , ")


def test_the_default_adds_the_first_hit_and_the_depth_follows_the_cutoffs() -> None:
    assert DEFAULT_MEASURES == ("nDCG@10", "R@1", "P@1", "R@5", "R@10", "RR@10")
    # the first hit wrong, the second right: R@1 and P@1 are 0, R@5 is 1
    got = retrieval_metrics({"q": {"b": 1}}, {"q": {"a": 2.0, "b": 1.0}})
    assert (got["R@1"], got["P@1"], got["R@5"], got["RR@10"]) == (0.0, 0.0, 1.0, 0.5)
    assert measure_depth(("nDCG@10", "R@100", "P@1")) == 100
    assert measure_depth(("nDCG@10", "AP")) is None


def test_eval_retrieval_takes_measures(database_url: str, cache_dir: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", database_url)
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    folder = beir_folder(tmp_path / "geo")
    code, out, err = invoke("eval", "retrieval", "--dataset", f"beir:{folder}", "--modes", "bm25",
                            "--measures", "R@1 P@1 nDCG@3", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["measures"] == ["R@1", "P@1", "nDCG@3"]
    assert 0.8 <= result["modes"]["bm25"]["R@1"] <= 1.0  # each query has an obvious answer
    code, out, err = invoke("eval", "retrieval", "--dataset", f"beir:{folder}", "--measures", "nDCG@10 MAP@ten")
    assert code == 2 and "unknown retrieval measure 'MAP@ten'" in err, err
