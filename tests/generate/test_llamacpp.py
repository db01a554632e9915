"""LlamaCppGenerator: only what runs without llama-cpp-python (an optional extra that builds from source)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ragtune.errors import ModelError
from ragtune.generate.llamacpp import LlamaCppGenerator


def test_a_missing_gguf_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelError, match=r"nope\.gguf"):
        LlamaCppGenerator(missing)


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is not None, reason="llama-cpp-python is installed")
def test_missing_llama_cpp_says_how_to_install(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")  # never read: the package check comes first
    with pytest.raises(ModelError, match=r"pip install 'ragtune\[llamacpp\]'"):
        LlamaCppGenerator(gguf, n_ctx=512, n_threads=2, max_time=10)
