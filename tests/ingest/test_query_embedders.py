"""The int8 query path (``[retrieval] query_embedder``): the import-light tokenizer gives the
transformers tokenizer's ids, and the stand-in embeds with int8 under the collection's name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ragtune.errors import ConfigError
from ragtune.ingest.embedders import OnnxInt8Embedder, SentenceTransformerEmbedder, packaged_model_path
from ragtune.ingest.query_embedders import QueryStandIn, query_embedder

TEXTS = [
    "",
    "How long is parental leave?",
    "Der schnelle braune Fuchs springt über den faulen Hund — naïve café, 東京, emoji 🙂.",
    "  leading and trailing spaces, TABS\tand\nnewlines  ",
    "word " * 600,  # truncated at the model's window
    "don't re-embed: e-mail x@y.z, 3.14159, [brackets] (parens) {braces}",
]


def test_light_tokenizer_gives_the_transformers_ids(tmp_path: Path) -> None:
    emb = OnnxInt8Embedder(packaged_model_path(), cache_dir=tmp_path)
    encoder, pad_id = emb._ids_encoder()
    assert encoder is not None  # the packaged model has a tokenizer.json
    reference = emb.tokenizer(TEXTS, truncation=True, max_length=emb.max_seq_length)["input_ids"]
    assert emb._token_ids(TEXTS) == [list(ids) for ids in reference]
    assert pad_id == emb.tokenizer.pad_token_id
    assert len(emb._token_ids(["word " * 600])[0]) == emb.max_seq_length


def test_stand_in_carries_the_collections_name(embedder: SentenceTransformerEmbedder, cache_dir: Path) -> None:
    assert query_embedder("", embedder, cache_dir) is embedder
    stand_in = query_embedder("int8", embedder, cache_dir)
    assert isinstance(stand_in, QueryStandIn) and isinstance(stand_in.runner, OnnxInt8Embedder)
    assert (stand_in.name, stand_in.dimension) == (embedder.name, embedder.dimension)
    fp32, int8 = embedder.embed_batch(TEXTS[1:4]), stand_in.embed_batch(TEXTS[1:4])
    assert float((fp32 * int8).sum(axis=1).min()) > 0.97
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    int8_itself = OnnxInt8Embedder(packaged_model_path(), cache_dir=cache_dir)
    assert query_embedder("int8", int8_itself, cache_dir) is int8_itself  # already int8: no stand-in


def test_int8_queries_need_a_sentence_transformers_embedder(cache_dir: Path) -> None:
    class Plugin:
        name, dimension = "plugin", 3

        def embed_batch(self, texts: list[str]) -> np.ndarray:
            return np.zeros((len(texts), 3), dtype=np.float32)

    with pytest.raises(ConfigError, match="query_embedder"):
        query_embedder("int8", Plugin(), cache_dir)
    plugin = Plugin()
    assert query_embedder("auto", plugin, cache_dir) is plugin  # the default: no int8 build, the embedder itself
