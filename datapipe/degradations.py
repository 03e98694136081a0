"""Synthetic degradations: pure operations with an explicit random generator.

Every operation works on HxWx3 **float32 numpy arrays with values in [0, 1]**. The official
code (basicsr / GFPGAN, DifFace ``face_degradation``) works on BGR arrays. Blur, resize, noise
and rounding do not care about the channel order; JPEG does (OpenCV encodes BGR), so
:func:`jpeg` is told the order with ``bgr=`` and returns the same order it was given; greyscale
conversion in :class:`BlindDegradation` assumes RGB (the code's convention).

* :func:`face_test_degradation` - the deterministic CelebA-Test degradation
  (docs/method.md#celeba-test-degradation);
  reproduces the official outputs (``fixtures/official/degradation.pt``).
* :class:`BlindDegradation` - the random training degradation of the estimator
  (docs/method.md#training-degradation).
* :func:`celeba_test_grid` - the 4000 parameter combinations of the journal test set.

All randomness of the training degradation comes from a ``numpy.random.Generator`` passed in
by the caller (the official code used NumPy's global state, so only the distributions are the
same). The test grid replays the official ``random`` draws of sig_y exactly.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from numbers import Integral
from typing import List, NamedTuple, Optional

import cv2
import numpy as np

# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


def _offset_grid(size: int) -> np.ndarray:
    """(size, size, 2) float64 grid of integer offsets; [..., 0] = column (x), [..., 1] = row (y)."""
    if size < 1 or size % 2 != 1:
        raise ValueError(f"kernel size must be a positive odd integer, got {size}")
    ax = np.arange(-size // 2 + 1.0, size // 2 + 1.0)
    xx, yy = np.meshgrid(ax, ax)
    return np.stack([xx, yy], axis=-1)


def _gaussian_on_grid(sigma_matrix: np.ndarray, size: int) -> np.ndarray:
    """exp(-1/2 v^T Sigma^-1 v) on the offset grid, normalised to sum 1 (basicsr ``pdf2``)."""
    grid = _offset_grid(size)
    inverse_sigma = np.linalg.inv(sigma_matrix)
    kernel = np.exp(-0.5 * np.sum(np.dot(grid, inverse_sigma) * grid, 2))
    return kernel / np.sum(kernel)


def bivariate_gaussian_kernel(size: int, sig_x: float, sig_y: float, theta: float) -> np.ndarray:
    """Anisotropic Gaussian blur kernel (basicsr ``bivariate_Gaussian``, isotropic=False).

    Sigma = R(theta) diag(sig_x^2, sig_y^2) R(theta)^T with R = [[cos, -sin], [sin, cos]];
    x is the column offset, y the row offset, both integers in -(size//2)..size//2.

    Returns:
        (size, size) float64 array, sum 1.
    """
    d_matrix = np.array([[sig_x**2, 0], [0, sig_y**2]])
    u_matrix = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    sigma_matrix = np.dot(u_matrix, np.dot(d_matrix, u_matrix.T))
    return _gaussian_on_grid(sigma_matrix, size)


def isotropic_gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """Isotropic Gaussian blur kernel (basicsr ``bivariate_Gaussian``, isotropic=True).

    Returns:
        (size, size) float64 array, sum 1.
    """
    return _gaussian_on_grid(np.array([[sigma**2, 0], [0, sigma**2]]), size)


# --------------------------------------------------------------------------------------------
# Elementary operations (HxWx3 float32, [0, 1])
# --------------------------------------------------------------------------------------------


def blur(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Filter with ``kernel`` (``cv2.filter2D``, border reflect-101). HxWx3 float32 -> same."""
    return cv2.filter2D(img, -1, kernel)


def resize_bilinear(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (``cv2.INTER_LINEAR``) to ``size = (width, height)``. HxWx3 float32."""
    w, h = int(size[0]), int(size[1])
    if w < 1 or h < 1:
        raise ValueError(f"resize target (width, height) = ({w}, {h}) must be at least 1x1")
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)


def add_gaussian_noise(img: np.ndarray, sigma_255: float, rng: np.random.Generator) -> np.ndarray:
    """Add N(0, (sigma_255/255)^2) noise independently per pixel and channel; clip to [0, 1].

    No rounding. Draws ``img.size`` standard normals from ``rng``. HxWx3 float32 -> same.
    """
    noise = rng.standard_normal(img.shape).astype(np.float32) * np.float32(sigma_255 / 255.0)
    return np.clip(img + noise, 0.0, 1.0)


def jpeg(img: np.ndarray, quality: int, bgr: bool) -> np.ndarray:
    """JPEG-compress and decode with OpenCV (basicsr ``add_jpg_compression``).

    Args:
        img: HxWx3 float32 in [0, 1] (clipped first); channel order given by ``bgr``.
        quality: integer JPEG quality 0..100 (cast float draws with ``int()`` before calling).
        bgr: True if ``img`` is BGR (as in the official code), False if RGB.
    Returns:
        HxWx3 float32, multiples of 1/255, in the same channel order as ``img``.
    """
    if not isinstance(quality, Integral) or not 0 <= quality <= 100:
        raise ValueError(f"JPEG quality must be an integer in 0..100, got {quality!r}")
    img = np.clip(img, 0.0, 1.0)
    bgr_img = img if bgr else img[:, :, ::-1]
    # OpenCV's own float -> uint8 conversion (round half to even, saturate), made explicit.
    as_uint8 = np.clip(np.rint(bgr_img * np.float32(255.0)), 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", as_uint8, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise RuntimeError("OpenCV failed to JPEG-encode the image")
    decoded = np.float32(cv2.imdecode(encoded, cv2.IMREAD_COLOR)) / 255.0
    return np.ascontiguousarray(decoded if bgr else decoded[:, :, ::-1])


def round_to_uint8_levels(img: np.ndarray) -> np.ndarray:
    """clip(round(img*255), 0, 255) / 255 with round half to even. Float32 in, float32 out."""
    return (np.clip(np.round(img * np.float32(255.0)), 0, 255) / np.float32(255.0)).astype(np.float32)


def to_gray3(img: np.ndarray) -> np.ndarray:
    """RGB HxWx3 float32 -> luma (0.299 R + 0.587 G + 0.114 B) replicated to 3 channels."""
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return np.repeat(gray[:, :, None], 3, axis=2)


# --------------------------------------------------------------------------------------------
# CelebA-Test degradation (docs/method.md#celeba-test-degradation)
# --------------------------------------------------------------------------------------------


def face_test_degradation(hq: np.ndarray, sf: float, sig_x: float, sig_y: float, theta: float,
                          nf: float, qf: int, rng: Optional[np.random.Generator] = None,
                          bgr: bool = True, kernel_size: int = 41) -> dict:
    """The official ``face_degradation`` of the CelebA-Test synthesis, step by step.

    blur (aniso Gaussian, size 41) -> bilinear down to (int(w // sf), int(h // sf)) ->
    Gaussian noise nf/255 (clipped) -> JPEG quality qf -> bilinear up to (w, h) -> 8-bit levels.

    Args:
        hq: HxWx3 float32 in [0, 1]; BGR if ``bgr`` (as the official script), else RGB.
        rng: source of the noise; may be None only when ``nf == 0``.
    Returns:
        dict with
        ``blur_kernel`` (41, 41) float64;
        ``lq_down`` (h', w', 3) float32 after blur + downsampling;
        ``lq_jpeg`` (h', w', 3) float32 after noise + JPEG (multiples of 1/255);
        ``lq`` (h, w, 3) float32 in [0, 1], multiples of 1/255.
        All images keep the channel order of ``hq``.
    """
    if not 0 <= qf <= 100 or int(qf) != qf:
        raise ValueError(f"qf must be an integer JPEG quality in 0..100, got {qf!r}")
    if nf != 0 and rng is None:
        raise ValueError(f"noise level nf={nf} needs a numpy Generator (rng)")
    h, w = hq.shape[:2]
    kernel = bivariate_gaussian_kernel(kernel_size, sig_x, sig_y, theta)
    lq_down = resize_bilinear(blur(hq, kernel), (int(w // sf), int(h // sf)))
    if rng is None:
        lq_noisy = np.clip(lq_down, 0.0, 1.0)
    else:
        lq_noisy = add_gaussian_noise(lq_down, nf, rng)
    lq_jpeg = jpeg(lq_noisy, int(qf), bgr=bgr)
    lq = round_to_uint8_levels(resize_bilinear(lq_jpeg, (w, h)))
    return {"blur_kernel": kernel, "lq_down": lq_down, "lq_jpeg": lq_jpeg, "lq": lq}


class FaceTestParams(NamedTuple):
    """Parameters of :func:`face_test_degradation` for one test image."""

    sf: int
    sig_x: float
    sig_y: float
    theta: float
    nf: float
    qf: int


GRID_QF = (30, 40, 50, 60, 70)
GRID_SF = (4, 8, 12, 16, 20, 24, 28, 32, 36, 40)
GRID_NF = (1.0, 5.0, 10.0, 15.0, 20.0)
GRID_SIG = (4.0, 8.0, 12.0, 16.0)
GRID_THETA = (0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4)


def celeba_test_grid(seed: int = 10000) -> List[FaceTestParams]:
    """The 4000 journal (TPAMI) CelebA-Test combinations, in the official loop order.

    qf -> sf -> nf -> sig_x -> theta (innermost); combination k belongs to image k of the
    sorted input list. sig_y is drawn per combination as the official script draws it:
    ``random.seed(seed); random.choice([4, 8, 12, 16])`` in loop order (seed 10000), so the
    values equal the official test set's.
    """
    choices = random.Random(seed)
    grid = []
    for qf in GRID_QF:
        for sf in GRID_SF:
            for nf in GRID_NF:
                for sig_x in GRID_SIG:
                    for theta in GRID_THETA:
                        sig_y = float(choices.choice([int(s) for s in GRID_SIG]))
                        grid.append(FaceTestParams(sf, sig_x, sig_y, theta, nf, qf))
    return grid


# --------------------------------------------------------------------------------------------
# Blind training degradation (docs/method.md#training-degradation)
# --------------------------------------------------------------------------------------------

KERNEL_TYPES = ("iso", "aniso")


@dataclass
class BlindDegradationConfig:
    """Ranges of the GFPGAN-style training degradation (defaults = official SwinIR config).

    Ranges are [low, high] lists (uniform draws). ``noise_range`` / ``jpeg_range`` = None
    skip that step.
    """

    blur_kernel_size: int = 41
    kernel_list: List[str] = field(default_factory=lambda: ["iso", "aniso"])
    kernel_prob: List[float] = field(default_factory=lambda: [0.5, 0.5])
    blur_sigma: List[float] = field(default_factory=lambda: [0.1, 15.0])
    downsample_range: List[float] = field(default_factory=lambda: [0.8, 32.0])
    noise_range: Optional[List[float]] = field(default_factory=lambda: [0.0, 20.0])
    jpeg_range: Optional[List[float]] = field(default_factory=lambda: [30.0, 100.0])
    gray_prob: float = 0.01
    use_hflip: bool = True
    gt_gray: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if self.blur_kernel_size < 1 or self.blur_kernel_size % 2 != 1:
            raise ValueError(f"blur_kernel_size must be a positive odd integer, got {self.blur_kernel_size}")
        unknown = [k for k in self.kernel_list if k not in KERNEL_TYPES]
        if unknown or not self.kernel_list:
            raise ValueError(f"kernel_list {list(self.kernel_list)}: allowed types are {KERNEL_TYPES}")
        probs = list(self.kernel_prob)
        if len(probs) != len(self.kernel_list) or min(probs) < 0 or not math.isclose(sum(probs), 1.0):
            raise ValueError(f"kernel_prob {probs} must have one non-negative entry per kernel "
                             f"type ({len(self.kernel_list)}) and sum to 1")
        _check_range("blur_sigma", self.blur_sigma, low=1e-12)
        _check_range("downsample_range", self.downsample_range, low=1e-12)
        if self.noise_range is not None:
            _check_range("noise_range", self.noise_range, low=0.0)
        if self.jpeg_range is not None:
            _check_range("jpeg_range", self.jpeg_range, low=0.0, high=100.0)
        if not 0.0 <= self.gray_prob <= 1.0:
            raise ValueError(f"gray_prob must lie in [0, 1], got {self.gray_prob}")


def _check_range(name: str, rng_range, low: float, high: float = math.inf) -> None:
    if len(rng_range) != 2 or not low <= rng_range[0] <= rng_range[1] <= high:
        raise ValueError(f"{name} must be [low, high] with {low} <= low <= high <= {high}, "
                         f"got {list(rng_range)}")


class BlindDegradation:
    """Random synthetic degradation for training the estimator (docs/method.md#training-degradation).

    flip -> blur (iso/aniso Gaussian) -> bilinear down by a random scale -> Gaussian noise ->
    JPEG (int quality) -> bilinear up -> optional greyscale (GT too if ``gt_gray``) ->
    LQ rounded to 8-bit levels.

    Draw order from ``rng`` (documented for reproducibility): flip (if use_hflip), kernel type,
    sigma (iso) or sig_x, sig_y, theta (aniso), scale, noise sigma then the noise field
    (if noise_range), JPEG quality (if jpeg_range), greyscale.
    """

    def __init__(self, config: BlindDegradationConfig):
        config.validate()
        self.cfg = config

    def sample_kernel(self, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """Random blur kernel and its parameters (kernel_type, sig_x, sig_y, theta)."""
        cfg = self.cfg
        kernel_type = str(rng.choice(list(cfg.kernel_list), p=list(cfg.kernel_prob)))
        if kernel_type == "iso":
            sig_x = sig_y = float(rng.uniform(*cfg.blur_sigma))
            theta = 0.0
            kernel = isotropic_gaussian_kernel(cfg.blur_kernel_size, sig_x)
        else:
            sig_x = float(rng.uniform(*cfg.blur_sigma))
            sig_y = float(rng.uniform(*cfg.blur_sigma))
            theta = float(rng.uniform(-math.pi, math.pi))
            kernel = bivariate_gaussian_kernel(cfg.blur_kernel_size, sig_x, sig_y, theta)
        return kernel, {"kernel_type": kernel_type, "sig_x": sig_x, "sig_y": sig_y, "theta": theta}

    def __call__(self, hq: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
        """Degrade one HQ image.

        Args:
            hq: HxWx3 float32 numpy array, **RGB**, [0, 1].
            rng: numpy Generator; the only source of randomness.
        Returns:
            ``(lq, gt, params)``: lq HxWx3 float32 RGB in [0, 1] on 8-bit levels; gt HxWx3
            float32 RGB (the flipped and possibly greyed HQ); params a dict of the drawn values
            (hflip, kernel_type, sig_x, sig_y, theta, scale, lq_size (w, h), noise_sigma,
            jpeg_quality, gray).
        """
        cfg = self.cfg
        h, w = hq.shape[:2]
        params: dict = {"hflip": bool(cfg.use_hflip and rng.random() < 0.5)}
        gt = np.ascontiguousarray(hq[:, ::-1] if params["hflip"] else hq, dtype=np.float32)
        kernel, kernel_params = self.sample_kernel(rng)
        params.update(kernel_params)
        params["scale"] = float(rng.uniform(*cfg.downsample_range))
        # max(1, .) only matters for images far smaller than the official 512x512.
        params["lq_size"] = (max(1, int(w // params["scale"])), max(1, int(h // params["scale"])))
        lq = resize_bilinear(blur(gt, kernel), params["lq_size"])
        params["noise_sigma"] = None
        if cfg.noise_range is not None:
            params["noise_sigma"] = float(rng.uniform(*cfg.noise_range))
            lq = add_gaussian_noise(lq, params["noise_sigma"], rng)
        params["jpeg_quality"] = None
        if cfg.jpeg_range is not None:
            params["jpeg_quality"] = int(rng.uniform(*cfg.jpeg_range))
            lq = jpeg(lq, params["jpeg_quality"], bgr=False)
        lq = resize_bilinear(lq, (w, h))
        params["gray"] = bool(rng.random() < cfg.gray_prob)
        if params["gray"]:
            lq = to_gray3(lq)
            gt = to_gray3(gt) if cfg.gt_gray else gt
        return round_to_uint8_levels(lq), gt, params
