"""The shape of ``ragtune.cli`` (issue 15): one package without import cycles, one registration style,
a fast ``--help``, and every engine a command opens closed again."""

from __future__ import annotations

import ast
import gc
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grimp
import psycopg
import pytest
import typer
from psycopg.conninfo import conninfo_to_dict

import ragtune.cli
from ragtune.cli.main import app
from tests.cli.runner import invoke
from tests.structure import cycles, import_edges

GROUPS = ("ingest", "sync", "search", "ask", "docs", "collections", "db", "config", "traces", "eval", "data", "demo",
          "serve", "keys", "rerank", "answerability", "tune", "models")


@pytest.fixture(scope="module")
def cli_imports() -> dict[str, set[str]]:
    """Each ``ragtune.cli`` module and the ``ragtune.cli`` modules it imports, function-local imports included."""
    return {m: imported - {"ragtune.cli"} for m, imported in import_edges("ragtune.cli").items() if m != "ragtune.cli"}


def test_the_cycle_finder_finds_cycles() -> None:
    """The check below is only as good as this: a cycle through three modules and a self-import are found."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    assert sorted(cycles(edges)) == [["a", "b", "c"], ["d"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_cli_modules(cli_imports: dict[str, set[str]]) -> None:
    assert "ragtune.cli.common" in cli_imports and "ragtune.cli.main" in cli_imports
    assert cycles(cli_imports) == []


def test_only_the_entry_point_imports_main(cli_imports: dict[str, set[str]]) -> None:
    """``cli/main.py`` only assembles the tree; the helpers every command needs live in ``cli/common.py``."""
    graph = grimp.build_graph("ragtune", exclude_type_checking_imports=True)
    assert graph.find_modules_that_directly_import("ragtune.cli.main") == set()
    assert all("ragtune.cli.common" in imported for m, imported in cli_imports.items()
               if m not in ("ragtune.cli.common", "ragtune.cli.main"))


def _attached(root: typer.Typer) -> set[int]:
    """The ids of every Typer app reachable from ``root`` through ``add_typer``."""
    seen = {id(root)}
    for info in root.registered_groups:
        if info.typer_instance is not None:
            seen |= _attached(info.typer_instance)
    return seen


def test_every_command_app_of_every_module_is_attached() -> None:
    """One registration style: modules hold ``typer.Typer()`` apps; a module's app left out of ``main`` fails here."""
    attached = _attached(app)
    apps = []
    for info in pkgutil.iter_modules(ragtune.cli.__path__):
        module = importlib.import_module(f"ragtune.cli.{info.name}")
        apps += [f"{info.name}.{name}" for name, value in vars(module).items()
                 if isinstance(value, typer.Typer) and id(value) not in attached]
    assert apps == []
    assert len(attached) > 15  # the walk itself works: the root, 12 groups and the modules' apps


_TERMINAL = ("rich.console", "rich.progress")


def terminal_uses(source: str) -> list[str]:
    """What in ``source`` draws on a terminal: imports of Rich's console or progress bars (at module
    level, in a function or under ``TYPE_CHECKING``, in any spelling) and parameters named console."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith(_TERMINAL)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]
            found += [n for n in [node.module, *names] if n.startswith(_TERMINAL)][:1]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "rich":
            found += [f"rich.{node.attr}"] if f"rich.{node.attr}" in _TERMINAL else []
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            args = node.args
            found += [f"parameter {a.arg}" for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]
                      if a.arg == "console" or a.arg.endswith("_console")]
    return found


def test_the_terminal_scan_finds_every_spelling() -> None:
    source = ("import rich.progress\nfrom rich import console\nfrom rich.console import Console\n"
              "def f(x, *, progress_console=None):\n    import rich\n    return rich.progress.track\n"
              "from rich.table import Table\nfrom rich.markup import escape\n")
    assert terminal_uses(source) == ["rich.progress", "rich.console", "rich.console", "parameter progress_console",
                                     "rich.progress"]


def test_only_the_cli_draws_on_a_terminal() -> None:
    """Library code reports progress as events (``ragtune.protocols.Progress``) and returns what it
    found: it never imports Rich's console or progress bars and never takes a console (issue 15)."""
    package = Path(ragtune.cli.__file__).parent.parent
    offenders = {str(path.relative_to(package)): found for path in sorted(package.rglob("*.py"))
                 if path.relative_to(package).parts[0] != "cli"
                 and (found := terminal_uses(path.read_text(encoding="utf-8")))}
    assert offenders == {}
    assert terminal_uses((package / "cli" / "common.py").read_text(encoding="utf-8"))  # the scan sees the CLI's


def test_help_lists_every_command_group() -> None:
    script = Path(sys.executable).with_name("ragtune")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "ragtune.cli.main"]
    done = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    assert done.returncode == 0, done.stderr
    listed = re.findall(r"^│ (\S+) ", done.stdout.split("Commands")[1], flags=re.M)
    assert [g for g in GROUPS if g not in listed] == []


def test_help_imports_no_heavy_dependency() -> None:
    """``ragtune --help`` imports every command module: none may import these at module level."""
    heavy = ("torch", "transformers", "sentence_transformers", "fastapi", "uvicorn", "mlflow", "optuna", "peft")
    code = ("import sys; from ragtune.cli.main import app; "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == ""


def test_serve_without_the_server_extra_says_how_to_install_it(tmp_path: Path) -> None:
    """FastAPI made unimportable (``sys.modules[name] = None`` is how Python spells "not installed")."""
    code = ("import sys; sys.modules['fastapi'] = None; from ragtune.cli.main import app; "
            "app(['serve', '--data-dir', sys.argv[1]], prog_name='ragtune')")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "pip install 'ragtune[server]'" in done.stderr and "Traceback" not in done.stderr


def _backends(admin_url: str, database: str) -> int:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                           (database,)).fetchone()
    return int(row[0]) if row else 0


def _connections_left(admin_url: str, database: str, wait: float = 5.0) -> int:
    """Connections to ``database`` still open after ``wait`` seconds (a closed one takes a moment to go)."""
    deadline = time.monotonic() + wait
    while (n := _backends(admin_url, database)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return n


def test_every_command_closes_the_engine_it_opens(env: dict[str, str], pg_admin_url: str, database_url: str,
                                                  tmp_path: Path) -> None:
    """Run in-process, an engine left open keeps its pool's connections to the test database. A failed
    command is the telling case: its traceback holds the engine in a reference cycle, so only the
    cyclic collector (paused here, as it may be for a while in a long process) would free it."""
    database = conninfo_to_dict(database_url)["dbname"]
    assert isinstance(database, str)
    note = tmp_path / "note.md"
    note.write_text("# Note\n\nThe office opens at nine.\n", encoding="utf-8")
    commands = [  # (exit code, args)
        (0, ("ingest", str(note), "-c", "kb")), (0, ("sync", str(tmp_path), "-c", "kb", "--include", "*.md")),
        (0, ("search", "when does the office open", "-c", "kb")), (2, ("search", "x", "-c", "nope")),
        (0, ("docs", "list", "-c", "kb")), (0, ("docs", "show", str(note), "-c", "kb")),
        (2, ("docs", "show", "missing.md", "-c", "kb")), (0, ("collections", "list")), (0, ("db", "status")),
        (0, ("traces", "list")), (0, ("keys", "list")), (0, ("data", "list")), (2, ("data", "show", "nope")),
        (2, ("collections", "rm", "nope")), (0, ("collections", "rm", "kb", "--yes")),
    ]
    gc.collect()
    gc.disable()
    try:
        for expected, args in commands:
            code, _out, err = invoke(*args)
            assert code == expected, (args, err)
            assert _connections_left(pg_admin_url, database) == 0, args
    finally:
        gc.enable()


def _commands(root: typer.Typer) -> list[Any]:
    found = [c.callback for c in root.registered_commands if c.callback is not None]
    for info in root.registered_groups:
        if info.typer_instance is not None:
            found += _commands(info.typer_instance)
    return found


def test_every_generator_option_default_is_a_registered_generator() -> None:
    """``rerank train --generator`` once defaulted to ``local``, which no registry resolves: a
    synthetic-question run failed on its first chunk."""
    from ragtune.errors import ConfigError
    from ragtune.generate.registry import EXTRACTIVE
    from ragtune.plugins import default_plugins

    registry = default_plugins().generators
    defaults = {}
    for callback in _commands(app):
        default = inspect.signature(callback).parameters.get("generator")
        if default is not None and isinstance(default.default, str):
            defaults[f"{callback.__module__}.{callback.__name__}"] = default.default
    assert "ragtune.cli.rerank.train" in defaults and "ragtune.cli.reader.train" in defaults
    unresolved = []
    for command, spec in defaults.items():
        try:
            if spec not in (EXTRACTIVE, "reader", "auto"):
                registry.resolve(spec)
        except ConfigError:
            unresolved.append(f"{command}: {spec}")
    assert unresolved == []
