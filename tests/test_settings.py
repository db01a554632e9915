"""Settings in sections: each section checks itself on construction; ragtune.toml tables, RAGTUNE_*
variables and keyword arguments reach every field by one rule each; the old flat layout is refused
with the new place named."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

import ragtune
from ragtune.errors import ConfigError
from ragtune.settings import (
    PROJECT_FIELDS,
    SECTIONS,
    GenerationSettings,
    IngestSettings,
    RetrievalSettings,
    ServerSettings,
    Settings,
    StoreSettings,
    TrainingSettings,
)


@pytest.fixture(autouse=True)
def clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No ragtune.toml in the working directory and no RAGTUNE_* variable but those a test sets."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("RAGTUNE_"):
            monkeypatch.delenv(name)
    return tmp_path


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ragtune.toml"
    path.write_text(text, encoding="utf-8")
    return path


# -- each section validates on construction --------------------------------------------------------------
@pytest.mark.parametrize(("section", "values", "message"), [
    (StoreSettings, {"statement_timeout": -1}, "store.statement_timeout=-1"),
    (StoreSettings, {"database_wait": 0}, "store.database_wait=0"),
    (IngestSettings, {"chunk_max_tokens": 0}, "ingest.chunk_max_tokens=0"),
    (IngestSettings, {"chunk_overlap_tokens": 256}, "ingest.chunk_overlap_tokens=256: must be at least 0 and under"),
    (IngestSettings, {"max_container_members": True}, "ingest.max_container_members=True: expected an integer"),
    (IngestSettings, {"max_expanded_bytes": 1.5}, "ingest.max_expanded_bytes=1.5: expected an integer"),
    (IngestSettings, {"embedder": " "}, "ingest.embedder"),
    (RetrievalSettings, {"candidates": 0}, "retrieval.candidates=0: must be over 0"),
    (RetrievalSettings, {"fusion": "sum"}, "retrieval.fusion='sum': must be one of convex, rrf"),
    (RetrievalSettings, {"hnsw_m": 40}, "retrieval.hnsw_ef_construction=64: must be at least twice hnsw_m (80)"),
    (RetrievalSettings, {"hybrid_dense_weight": float("nan")}, "retrieval.hybrid_dense_weight=nan: expected a number"),
    (RetrievalSettings, {"bm25_statistics": "everything"}, "retrieval.bm25_statistics='everything'"),
    (GenerationSettings, {"timeout": 0}, "generation.timeout=0"),
    (GenerationSettings, {"retries": 11}, "generation.retries=11"),
    (GenerationSettings, {"generator": ""}, "generation.generator=''"),
    (ServerSettings, {"port": 70000}, "server.port=70000: must be between 0 and 65535"),
    (ServerSettings, {"auth": "maybe"}, "server.auth='maybe': must be one of auto, on, off"),
    (ServerSettings, {"api_docs": "perhaps"}, "server.api_docs='perhaps': expected true or false"),
    (ServerSettings, {"port": "many"}, "server.port='many': expected an integer"),
    (TrainingSettings, {"promotion_gates": {"eval.loss": "sideways"}}, "training.promotion_gates.eval.loss"),
])
def test_each_section_refuses_a_bad_value_naming_it(section: type[Any], values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        section(**values)
    assert message in str(refused.value)


def test_sections_convert_text_as_toml_and_the_environment_give_it() -> None:
    assert RetrievalSettings(candidates="50", bm25_b="0.5").candidates == 50  # type: ignore[arg-type]
    assert ServerSettings(api_docs="yes", rate_limit=3).rate_limit == 3.0  # type: ignore[arg-type]
    assert isinstance(ServerSettings(rate_limit=3).rate_limit, float)
    assert GenerationSettings(generator_adapter="runs/a").generator_adapter == Path("runs/a")  # type: ignore[arg-type]
    assert Settings(data_dir="x").data_dir == Path("x")  # type: ignore[arg-type]


def test_settings_hold_sections_not_mappings() -> None:
    with pytest.raises(ConfigError, match=r"retrieval=.*Settings\.of"):
        Settings(retrieval={"candidates": 5})  # type: ignore[arg-type]


def test_field_names_are_unique_across_sections() -> None:
    """What lets a keyword name a field alone (``candidates=50``)."""
    seen: dict[str, str] = {}
    for name, section in SECTIONS.items():
        assert section.section == name
        for f in dataclasses.fields(section):
            assert f.name not in seen and f.name not in PROJECT_FIELDS and f.name not in SECTIONS, (name, f.name)
            seen[f.name] = name


# -- ragtune.toml ----------------------------------------------------------------------------------------------
def test_a_file_of_sections_loads(tmp_path: Path) -> None:
    toml(tmp_path, """
data_dir = "project"
default_collection = "handbook"

[store]
statement_timeout = 5

[ingest]
embedder = "minilm-int8"
chunk_max_tokens = 128

[retrieval]
candidates = 50
fusion = "rrf"

[generation]
generator = "extractive"
timeout = 9.5

[server]
port = 9000
api_docs = true

[training.promotion_gates]
"eval.loss" = "lower:0.1"
""")
    s = Settings.load()
    assert (s.data_dir, s.default_collection) == (Path("project"), "handbook")
    assert s.store.statement_timeout == 5.0 and s.ingest.embedder == "minilm-int8" and s.ingest.chunk_max_tokens == 128
    assert (s.retrieval.candidates, s.retrieval.fusion, s.retrieval.rrf_k) == (50, "rrf", 60)  # the rest: defaults
    assert (s.generation.generator, s.generation.timeout) == ("extractive", 9.5)
    assert (s.server.port, s.server.api_docs) == (9000, True)
    assert s.training.promotion_gates == {"eval.loss": "lower:0.1"}


def test_sections_may_sit_under_a_ragtune_table(tmp_path: Path) -> None:
    toml(tmp_path, "[ragtune]\ndata_dir = 'p'\n[ragtune.retrieval]\ncandidates = 7\n[ragtune.server]\nport = 1\n")
    s = Settings.load()
    assert (s.data_dir, s.retrieval.candidates, s.server.port) == (Path("p"), 7, 1)


@pytest.mark.parametrize(("text", "place"), [
    ("candidates = 50", "write it as [retrieval] candidates"),
    ("server_port = 9000", "write it as [server] port"),
    ("server_rate_limit = 0", "write it as [server] rate_limit"),
    ("generation_timeout = 30", "write it as [generation] timeout"),
    ("generator = 'extractive'", "write it as [generation] generator"),
    ("statement_timeout = 1", "write it as [store] statement_timeout"),
    ("chunker = 'whole'", "write it as [ingest] chunker"),
    ("[promotion_gates]\n'eval.loss' = 'lower'", "write it as a [training.promotion_gates] table"),
    ("[ragtune]\nhnsw_m = 8", "write it as [retrieval] hnsw_m"),
])
def test_an_old_flat_key_names_its_new_place(tmp_path: Path, text: str, place: str) -> None:
    path = toml(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as refused:
        Settings.load()
    assert place in str(refused.value) and str(path.name) in str(refused.value)


@pytest.mark.parametrize(("text", "message"), [
    ("[retrieval]\ncandidate = 5", "unknown setting [retrieval] candidate; did you mean candidates?"),
    ("[server]\nwhatever = 5", "unknown setting [server] whatever; [server] has host, port, auth,"),
    ("[retrieval]\nport = 5", "unknown setting [retrieval] port"),  # a field of another section
    ("[ragtune.retrieval]\nfusoin = 'rrf'", "did you mean fusion?"),
    ("fusoin = 'rrf'", "unknown setting 'fusoin'; did you mean [retrieval] fusion?"),
    ("retrieval = 5", "[retrieval] must be a table"),
    ("[retrieval]\nhnsw_m = 'many'", "retrieval.hnsw_m='many': expected an integer"),
])
def test_an_unknown_or_bad_key_is_named_with_its_section(tmp_path: Path, text: str, message: str) -> None:
    toml(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as refused:
        Settings.load()
    assert message in str(refused.value)


# -- environment variables -------------------------------------------------------------------------------------
CHOICES: dict[str, Any] = {"default_mode": "bm25", "fusion": "rrf", "hybrid_normalization": "minmax",
                           "bm25_statistics": "global", "auth": "on", "near_duplicates": "index",
                           "near_duplicate_threshold": 0.8, "query_embedder": "int8",
                           "conversation": "rewrite", "repetition_penalty": 1.3, "no_repeat_ngram_size": 3,
                           "generator": "extractive", "reader": "none",
                           "otlp_endpoint": "http://127.0.0.1:4318/v1/traces", "audit_reads": "async",
                           "erasure_models": "flag"}


def _other_value(section: Any, f: dataclasses.Field[Any]) -> tuple[str, Any]:
    """A valid value other than the default, as text for the environment, and as loaded."""
    default = getattr(section, f.name)
    if f.name in CHOICES:
        return str(CHOICES[f.name]), CHOICES[f.name]
    if isinstance(default, bool):
        return str(not default).lower(), not default
    if isinstance(default, int):
        return str(default + 1), default + 1
    if isinstance(default, float):
        return str(default / 2), default / 2
    if isinstance(default, dict):
        return json.dumps({"eval.m": "higher"}), {"eval.m": "higher"}
    if default is None:
        return "/tmp/elsewhere", Path("/tmp/elsewhere")
    return f"x-{f.name}", f"x-{f.name}"


def test_every_field_is_set_by_ragtune_section_field(monkeypatch: pytest.MonkeyPatch) -> None:
    expected: dict[tuple[str, str], Any] = {}
    for name, cls in SECTIONS.items():
        defaults = cls()
        for f in dataclasses.fields(cls):
            text, value = _other_value(defaults, f)
            monkeypatch.setenv(f"RAGTUNE_{name.upper()}_{f.name.upper()}", text)
            expected[name, f.name] = value
    loaded = Settings.load()
    got = {(name, f.name): getattr(getattr(loaded, name), f.name) for name, cls in SECTIONS.items()
           for f in dataclasses.fields(cls)}
    assert got == expected


def test_the_project_variables_keep_their_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", "postgresql://app:pw@db/rag")
    monkeypatch.setenv("RAGTUNE_DATA_DIR", "here")
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RAGTUNE_DEFAULT_COLLECTION", "kb")
    config = tmp_path / "elsewhere.toml"
    config.write_text("[retrieval]\ncandidates = 9\n", encoding="utf-8")
    monkeypatch.setenv("RAGTUNE_CONFIG", str(config))
    monkeypatch.setenv("RAGTUNE_SERVER_RATE_LIMIT", "0")  # the old flat name and the new one are the same
    monkeypatch.setenv("RAGTUNE_TEST_DATABASE_URL", "postgresql://x@y/z")  # not a setting: left alone
    monkeypatch.setenv("RAGTUNE_BENCH_DATA", "/data")
    s = Settings.load()
    assert s.database_url == "postgresql://app:pw@db/rag" and s.data_dir == Path("here")
    assert s.cache_dir == tmp_path / "cache" and s.default_collection == "kb"
    assert s.retrieval.candidates == 9 and s.server.rate_limit == 0
    assert Settings().resolved_cache_dir == tmp_path / "cache"


@pytest.mark.parametrize(("old", "new"), [
    ("RAGTUNE_GENERATOR", "RAGTUNE_GENERATION_GENERATOR"),
    ("RAGTUNE_EMBEDDER", "RAGTUNE_INGEST_EMBEDDER"),
    ("RAGTUNE_CANDIDATES", "RAGTUNE_RETRIEVAL_CANDIDATES"),
    ("RAGTUNE_OPENAI_BASE_URL", "RAGTUNE_GENERATION_OPENAI_BASE_URL"),
    ("RAGTUNE_PROMOTION_GATES", "RAGTUNE_TRAINING_PROMOTION_GATES"),
    ("RAGTUNE_STATEMENT_TIMEOUT", "RAGTUNE_STORE_STATEMENT_TIMEOUT"),
])
def test_an_old_flat_variable_names_the_new_one(monkeypatch: pytest.MonkeyPatch, old: str, new: str) -> None:
    monkeypatch.setenv(old, "1")
    with pytest.raises(ConfigError) as refused:
        Settings.load()
    assert old in str(refused.value) and f"set {new} instead" in str(refused.value)


def test_a_section_variable_must_name_a_field_of_its_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGTUNE_RETRIEVAL_CANDIDATE", "5")
    with pytest.raises(ConfigError, match="RAGTUNE_RETRIEVAL_CANDIDATE names no setting of \\[retrieval\\]; "
                                          "did you mean RAGTUNE_RETRIEVAL_CANDIDATES"):
        Settings.load()


def test_the_file_the_environment_and_arguments_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml(tmp_path, "[retrieval]\ncandidates = 10\nrrf_k = 10\nhnsw_m = 10\n")
    monkeypatch.setenv("RAGTUNE_RETRIEVAL_RRF_K", "20")
    monkeypatch.setenv("RAGTUNE_RETRIEVAL_HNSW_M", "20")
    monkeypatch.setenv("RAGTUNE_RETRIEVAL_BM25_B", "")  # empty: unset
    s = Settings.load(hnsw_m=30, hnsw_ef_construction=None)  # None: no override (the CLI's unset options)
    assert (s.retrieval.candidates, s.retrieval.rrf_k, s.retrieval.hnsw_m, s.retrieval.bm25_b) == (10, 20, 30, 0.75)
    # the values are checked once they are all in: hnsw_m 40 alone would break hnsw_ef_construction 64
    assert Settings.load(retrieval={"hnsw_m": 40, "hnsw_ef_construction": 80}).retrieval.hnsw_m == 40
    whole = Settings.load(retrieval=RetrievalSettings(rrf_k=5))  # a section object is the whole section
    assert (whole.retrieval.candidates, whole.retrieval.rrf_k) == (100, 5)


# -- keyword arguments and replace -------------------------------------------------------------------------
def test_keywords_name_a_field_alone_or_within_its_section() -> None:
    s = Settings.of(data_dir="p", candidates=50, server={"port": 9000, "rate_limit": 0}, generator="extractive")
    assert (s.data_dir, s.retrieval.candidates, s.server.port, s.server.rate_limit) == (Path("p"), 50, 9000, 0)
    assert s.generation.generator == "extractive" and s.server.host == "127.0.0.1"
    assert Settings.of(store=StoreSettings(database_wait=3)).store.database_wait == 3


@pytest.mark.parametrize(("values", "message"), [
    ({"server_port": 9000}, "setting server_port moved to [server] port: pass server={'port': ...}"),
    ({"generation_retries": 1}, "setting generation_retries moved to [generation] retries"),
    ({"candidats": 5}, "unknown setting candidats; did you mean [retrieval] candidates?"),
    ({"retrieval": {"port": 1}}, "unknown setting retrieval.port"),
    ({"server": 5}, "invalid setting server=5: expected a ServerSettings or a mapping of its fields"),
    ({"candidates": "lots"}, "invalid setting retrieval.candidates='lots': expected an integer"),
])
def test_a_bad_keyword_is_refused_naming_it(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.of(**values)
    assert message in str(refused.value)
    with pytest.raises(ConfigError):
        Settings.load(**values)


def test_replace_keeps_validation_and_the_other_fields() -> None:
    base = Settings.of(candidates=50, rrf_k=10)
    changed = base.replace(retrieval={"rrf_k": 20}, port=1234)
    assert (changed.retrieval.candidates, changed.retrieval.rrf_k, changed.server.port) == (50, 20, 1234)
    assert (base.retrieval.rrf_k, base.server.port) == (10, 8000)  # frozen: a copy
    assert base.replace(candidates="7").retrieval.candidates == 7  # text converted as from the environment
    for bad in ({"candidates": 0}, {"hnsw_m": 50}, {"server": {"auth": "sometimes"}}, {"default_collection": ""}):
        with pytest.raises(ConfigError):
            base.replace(**bad)


def test_open_takes_the_same_keywords(tmp_path: Path) -> None:
    with ragtune.open(tmp_path / "project", candidates=25, server={"port": 0}) as rt:
        assert rt.settings.data_dir == tmp_path / "project"
        assert rt.settings.retrieval.candidates == 25 and rt.settings.server.port == 0
    with ragtune.open("postgresql://u@h/db") as rt:
        assert rt.settings.database_url == "postgresql://u@h/db"


def test_public_dict_shows_sections_and_hides_the_password() -> None:
    shown = Settings.of(database_url="postgresql://app:s3cr3t@db/rag", candidates=5, data_dir="p").public_dict()
    assert set(shown) == {*PROJECT_FIELDS, *SECTIONS}
    assert shown["database_url"] == "postgresql://app:***@db/rag" and "s3cr3t" not in json.dumps(shown)
    assert shown["data_dir"] == "p" and shown["retrieval"]["candidates"] == 5 and shown["server"]["port"] == 8000
    assert set(shown["store"]) == {f.name for f in dataclasses.fields(StoreSettings)}
    json.dumps(shown)  # printable as it is
