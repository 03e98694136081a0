"""Kernel Inception Distance (Binkowski et al. 2018) between two sets of Inception features.

    KID = unbiased MMD^2 with the cubic polynomial kernel k(a, b) = (a . b / d + 1)^3

on the same 2048-d pool3 features as FID (``metrics.fid.InceptionFeatures``). Unlike FID it is
unbiased, so it can be compared across set sizes; with ~100 images it is still noisy.
"""
from __future__ import annotations

import numpy as np


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of ``x (m, d)`` and ``y (n, d)`` (m, n >= 2) under k(a, b) = (a.b/d + 1)^3."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"KID needs two (n, d) feature arrays of equal d, got {x.shape} and {y.shape}")
    m, n, d = x.shape[0], y.shape[0], x.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {m} and {n}")
    x, y = x.astype(np.float64), y.astype(np.float64)
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(xx + yy - 2 * k_xy.mean())


def kernel_inception_distance(x: np.ndarray, y: np.ndarray, subset_size: int = 1000, subsets: int = 100,
                              seed: int = 0) -> float:
    """KID: mean of `polynomial_mmd2` over `subsets` random subsets of `subset_size` per set
    (drawn without replacement; one subset of all features when both sets are smaller)."""
    size = min(subset_size, len(x), len(y))
    if size == len(x) == len(y):
        return polynomial_mmd2(x, y)
    rng = np.random.default_rng(seed)
    return float(np.mean([polynomial_mmd2(x[rng.choice(len(x), size, replace=False)],
                                          y[rng.choice(len(y), size, replace=False)]) for _ in range(subsets)]))
