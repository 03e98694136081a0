"""What the trainer measures between steps: validation scores, the best score so far (for
``best.pt``) and the rows of the image grid. Free functions of explicit inputs; each draws its
randomness (the prior's t and noise) from a generator seeded with ``seed``, so every
validation and every grid of a run sees the same draws."""
from __future__ import annotations

import logging
from typing import Callable, ContextManager, Optional

import torch
from torch.utils.data import DataLoader

from .config import LOWER_IS_BETTER

log = logging.getLogger("trainer")


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch with its floating-point tensors (images, masks) on ``device``; the rest as it is."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) and v.is_floating_point() else v
            for k, v in batch.items()}


@torch.no_grad()
def validate(model: torch.nn.Module, objective, loader: DataLoader, device: torch.device,
             autocast: Callable[[], ContextManager], seed: int) -> dict[str, float]:
    """Mean of ``objective.evaluate``'s per-image scores over ``loader``: image metrics for an
    estimator, the loss terms for the prior."""
    model.eval()
    generator = torch.Generator(device).manual_seed(seed)
    scores: dict[str, list[float]] = {}
    for batch in loader:
        with autocast():
            for k, v in objective.evaluate(model, to_device(batch, device), generator).items():
                scores.setdefault(k, []).extend(v)
    return {k: sum(v) / len(v) for k, v in scores.items()}


def improves(scores: dict[str, float], metric: str, best: Optional[dict]) -> bool:
    """Whether ``scores[metric]`` beats the ``best`` record (``{'metric', 'value', 'step'}`` or
    None); lower is better for the metrics in ``LOWER_IS_BETTER``. A metric missing from the
    scores never does (with a warning)."""
    if metric not in scores:
        log.warning("log.best_metric %r is not among the validation scores %s: no best.pt", metric, sorted(scores))
        return False
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    return best is None or not sign * scores[metric] <= sign * best["value"]


@torch.no_grad()
def image_rows(model: torch.nn.Module, objective, batch: dict, n: int, device: torch.device,
               autocast: Callable[[], ContextManager], seed: int) -> list[torch.Tensor]:
    """The objective's grid rows for the first ``n`` images of ``batch``, each (n, 3, H, W) RGB [0, 1]."""
    model.eval()
    small = to_device({k: v[:n] for k, v in batch.items()}, device)
    generator = torch.Generator(device).manual_seed(seed)
    with autocast():
        return objective.images(model, small, generator)
