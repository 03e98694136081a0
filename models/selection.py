"""Keeping one of several samples per face (`select: fidelity`).

DifFace's samples of one face differ in the features the prior invents. `faithful_choice` keeps,
for each face, the sample whose coarse content (the image averaged over a GRID x GRID grid of
blocks: shapes and shading, not texture) is nearest a reference: the estimate f(y) or the input.
Measured results: docs/auto_start.md#best-of-several-samples.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

GRID = 16  # blocks per side the samples are compared on (4 px blocks at 64 px, 32 px at 512 px)


def coarse(x: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """(..., 3, S, S) images -> (..., 3, grid, grid) block means."""
    lead = x.shape[:-3]
    return F.adaptive_avg_pool2d(x.float().reshape(-1, *x.shape[-3:]), grid).reshape(*lead, x.shape[-3], grid, grid)


def faithful_choice(samples: torch.Tensor, reference: torch.Tensor, grid: int = GRID) -> torch.Tensor:
    """Index (B,) of the sample of each face nearest `reference` in coarse content.

    samples: (K, B, 3, S, S), K samples of B faces; reference: (B, 3, S, S) on the same scale.
    Ties go to the lower index, so one sample (K = 1) is always index 0.
    """
    if samples.dim() != 5 or samples.shape[1:] != reference.shape:
        raise ValueError(f"samples (K, B, 3, S, S) and reference (B, 3, S, S) expected, "
                         f"got {tuple(samples.shape)} and {tuple(reference.shape)}")
    distance = (coarse(samples, grid) - coarse(reference, grid)[None]).pow(2).flatten(2).mean(2)
    return distance.argmin(0)
