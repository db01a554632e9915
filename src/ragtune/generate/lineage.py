"""What an answer records of the model behind it (``models.Lineage``): content hashes of model and
adapter folders, and the name an adapter goes by.

A folder's hash is sha256 over its config and weight files (for an adapter also its chat template
and prompt format), each as its name, a NUL byte and its bytes, in name order; other files (a
README, tokenizer files) do not count. Hashes are cached by
folder, total size and latest mtime, so a served adapter is hashed once (a few MB: milliseconds),
and a folder rewritten in place is hashed again. Concession: ``adapter_config.json`` holds the
base model's path as PEFT wrote it, so the same weights trained on another machine hash differently;
a registered version's artefact is a byte copy of its run's adapter and hashes the same.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

from ragtune.errors import ModelError
from ragtune.generate.prompt import PROMPT_FILE

_WEIGHTS = (".safetensors", ".bin", ".gguf")
_cache: dict[tuple[str, str, int, int], str] = {}
_lock = threading.Lock()


def folder_hash(path: Path, kind: str, counts: Callable[[str], bool]) -> str:
    """sha256 over the files of ``path`` whose name ``counts`` (names and bytes, in name order)."""
    path = Path(path)
    try:
        files = sorted(p for p in path.iterdir() if p.is_file() and counts(p.name))
    except OSError as exc:
        raise ModelError(f"cannot read the {kind} folder {path}: {exc}") from exc
    if not files:
        raise ModelError(f"no {kind} files to hash in {path}")
    stats = [p.stat() for p in files]
    key = (kind, str(path.resolve()), sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats))
    with _lock:
        found = _cache.get(key)
    if found is not None:
        return found
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode() + b"\0")
        with open(p, "rb") as fh:
            while block := fh.read(1 << 22):
                digest.update(block)
    with _lock:
        _cache[key] = digest.hexdigest()
    return _cache[key]


def model_hash(path: Path) -> str:
    """A Hugging Face model folder's hash: ``config.json`` and the weight files."""
    return folder_hash(path, "model", lambda name: name == "config.json" or name.endswith(_WEIGHTS))


# Besides its config and weights, what decides how an adapter answers: the chat template it was
# trained and is served with, and the prompt format it learnt (``generate.prompt.PROMPT_FILE``).
_ADAPTER_SERVING_FILES = ("adapter_config.json", "chat_template.jinja", PROMPT_FILE)


def adapter_hash(path: Path) -> str:
    """A PEFT adapter folder's hash: ``adapter_config.json``, the ``adapter_model.*`` weights, and
    the chat template and prompt format it is served with, where it has them."""
    return folder_hash(path, "adapter", lambda name: name in _ADAPTER_SERVING_FILES
                       or (name.startswith("adapter_model") and name.endswith(_WEIGHTS)))


def adapter_label(path: Path) -> str:
    """How an answer's ``model`` names an adapter: its folder's name, or the run's for a run's
    ``adapter`` folder (``runs/<run id>/adapter``)."""
    path = Path(path)
    return path.parent.name if path.name == "adapter" and path.parent.name else path.name
