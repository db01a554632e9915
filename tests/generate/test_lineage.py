"""An answer's lineage (issue 18, item 3): the generator spec, the base model and the LoRA adapter
with the content hash of its files, on the answer, in its trace and in ``ragtune ask --json``, on
the real PostgreSQL, embedder and SmolLM2 with a real PEFT adapter. The registered-model case
(registry name, version and alias) is served over HTTP in ``tests/server/test_openai_models.py``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ragtune import LoadedDocument, Principal
from ragtune.engine import Ragtune
from ragtune.errors import ModelError
from ragtune.generate.answer import answer_fields
from ragtune.generate.lineage import adapter_hash
from ragtune.generate.local import SMOLLM2_NAME
from ragtune.models import AdapterLineage, Lineage
from tests.cli.runner import invoke
from tests.helpers import adapter_sha256, random_lora_adapter

HANDBOOK = ("Every Zorblax employee receives 27 days of paid leave per year. "
            "Unused leave expires at the end of March.")
QUESTION = "How many days of paid leave does a Zorblax employee get per year?"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A real PEFT LoRA adapter for the packaged SmolLM2, in a run's layout (``runs/<run id>/adapter``).
    Its weights are random, not trained: what is tested is what gets recorded, not what it learnt."""
    return random_lora_adapter(tmp_path_factory.mktemp("runs") / "demo-run" / "adapter", cache_dir)


def _expected(adapter: Path) -> Lineage:
    return Lineage(generator="smollm2", base=SMOLLM2_NAME, adapter=AdapterLineage(
        path=str(adapter.resolve()), sha256=adapter_sha256(adapter), label="demo-run"))


def test_the_adapter_hash_covers_its_config_weights_and_template_only(adapter: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(adapter, copy)
    assert adapter_hash(adapter) == adapter_hash(copy) == adapter_sha256(adapter)
    (copy / "README.md").write_text("notes that change nothing", encoding="utf-8")
    assert adapter_hash(copy) == adapter_sha256(adapter)
    weights = copy / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight: same size, new content
    weights.write_bytes(bytes(data))
    assert adapter_hash(copy) == adapter_sha256(copy) != adapter_sha256(adapter)
    # the chat template it is served with counts: the same weights prompted otherwise answer otherwise
    before = adapter_hash(copy)
    (copy / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}", encoding="utf-8")
    assert adapter_hash(copy) == adapter_sha256(copy) != before
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=str(tmp_path / "empty")):
        adapter_hash(tmp_path / "empty")


def test_an_answer_from_an_adapter_records_its_lineage_and_the_trace_holds_it(
        settings: Any, embedder: Any, adapter: Path) -> None:
    expected = _expected(adapter)
    with Ragtune(settings.replace(generator="smollm2", generator_adapter=adapter), embedder=embedder) as rt:
        rt.ingest_documents([LoadedDocument(uri="handbook.md", text=HANDBOOK)], collection="kb")
        answer = rt.ask(QUESTION, collection="kb", max_tokens=6)
        assert answer.usage.get("completion_tokens", 0) > 0, answer  # the tuned model wrote it
        assert answer.model == f"{SMOLLM2_NAME}+demo-run"  # ``model`` names the adapter too
        assert answer.lineage == expected
        trace = rt.traces.get(answer.trace_id or 0, Principal.system())
        assert trace["params"]["lineage"] == expected.to_dict() == answer_fields(answer)["lineage"]
        assert trace["params"]["lineage"]["adapter"]["sha256"] == adapter_sha256(adapter)
        # An abstention before any generation still names the model that would have answered.
        off = rt.ask("What is the boiling point of liquid nitrogen on Neptune?", collection="kb", max_tokens=6)
        assert off.decided_by == "retrieval" and off.lineage == expected
        # No model, no base and no adapter.
        plain = rt.ask(QUESTION, collection="kb", generator="extractive")
        assert plain.lineage == Lineage(generator="extractive") and plain.model == "extractive"
        assert rt.traces.get(plain.trace_id or 0, Principal.system())["params"]["lineage"] == {
            "generator": "extractive", "base": None, "base_sha256": None, "adapter": None}


def test_ask_json_shows_the_adapter_lineage(settings: Any, embedder: Any, adapter: Path,
                                            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with Ragtune(settings, embedder=embedder) as rt:
        rt.ingest_documents([LoadedDocument(uri="handbook.md", text=HANDBOOK)], collection="kb")
    monkeypatch.setenv("RAGTUNE_DATABASE_URL", str(settings.database_url))
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(settings.resolved_cache_dir))
    monkeypatch.chdir(tmp_path)
    code, out, err = invoke("ask", QUESTION, "-c", "kb", "-g", "smollm2", "--adapter", str(adapter),
                            "--max-tokens", "6", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["model"] == f"{SMOLLM2_NAME}+demo-run"
    assert shown["lineage"] == _expected(adapter).to_dict()
