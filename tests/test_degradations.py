"""Degradation ops: kernels, test grid, CelebA-Test degradation, blind training degradation.

Parity with the official outputs (degradation.pt) lives in test_official_parity.py; here we pin
conventions, ranges, sizes and determinism on small images.
"""
import itertools
import math

import numpy as np
import pytest

from datapipe import degradations as D


def _face_like(h=64, w=64, seed=0):
    """Smooth HxWx3 float32 image in [0, 1] (random noise blurred, so JPEG behaves)."""
    rng = np.random.default_rng(seed)
    img = rng.random((h, w, 3), dtype=np.float32)
    return D.blur(img, D.isotropic_gaussian_kernel(7, 2.0)).astype(np.float32)


# ---------------------------------------------------------------- kernels

@pytest.mark.parametrize("args", [(4.0, 8.0, math.pi / 4), (0.1, 15.0, -2.0), (8.0, 4.0, math.pi / 2)])
def test_bivariate_kernel_normalised_and_point_symmetric(args):
    k = D.bivariate_gaussian_kernel(41, *args)
    assert k.shape == (41, 41) and k.dtype == np.float64
    assert abs(k.sum() - 1.0) < 1e-12
    assert np.all(k >= 0)
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-15)  # Gaussian: k(v) = k(-v)
    assert np.unravel_index(k.argmax(), k.shape) == (20, 20)


def test_isotropic_kernel_symmetries():
    k = D.isotropic_gaussian_kernel(41, 3.0)
    assert k.shape == (41, 41) and abs(k.sum() - 1.0) < 1e-12
    for other in (k[::-1], k[:, ::-1], k.T):
        np.testing.assert_allclose(k, other, atol=1e-15)
    np.testing.assert_allclose(k, D.bivariate_gaussian_kernel(41, 3.0, 3.0, 0.7), atol=1e-12)


def test_kernel_axes_x_is_column_y_is_row():
    k = D.bivariate_gaussian_kernel(41, 8.0, 2.0, 0.0)  # wide along x = columns
    assert k[20, 30] > k[30, 20]
    # theta = pi/2 swaps the axes
    np.testing.assert_allclose(D.bivariate_gaussian_kernel(41, 8.0, 2.0, math.pi / 2),
                               D.bivariate_gaussian_kernel(41, 2.0, 8.0, 0.0), atol=1e-12)


def test_kernel_size_must_be_odd():
    with pytest.raises(ValueError, match="odd"):
        D.isotropic_gaussian_kernel(40, 2.0)


# ---------------------------------------------------------------- elementary ops

def test_round_to_uint8_levels():
    levels = np.arange(256, dtype=np.float32).reshape(16, 16, 1).repeat(3, 2) / 255.0
    np.testing.assert_array_equal(D.round_to_uint8_levels(levels), levels)
    x = np.array([-0.2, 0.0, 0.4 / 255, 0.6 / 255, 1.0, 1.3], np.float32).reshape(1, 6, 1)
    out = D.round_to_uint8_levels(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(np.rint(out * 255).ravel(), [0, 0, 0, 1, 255, 255])
    np.testing.assert_array_equal(D.round_to_uint8_levels(out), out)


def test_jpeg_channel_order_and_levels():
    rgb = _face_like()
    out_rgb = D.jpeg(rgb, 40, bgr=False)
    out_bgr = D.jpeg(np.ascontiguousarray(rgb[:, :, ::-1]), 40, bgr=True)
    np.testing.assert_array_equal(out_rgb, out_bgr[:, :, ::-1])
    assert out_rgb.dtype == np.float32 and out_rgb.shape == rgb.shape
    np.testing.assert_array_equal(out_rgb * 255, np.rint(out_rgb * 255))
    assert np.abs(out_rgb - rgb).mean() < 0.05
    with pytest.raises(ValueError, match="quality"):
        D.jpeg(rgb, 40.5, bgr=False)


def test_gaussian_noise_is_clipped_and_seeded():
    img = np.full((64, 64, 3), 0.5, np.float32)
    a = D.add_gaussian_noise(img, 20.0, np.random.default_rng(1))
    b = D.add_gaussian_noise(img, 20.0, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert abs((a - img).std() - 20 / 255) < 0.01
    edge = D.add_gaussian_noise(np.ones((8, 8, 3), np.float32), 50.0, np.random.default_rng(2))
    assert edge.max() <= 1.0 and edge.min() >= 0.0 and edge.dtype == np.float32


# ---------------------------------------------------------------- CelebA-Test degradation

def test_celeba_grid_size_and_order():
    grid = D.celeba_test_grid()
    assert len(grid) == 4000
    expected = itertools.product(D.GRID_QF, D.GRID_SF, D.GRID_NF, D.GRID_SIG, D.GRID_THETA)
    for p, (qf, sf, nf, sig_x, theta) in zip(grid, expected):
        assert (p.qf, p.sf, p.nf, p.sig_x, p.theta) == (qf, sf, nf, sig_x, theta)
        assert p.sig_y in D.GRID_SIG
    assert grid[0] == D.FaceTestParams(4, 4.0, grid[0].sig_y, 0.0, 1.0, 30)
    assert (grid[-1].qf, grid[-1].sf, grid[-1].theta) == (70, 40, 3 * math.pi / 4)
    assert all(sum(p.sf == sf for p in grid) == 400 for sf in D.GRID_SF)
    assert {p.sig_y for p in grid} == set(D.GRID_SIG)
    assert D.celeba_test_grid() == D.celeba_test_grid(10000) != D.celeba_test_grid(1)  # the official seed


def test_face_test_degradation_sizes_sf40():
    hq = _face_like(512, 512)
    out = D.face_test_degradation(hq, 40, 8.0, 12.0, math.pi / 4, 0.0, 50)
    assert out["lq_down"].shape == (12, 12, 3) and out["lq_jpeg"].shape == (12, 12, 3)
    assert out["lq"].shape == hq.shape and out["lq"].dtype == np.float32
    assert out["blur_kernel"].shape == (41, 41)
    np.testing.assert_array_equal(out["lq"], D.round_to_uint8_levels(out["lq"]))


def test_face_test_degradation_noise_needs_rng_and_is_seeded():
    hq = _face_like()
    with pytest.raises(ValueError, match="rng"):
        D.face_test_degradation(hq, 4, 2.0, 2.0, 0.0, 10.0, 70)
    a = D.face_test_degradation(hq, 4, 2.0, 2.0, 0.0, 10.0, 70, rng=np.random.default_rng(5))
    b = D.face_test_degradation(hq, 4, 2.0, 2.0, 0.0, 10.0, 70, rng=np.random.default_rng(5))
    clean = D.face_test_degradation(hq, 4, 2.0, 2.0, 0.0, 0.0, 70)
    np.testing.assert_array_equal(a["lq"], b["lq"])
    assert not np.array_equal(a["lq"], clean["lq"])
    np.testing.assert_array_equal(a["lq_down"], clean["lq_down"])


# ---------------------------------------------------------------- blind training degradation

def test_blind_config_validation():
    with pytest.raises(ValueError, match="downsample_range"):
        D.BlindDegradationConfig(downsample_range=[4.0, 2.0])
    with pytest.raises(ValueError, match="kernel_list"):
        D.BlindDegradationConfig(kernel_list=["iso", "sinc"])
    with pytest.raises(ValueError, match="kernel_prob"):
        D.BlindDegradationConfig(kernel_prob=[0.7, 0.7])
    with pytest.raises(ValueError, match="jpeg_range"):
        D.BlindDegradationConfig(jpeg_range=[30, 120])
    with pytest.raises(ValueError, match="blur_kernel_size"):
        D.BlindDegradationConfig(blur_kernel_size=40)


def test_blind_kernel_draws_respect_ranges():
    deg = D.BlindDegradation(D.BlindDegradationConfig())
    rng = np.random.default_rng(123)
    types = []
    for _ in range(300):
        kernel, p = deg.sample_kernel(rng)
        types.append(p["kernel_type"])
        assert kernel.shape == (41, 41) and abs(kernel.sum() - 1) < 1e-12
        assert 0.1 <= p["sig_x"] <= 15 and 0.1 <= p["sig_y"] <= 15
        assert -math.pi <= p["theta"] <= math.pi
        if p["kernel_type"] == "iso":
            assert p["sig_x"] == p["sig_y"] and p["theta"] == 0.0
    assert 100 < types.count("iso") < 200


def test_blind_degradation_ranges_sizes_levels():
    deg = D.BlindDegradation(D.BlindDegradationConfig())
    hq = _face_like(64, 48)
    rng = np.random.default_rng(7)
    seen = {"hflip": set(), "kernel_type": set()}
    for _ in range(120):
        lq, gt, p = deg(hq, rng)
        assert lq.shape == hq.shape == gt.shape and lq.dtype == np.float32
        assert 0.0 <= lq.min() and lq.max() <= 1.0
        np.testing.assert_array_equal(lq * 255, np.rint(lq * 255))
        assert 0.8 <= p["scale"] <= 32
        assert p["lq_size"] == (max(1, int(48 // p["scale"])), max(1, int(64 // p["scale"])))
        assert 0 <= p["noise_sigma"] <= 20
        assert isinstance(p["jpeg_quality"], int) and 30 <= p["jpeg_quality"] <= 100
        if not p["gray"]:
            np.testing.assert_array_equal(gt, hq[:, ::-1] if p["hflip"] else hq)
        seen["hflip"].add(p["hflip"])
        seen["kernel_type"].add(p["kernel_type"])
    assert seen == {"hflip": {True, False}, "kernel_type": {"iso", "aniso"}}


def test_blind_degradation_is_reproducible_from_seed():
    deg = D.BlindDegradation(D.BlindDegradationConfig())
    hq = _face_like()
    lq1, gt1, p1 = deg(hq, np.random.default_rng(42))
    lq2, gt2, p2 = deg(hq, np.random.default_rng(42))
    lq3, _, p3 = deg(hq, np.random.default_rng(43))
    np.testing.assert_array_equal(lq1, lq2)
    np.testing.assert_array_equal(gt1, gt2)
    assert p1 == p2 and p1 != p3 and not np.array_equal(lq1, lq3)


@pytest.mark.parametrize("gt_gray", [True, False])
def test_blind_grey_makes_lq_and_gt_grey(gt_gray):
    cfg = D.BlindDegradationConfig(gray_prob=1.0, gt_gray=gt_gray, use_hflip=False,
                                   downsample_range=[2.0, 2.0])
    hq = _face_like()
    lq, gt, p = D.BlindDegradation(cfg)(hq, np.random.default_rng(0))
    assert p["gray"] and p["lq_size"] == (32, 32)
    assert np.array_equal(lq[..., 0], lq[..., 1]) and np.array_equal(lq[..., 1], lq[..., 2])
    gt_is_grey = np.array_equal(gt[..., 0], gt[..., 1]) and np.array_equal(gt[..., 0], gt[..., 2])
    assert gt_is_grey == gt_gray
    if gt_gray:
        np.testing.assert_allclose(gt[..., 0], hq @ np.array([0.299, 0.587, 0.114], np.float32), atol=1e-5)
    else:
        np.testing.assert_array_equal(gt, hq)


def test_blind_optional_steps_skipped():
    cfg = D.BlindDegradationConfig(noise_range=None, jpeg_range=None, gray_prob=0.0)
    lq, _, p = D.BlindDegradation(cfg)(_face_like(), np.random.default_rng(0))
    assert p["noise_sigma"] is None and p["jpeg_quality"] is None and not p["gray"]
