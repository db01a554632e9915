"""What was trained on data an erasure removed (``govern.erasure``), by the lineage recorded at
training time:

* a registered adapter version records the dataset and the content hash of the version it trained
  on (``ragtune.dataset``, ``ragtune.dataset_hash``): a dataset version that lost rows marks it;
* a reranker, reader or answerability model records in its manifest the collection it was mined
  from (``collection``) and its training data's source: an erased document's collection, or an
  erased dataset named there, marks it. (Their lineage is per collection, not per document: every
  version trained on the collection is listed, whether or not it saw the erased document.)

Adapters are held (``ModelRegistry.hold``): ``block`` refuses their promotion; ``flag`` lists them
for retraining. The other models are listed for retraining (they are not promoted, the newest is used).
"""

from __future__ import annotations

import json
from typing import Any

from ragtune.settings import Settings


def affected_models(settings: Settings, datasets: list[dict[str, Any]], collections: list[str], *,
                    erasure: int | None, action: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if datasets:
        out.extend(_adapters(settings, datasets, erasure=erasure, action=action))
    out.extend(_artefacts(settings, datasets, collections))
    return out


def _adapters(settings: Settings, datasets: list[dict[str, Any]], *, erasure: int | None,
              action: str) -> list[dict[str, Any]]:
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:  # no registry without the train extra: nothing registered
        return []
    from ragtune.finetune.lifecycle.registry import ModelRegistry

    registry = ModelRegistry(settings)
    hashes = {(d["dataset"], d["content_hash"]): d for d in datasets}
    out = []
    for v in registry.versions():
        hit = hashes.get((v.dataset, v.dataset_hash))
        if hit is None:
            continue
        reason = {"erasure": erasure, "action": action, "dataset": hit["dataset"], "dataset_version": hit["version"],
                  "rows_erased": hit["rows"]}
        registry.hold(v.name, v.version, reason)
        out.append({"kind": "adapter", "name": v.name, "version": v.version, "production": "production" in v.aliases,
                    "action": "blocked" if action == "block" else "retrain", "why": reason})
    return out


def _artefacts(settings: Settings, datasets: list[dict[str, Any]], collections: list[str]) -> list[dict[str, Any]]:
    from ragtune.generate.answerability import ANSWERABILITY
    from ragtune.generate.reader import READER
    from ragtune.retrieve.rerank import RERANKER
    from ragtune.store.artefacts import ArtefactStore, names

    dataset_names = {d["dataset"] for d in datasets}
    out = []
    for kind in (RERANKER, READER, ANSWERABILITY):
        for name in names(settings.data_dir, kind):
            for artefact in ArtefactStore.of(settings.data_dir, kind, name).versions():
                manifest = artefact.manifest
                source = json.dumps((manifest.get("data") or {}).get("source"))
                collection = manifest.get("collection")
                if collection in collections or any(json.dumps(n) in source for n in dataset_names):
                    out.append({"kind": kind.noun, "name": name, "version": artefact.version, "action": "retrain",
                                "why": {"collection": collection} if collection in collections
                                else {"source": (manifest.get("data") or {}).get("source")}})
    return out
