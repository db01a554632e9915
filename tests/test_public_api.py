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

EXPECTED = {
    "open", "Ragtune", "Settings", "Answer", "AnswerSentence", "Chunk", "Citation", "Document", "Hit",
    "IngestReport", "LoadedDocument", "Principal", "SearchResult", "Filter", "Plugins", "Registry", "Chunker",
    "Embedder", "Generator", "Loader", "Reranker",
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


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components of more than one node (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[set[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(component)
    return found


def test_tarjan_finds_a_cycle() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_package() -> None:
    """Function-local imports included: they are for heavy optional modules, never to hide a cycle."""
    import grimp

    graph = grimp.build_graph("ragtune", exclude_type_checking_imports=True)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert strongly_connected(edges) == []
