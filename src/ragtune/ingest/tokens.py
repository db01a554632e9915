"""Token counting with the embedder's own tokenizer, and the offsets the chunker cuts on.

The chunker's budget only means something if it is measured by the tokenizer that will
truncate the text later, so this wraps that tokenizer rather than approximating (characters/4,
whitespace words). Counts exclude special tokens: ``[CLS]``/``[SEP]`` are added once per
sequence by the model, so a 256-token chunk is 258 positions for a BERT-style embedder.

``HFTokenCounter`` keeps a private copy of the Rust ``tokenizers.Tokenizer`` with truncation
and padding switched off: a ``tokenizer.json`` can carry truncation (MiniLM's says 128 tokens),
which would make every long text "fit", and the copy means the embedder, which sets its own
truncation on every call, can share the original from another thread safely.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError, ModelError


class HFTokenCounter:
    """``TokenCounter`` over a Hugging Face fast tokenizer (or a bare ``tokenizers.Tokenizer``)."""

    def __init__(self, tokenizer: Any) -> None:
        from tokenizers import Tokenizer

        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        if not isinstance(backend, Tokenizer):
            raise ConfigError(
                f"HFTokenCounter needs a fast (Rust-backed) tokenizer with offset mapping, got {type(tokenizer)!r}"
            )
        self._tokenizer = Tokenizer.from_str(backend.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        # Tokens the model adds around every sequence ([CLS] and [SEP] for BERT): a model that
        # reads max_seq_length positions has room for max_seq_length - special_tokens of text.
        self.special_tokens = len(self._tokenizer.encode("", add_special_tokens=True).ids)

    @classmethod
    def from_model_dir(cls, path: Path | str) -> HFTokenCounter:
        """Load the tokenizer of a local model folder (never downloads)."""
        folder = Path(path)
        if not folder.is_dir():
            raise ModelError(f"tokenizer folder not found: {folder}")
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load a tokenizer from {folder}: {exc}") from exc
        return cls(tokenizer)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """(start, end) character offsets into ``text`` of each token, special tokens excluded."""
        return self._tokenizer.encode(text, add_special_tokens=False).offsets

    def token_offsets_batch(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """``token_offsets`` of many texts at once; the Rust side runs them in parallel."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [encoding.offsets for encoding in encodings]
