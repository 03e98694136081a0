"""KID: the unbiased polynomial-kernel MMD^2, checked against a direct double sum."""
import itertools

import numpy as np
import pytest

from metrics.kid import kernel_inception_distance, polynomial_mmd2


def _direct(x, y):
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = np.mean([k(x[i], x[j]) for i, j in itertools.permutations(range(len(x)), 2)])
    yy = np.mean([k(y[i], y[j]) for i, j in itertools.permutations(range(len(y)), 2)])
    xy = np.mean([k(a, b) for a in x for b in y])
    return xx + yy - 2 * xy


def test_matches_the_direct_sum_and_is_near_zero_for_one_distribution():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.normal(1.0, 1.0, size=(9, 5))
    assert polynomial_mmd2(x, y) == pytest.approx(_direct(x, y), rel=1e-10)
    assert polynomial_mmd2(x, y) > 0.5
    same = [polynomial_mmd2(rng.normal(size=(200, 5)), rng.normal(size=(200, 5))) for _ in range(5)]
    assert abs(np.mean(same)) < 0.05


def test_subsets_and_bad_input():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 4)), rng.normal(size=(20, 4))
    assert kernel_inception_distance(x[:20], y) == pytest.approx(polynomial_mmd2(x[:20], y))
    assert np.isfinite(kernel_inception_distance(x, y, subset_size=10, subsets=5))
    with pytest.raises(ValueError, match="at least 2"):
        polynomial_mmd2(x[:1], y)
