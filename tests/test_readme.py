"""Every README example marked for it runs and prints what the README shows (issue 16).

How a README example is marked: an HTML comment on the line before its fence, invisible on GitHub,

    <!-- readme-test -->            a ```python, ```bash (or ```sh) or ```console block to run
    <!-- readme-test: continue -->  a ```python block run in the same interpreter as the marked
                                    python block before it (it uses that block's names)

and, after the block (blank lines between are fine), a ```text block holding its output exactly, with
``…`` where the output may vary: inside a line it stands for any text on that line, and a line of
just ``…`` stands for any number of lines. Only stdout is compared (progress bars and model-loading
messages go to stderr), trailing spaces and blank lines aside. Anything else in the output must be
as shown, so a changed README output (or a changed program) fails the test.

All marked blocks run in README order in one temporary working folder against one fresh test
database (``RAGTUNE_DATABASE_URL``) and the shared model cache (``RAGTUNE_CACHE_DIR``), with no other
``RAGTUNE_*`` variable and no ``ragtune.toml``: each example starts where a new user would. Python
blocks run with this interpreter, shell blocks with ``bash -e -o pipefail`` and this interpreter's
``bin`` folder first on ``PATH`` (so ``ragtune`` is this checkout's). Blocks needing training data,
a server or minutes of work are left unmarked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(r"^<!--\s*readme-test(?::\s*(?P<option>[\w-]+))?\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")
RUNNABLE = {"python", "bash", "sh", "console"}
BOUNDARY = "----- readme-test: end of block -----"
ELLIPSIS = "…"


@dataclass
class Example:
    line: int  # of the code fence in README.md, 1-based
    lang: str
    code: str
    expected: str | None
    option: str | None = None


@dataclass
class Unit:
    """What runs as one process: one shell block, or a python block and the blocks that continue it."""

    lang: str
    examples: list[Example] = field(default_factory=list)


def _fenced(lines: list[str], start: int) -> tuple[str, str, int]:
    """The block whose opening fence is ``lines[start]``: (language, body, index after its closing fence)."""
    match = FENCE.match(lines[start])
    assert match, f"README.md:{start + 1}: expected a ``` fence after the readme-test marker"
    for end in range(start + 1, len(lines)):
        if lines[end].rstrip() == "```":
            return match["lang"], "\n".join(lines[start + 1:end]) + "\n", end + 1
    raise AssertionError(f"README.md:{start + 1}: the block is never closed")


def parse(text: str) -> list[Example]:
    """The marked examples of a README, with their expected output, in order."""
    lines = text.splitlines()
    examples = []
    for i, line in enumerate(lines):
        marker = MARKER.match(line)
        if not marker:
            continue
        start = i + 1
        while start < len(lines) and not lines[start].strip():
            start += 1
        lang, code, after = _fenced(lines, start)
        assert lang in RUNNABLE, f"README.md:{start + 1}: a ```{lang} block cannot be run (one of {sorted(RUNNABLE)})"
        while after < len(lines) and not lines[after].strip():
            after += 1
        expected = None
        if after < len(lines) and lines[after].rstrip() == "```text":
            _, expected, _ = _fenced(lines, after)
        examples.append(Example(start + 1, lang, code, expected, marker["option"]))
    return examples


def units(examples: list[Example]) -> list[Unit]:
    out: list[Unit] = []
    last_python: Unit | None = None
    for example in examples:
        if example.option == "continue":
            assert example.lang == "python" and last_python is not None, (
                f"README.md:{example.line}: 'continue' needs a marked python block before it")
            last_python.examples.append(example)
            continue
        assert example.option is None, f"README.md:{example.line}: unknown readme-test option {example.option!r}"
        unit = Unit(example.lang, [example])
        out.append(unit)
        if example.lang == "python":
            last_python = unit
    return out


def _clean(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


def pattern(expected: str) -> re.Pattern[str]:
    """The regex an expected output stands for: ``…`` is any text within a line, a line of ``…``
    any number of lines; everything else literal."""
    parts = []
    for line in _clean(expected):
        if line.strip() == ELLIPSIS:
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append("[^\n]*".join(re.escape(piece) for piece in line.split(ELLIPSIS)) + "\n")
    return re.compile("".join(parts))


def matches(expected: str, actual: str) -> bool:
    return pattern(expected).fullmatch("".join(line + "\n" for line in _clean(actual))) is not None


def shell_commands(example: Example) -> str:
    """A console block's commands are its ``$ `` lines; a bash block is a script."""
    if example.lang != "console":
        return example.code
    return "".join(line[2:] + "\n" for line in example.code.splitlines() if line.startswith("$ "))


def run(unit: Unit, cwd: Path, env: dict[str, str]) -> list[str]:
    """The stdout of each example of the unit."""
    if unit.lang == "python":
        script = f"\nprint({BOUNDARY!r}, flush=True)\n".join(e.code for e in unit.examples)
        command = [sys.executable, "-c", script]
    else:
        command = ["bash", "-e", "-o", "pipefail", "-c", shell_commands(unit.examples[0])]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    first = unit.examples[0].line
    assert done.returncode == 0, (
        f"README.md:{first}: the example exited with {done.returncode}\n--- stdout\n{done.stdout}\n"
        f"--- stderr (last 3000 characters)\n{done.stderr[-3000:]}")
    outputs = done.stdout.split(BOUNDARY + "\n")
    assert len(outputs) == len(unit.examples), f"README.md:{first}: an example printed the block boundary"
    return outputs


# -- the README's own examples --------------------------------------------------------------------
def test_readme_marks_runnable_examples_with_their_output() -> None:
    examples = parse(README.read_text(encoding="utf-8"))
    langs = {e.lang for e in examples}
    assert "python" in langs and langs & {"bash", "sh", "console"}, f"marked examples: {langs}"
    missing = [e.line for e in examples if e.expected is None]
    assert not missing, f"marked examples without a ```text output block after them, at README.md lines {missing}"
    units(examples)  # the markers' options are valid


@pytest.mark.slow
def test_readme_examples_print_what_the_readme_shows(database_url: str, cache_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGTUNE_")}
    env.update(RAGTUNE_DATABASE_URL=database_url, RAGTUNE_CACHE_DIR=str(cache_dir), COLUMNS="120",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    work = tmp_path / "work"
    work.mkdir()
    failures = []
    for unit in units(parse(README.read_text(encoding="utf-8"))):
        for example, output in zip(unit.examples, run(unit, work, env), strict=True):
            assert example.expected is not None
            if not matches(example.expected, output):
                failures.append(f"README.md:{example.line} ({example.lang}) printed\n{output}\n"
                                f"but the README shows\n{example.expected}")
    assert not failures, "\n\n".join(failures)


# -- the matcher ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("expected", "actual", "ok"), [
    ("2 documents added\n", "2 documents added\n", True),
    ("2 documents added\n", "3 documents added\n", False),  # a changed number fails
    ("1 1.0 …/docs/leave.md 0 62\n", "1 1.0 /tmp/x/docs/leave.md 0 62\n", True),
    ("1 1.0 …/docs/leave.md 0 62\n", "1 0.9 /tmp/x/docs/leave.md 0 62\n", False),  # varies only where marked
    ("1 1.0 …/docs/leave.md 0 62\n", "1 1.0 /tmp/x/docs/old.md 0 62\n", False),
    ("a\n", "a\nb\n", False),  # an extra line fails
    ("a\nb\n", "a\n", False),  # a missing line fails
    ("a\n…\nz\n", "a\nb\nc\nz\n", True),  # a line of … is any number of lines
    ("a\n…\nz\n", "a\nz\n", True),
    ("a\n…\nz\n", "a\nb\n", False),
    ("x  \n\n", "x\n", True),  # trailing spaces and blank lines aside
    ("(1+1) [x]\n", "(1+1) [x]\n", True),  # everything else literal
    ("(1+1) [x]\n", "11 x\n", False),
    ("", "", True),
    ("", "something\n", False),
])
def test_matcher(expected: str, actual: str, ok: bool) -> None:
    assert matches(expected, actual) is ok


def test_parse_finds_marked_blocks_and_their_output() -> None:
    text = "\n".join([
        "```python", "print('unmarked')", "```",
        "<!-- readme-test -->", "```python", "x = 1", "print(x)", "```", "", "```text", "1", "```",
        "<!-- readme-test: continue -->", "```python", "print(x + 1)", "```", "```text", "2", "```",
        "<!-- readme-test -->", "```console", "$ echo hi", "hi", "```", "```text", "hi", "```",
    ])
    examples = parse(text)
    assert [(e.lang, e.code, e.expected, e.option) for e in examples] == [
        ("python", "x = 1\nprint(x)\n", "1\n", None),
        ("python", "print(x + 1)\n", "2\n", "continue"),
        ("console", "$ echo hi\nhi\n", "hi\n", None),
    ]
    plan = units(examples)
    assert [len(u.examples) for u in plan] == [2, 1]
    assert shell_commands(examples[2]) == "echo hi\n"


def test_examples_run_and_are_compared(tmp_path: Path) -> None:
    """The runner on a tiny README: a continued python block shares names, and outputs split per block."""
    examples = parse("\n".join([
        "<!-- readme-test -->", "```python", "x = 20", "print(x)", "```", "```text", "20", "```",
        "<!-- readme-test: continue -->", "```python", "print(x + 1)", "```", "```text", "21", "```",
        "<!-- readme-test -->", "```bash", "echo hi there", "```", "```text", "hi …", "```",
    ]))
    outputs = [out for unit in units(examples) for out in run(unit, tmp_path, dict(os.environ))]
    assert outputs == ["20\n", "21\n", "hi there\n"]
    assert all(e.expected is not None and matches(e.expected, out) for e, out in zip(examples, outputs, strict=True))
