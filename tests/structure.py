"""Helpers for tests of the package's shape: the import graph (grimp, function-local imports
included, ``TYPE_CHECKING`` ones not) and its cycles."""

from __future__ import annotations

import grimp


def import_edges(prefix: str) -> dict[str, set[str]]:
    """Each module under ``prefix`` and the modules under ``prefix`` it imports directly."""
    graph = grimp.build_graph("ragtune", exclude_type_checking_imports=True)
    modules = {m for m in graph.modules if m == prefix or m.startswith(prefix + ".")}
    return {m: {i for i in graph.find_modules_directly_imported_by(m) if i in modules} for m in modules}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges[v]:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found
