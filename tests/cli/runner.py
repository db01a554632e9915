"""Run the ``ragtune`` command in-process (Typer's runner), as the CLI tests do."""

from __future__ import annotations

from typer.testing import CliRunner

from ragtune.cli.main import app

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``ragtune ARGS``."""
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr
