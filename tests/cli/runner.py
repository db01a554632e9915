"""Run the ``ragtune`` command in-process (Typer's runner), as the CLI tests do."""

from __future__ import annotations

from typer.testing import CliRunner

from ragtune.cli.main import app

runner = CliRunner()


def invoke(*args: str, input: str | None = None) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``ragtune ARGS`` (``input``: what is typed at its prompts)."""
    result = runner.invoke(app, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr
