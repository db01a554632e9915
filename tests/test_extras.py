"""The install command of each optional extra is spelled in one place, matches pyproject.toml, and
reaches the user as an error naming what needed it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from ragtune.errors import ConfigError, DatasetError, ModelError
from ragtune.extras import EXTRAS, install_command, missing, needs, require

ROOT = Path(__file__).resolve().parents[1]


def test_extras_are_the_ones_pyproject_declares() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS) == set(declared) - {"dev"}


def test_the_install_command_is_spelled_only_in_extras() -> None:
    spelled = re.compile(r"pip install ['\"]?ragtune\[")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in (ROOT / "src" / "ragtune").rglob("*.py")
        if path.name != "extras.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        # a docstring may mention it; code may not build the message itself
        if spelled.search(line) and not line.lstrip().startswith(("Nothing", "#"))
        and "needs ``pip install" not in line
    ]
    assert offenders == []


def test_unknown_extra_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown extra 'gpu'"):
        install_command("gpu")


def test_a_missing_module_names_the_purpose_the_module_and_the_command() -> None:
    with pytest.raises(ModelError) as caught:
        require("ragtune_no_such_module", "train", "the model registry")
    message = str(caught.value)
    assert "the model registry needs ragtune_no_such_module (the train extra)" in message
    assert "pip install 'ragtune[train]'" in message


def test_needs_turns_an_import_error_into_the_named_error() -> None:
    expected = r"near-duplicate detection needs .*pip install 'ragtune\[train\]'"
    with pytest.raises(DatasetError, match=expected), needs("train", "near-duplicate detection", error=DatasetError):
        import ragtune_no_such_module  # type: ignore[import-not-found]  # noqa: F401


def test_llamacpp_notes_the_build_time() -> None:
    assert "compiles llama.cpp" in str(missing("llamacpp", "llama.cpp generation"))
