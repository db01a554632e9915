"""A trained answerability model: can this passage answer this question?

Abstention by support (lexical + embedding evidence, ``grounding``) catches questions about
things the documents never mention, but not SQuAD 2.0's adversarial unanswerables, which are
written against a paragraph and look like it (measured: mean support 0.574 answerable vs 0.594
unanswerable). This model reads ``[CLS] question [SEP] passage [SEP]`` jointly with MiniLM and
a small head over the [CLS] state, the mean-pooled question tokens and their product with the
mean-pooled passage tokens. ``ragtune answerability train`` (``ragtune.finetune.answerability``)
trains it on SQuAD 2.0 and stores the abstention threshold chosen on held-out articles.

A trained model is a version in the artefact store (``ragtune.store.artefacts``,
``<data_dir>/models/answerability/v<N>/``: the folder it had before the store): the encoder, its
tokenizer, ``head.json`` and the manifest, which is read and checked at construction (cheap); the
network loads on first use.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError, ModelError
from ragtune.ingest.quiet import quiet_model_loading
from ragtune.store.artefacts import MANIFEST, ArtefactKind, ArtefactStore, read_manifest

HEAD = "head.json"
DEFAULT_NAME = "answerability"  # one model per project so far (``ask --answerability latest``)
# How ``finetune.answerability.split_by_group`` holds articles out; also what an upgraded manifest
# (written before the artefact store, by the same rule) records.
SPLIT_RULE = ("by SQuAD article: articles whose sha256('ragtune-answerability', title) has an odd first byte "
              "are held out (to choose the threshold), the others trained on")


def _upgrade(manifest: dict[str, Any]) -> dict[str, Any]:
    """A manifest written before the artefact store (counts, losses, threshold at the top) in
    today's sections."""
    moved = ("examples", "validation_examples", "source", "train_seconds", "train_loss", "validation", "threshold",
             "hyperparameters")
    validation = dict(manifest.get("validation") or {})
    validation.pop("threshold", None)
    return {
        **{k: v for k, v in manifest.items() if k not in moved},
        "data": {"sha256": None, "rows": manifest.get("examples", 0), "held_out": manifest.get("validation_examples"),
                 "source": manifest.get("source"), "split": SPLIT_RULE},
        "metrics": {"train_seconds": manifest.get("train_seconds"), "train_loss": manifest.get("train_loss"),
                    "held_out": validation},
        "thresholds": {"abstain_below": manifest.get("threshold")},
        "hyperparameters": manifest.get("hyperparameters") or {},
    }


ANSWERABILITY = ArtefactKind(
    kind="ragtune-answerability",
    format=1,
    root="models",
    noun="answerability model",
    train_command="ragtune answerability train",
    upgrade=_upgrade,
)


def answerability_store(data_dir: str | Path, name: str = DEFAULT_NAME) -> ArtefactStore:
    return ArtefactStore.of(data_dir, ANSWERABILITY, name)


class AnswerabilityNet:
    """MiniLM over (question, passage) pairs with a linear head; gives logits (answerable > 0)."""

    def __init__(self, encoder: Any, tokenizer: Any, head: Any, *, max_length: int) -> None:
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.head = head
        self.max_length = max_length

    @classmethod
    def fresh(cls, base: Path, *, max_length: int) -> AnswerabilityNet:
        import torch
        from transformers import AutoModel, AutoTokenizer

        with quiet_model_loading():
            tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
            encoder = AutoModel.from_pretrained(str(base), local_files_only=True)
        torch.manual_seed(0)
        head = torch.nn.Linear(3 * encoder.config.hidden_size, 1)
        return cls(encoder, tokenizer, head, max_length=max_length)

    @classmethod
    def load(cls, path: Path) -> AnswerabilityNet:
        import torch
        from transformers import AutoModel, AutoTokenizer

        spec = json.loads((path / HEAD).read_text(encoding="utf-8"))
        with quiet_model_loading():
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            encoder = AutoModel.from_pretrained(str(path), local_files_only=True)
        weight = torch.tensor(spec["weight"], dtype=torch.float32)
        head = torch.nn.Linear(weight.shape[1], 1)
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(torch.tensor(spec["bias"], dtype=torch.float32))
        return cls(encoder, tokenizer, head, max_length=int(spec["max_length"]))

    def save(self, path: Path) -> None:
        with quiet_model_loading():
            self.encoder.save_pretrained(str(path))
            self.tokenizer.save_pretrained(str(path))
        spec = {"weight": self.head.weight.detach().tolist(), "bias": self.head.bias.detach().tolist(),
                "max_length": self.max_length}
        (path / HEAD).write_text(json.dumps(spec) + "\n", encoding="utf-8")

    def parameters(self) -> list[Any]:
        return [*self.encoder.parameters(), *self.head.parameters()]

    def __call__(self, questions: list[str], passages: list[str]) -> Any:
        import torch

        batch = self.tokenizer(questions, passages, truncation="only_second", max_length=self.max_length,
                               padding=True, return_tensors="pt")
        states = self.encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        second = batch["token_type_ids"].unsqueeze(-1).to(states.dtype)
        q_mask, p_mask = mask * (1 - second), mask * second
        q_vec = (states * q_mask).sum(1) / q_mask.sum(1).clamp(min=1)
        p_vec = (states * p_mask).sum(1) / p_mask.sum(1).clamp(min=1)
        features = torch.cat([states[:, 0], q_vec, q_vec * p_vec], dim=-1)
        return self.head(features).squeeze(-1)

    def probabilities(self, questions: list[str], passages: list[str], batch_size: int = 32) -> list[float]:
        import torch

        self.encoder.eval()
        out: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(questions), batch_size):
                logits = self(questions[start:start + batch_size], passages[start:start + batch_size])
                out.extend(float(p) for p in torch.sigmoid(logits))
        return out


class AnswerabilityModel:
    """The probability that the best retrieved passages answer a question; abstain below
    ``threshold`` (the one stored at training time unless given)."""

    def __init__(self, path: str | Path, *, threshold: float | None = None, passages: int = 1) -> None:
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"answerability threshold must be between 0 and 1, got {threshold}")
        if passages < 1:
            raise ConfigError(f"answerability passages must be at least 1, got {passages}")
        self.path = Path(path).expanduser()
        self.manifest = read_manifest(self.path, ANSWERABILITY)
        stored = self.manifest["thresholds"].get("abstain_below")
        self.threshold = float(threshold if threshold is not None else stored if stored is not None else 0.5)
        if not math.isfinite(self.threshold):
            raise ModelError(f"{self.path / MANIFEST}: threshold {stored!r} is not a number")
        self.passages = passages
        self._net: AnswerabilityNet | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"{self.manifest.get('name', 'answerability')}/v{self.manifest.get('version', '?')}"

    @property
    def net(self) -> AnswerabilityNet:
        if self._net is None:
            with self._lock:
                if self._net is None:
                    try:
                        self._net = AnswerabilityNet.load(self.path)
                    except Exception as exc:  # a broken folder fails in many library-specific ways
                        raise ModelError(f"cannot load the answerability model in {self.path}: "
                                         f"{type(exc).__name__}: {exc}") from exc
        return self._net

    def probability(self, question: str, passages: Sequence[str]) -> float:
        """The highest probability over the first ``passages`` passages (0 when there are none)."""
        chosen = [p for p in passages[: self.passages] if p.strip()]
        if not chosen:
            return 0.0
        return max(self.net.probabilities([question] * len(chosen), chosen))


def load_answerability(data_dir: str | Path, version: int | None = None, **options: Any) -> AnswerabilityModel:
    """The project's answerability model (the latest version by default); the network loads on first use."""
    return AnswerabilityModel(answerability_store(data_dir).get(version).path, **options)
