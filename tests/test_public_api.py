"""The public API and the package's shape (issue 15): the curated names, each what its home module
defines; every exception in the tree exported; no import cycle anywhere in ``ragtune``; and
``import ragtune`` loads nothing heavy."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import ragtune
from ragtune import errors
from tests.structure import cycles, import_edges

EXPECTED = {
    "open", "Ragtune", "Settings", "Answer", "AnswerSentence", "Chunk", "Citation", "Document", "Hit",
    "IngestReport", "LoadedDocument", "Principal", "SearchResult", "Filter", "Plugins", "Registry", "Chunker",
    "Embedder", "Generator", "Loader", "Reranker", "Progress", "ProgressEvent",
}


def test_the_public_names_are_the_curated_list() -> None:
    exported_errors = {n for n, v in vars(errors).items() if inspect.isclass(v) and issubclass(v, Exception)}
    assert set(ragtune.__all__) == EXPECTED | exported_errors
    for name in ragtune.__all__:
        value = getattr(ragtune, name)
        assert value is getattr(importlib.import_module(value.__module__), name), name
    assert ragtune.open.__module__ == "ragtune.engine" and ragtune.__version__
    try:
        ragtune.no_such_name  # noqa: B018 - the attribute lookup is what is tested
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("an unknown name must be an AttributeError")


def test_importing_ragtune_loads_nothing_heavy() -> None:
    code = ("import sys, ragtune; heavy = [m for m in ('numpy', 'psycopg', 'torch', 'ragtune.engine') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_no_import_cycle_in_the_package() -> None:
    """Function-local imports included: they are for heavy optional modules, never to hide a cycle."""
    assert cycles(import_edges("ragtune")) == []
