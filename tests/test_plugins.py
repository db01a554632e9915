"""Third-party plugins (issue 15): the README's example, installed as a real distribution (a
``*.dist-info`` with an entry point in the ``ragtune.plugins`` group, found by
``importlib.metadata`` on ``sys.path``), adds a loader and a generator that ``ragtune ingest`` and
``ragtune ask`` then use end to end; and the one duplicate rule, the same for every kind."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragtune.errors import ConfigError
from ragtune.plugins import ENTRY_POINT_GROUP, Plugins, default_plugins

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The plugin module the README shows (the Python block after the plugin marker)."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- plugin example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "the README lost its plugin example"
    return match.group(1)


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``my_ragtune_plugin`` installed the way pip leaves a package: the module and its dist-info."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "my_ragtune_plugin.py").write_text(readme_example(), encoding="utf-8")
    info = site / "my_ragtune_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-ragtune-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nshout = my_ragtune_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    default_plugins.cache_clear()
    yield site
    sys.modules.pop("my_ragtune_plugin", None)
    default_plugins.cache_clear()


def test_an_installed_plugin_is_discovered_and_used_by_ingest_and_ask(
        installed_plugin: Path, tmp_path: Path, database_url: str, cache_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.cli.runner import invoke

    plugins = Plugins.load()
    assert plugins.loaders.source(".shout") == "shout (my_ragtune_plugin)"
    assert "shouter" in plugins.generators.names()
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", database_url)
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    note = tmp_path / "lighthouse.shout"
    note.write_text("the lighthouse keeper lights the lamp at dusk every evening\n")
    code, out, err = invoke("ingest", str(note), "-c", "plugged")
    assert code == 0, err
    code, out, err = invoke("docs", "show", str(note), "-c", "plugged", "--json")
    assert code == 0, err
    assert json.loads(out)["chunks"][0]["text"].startswith("THE LIGHTHOUSE KEEPER")  # the plugin's loader
    code, out, err = invoke("ask", "When does the lighthouse keeper light the lamp?", "-c", "plugged",
                            "-g", "shouter", "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["model"] == "shouter" and not answer["abstained"], answer
    assert "WHEN DOES THE LIGHTHOUSE KEEPER" in answer["answer"]  # the plugin's generator wrote it


def test_one_duplicate_rule_for_every_kind() -> None:
    plugins = Plugins.load(entry_points=False)
    taken = {"loaders": ".pdf", "chunkers": "structured", "embedders": "minilm", "generators": "smollm2",
             "rerankers": "*"}
    for kind, name in taken.items():
        registry = getattr(plugins, kind)
        with pytest.raises(ConfigError, match=rf"plugin rival registers the {registry.kind} '{re.escape(name)}'"):
            plugins.add("rival", lambda p, r=registry, n=name: r.register(n, lambda *a: None))
        plugins.add("override", lambda p, r=registry, n=name: r.register(n, lambda *a: None, replace=True))
        assert registry.source(name) == "override"


def test_a_broken_plugin_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    info = site / "broken_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nbroken = no_such_module_here\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ConfigError, match=r"plugin broken \(no_such_module_here\) cannot be loaded"):
        Plugins.load()
