"""PSNR and SSIM on uint8 images, RGB or the luma (Y) channel (docs/method.md#metrics).

Conventions of the official code (basicsr's ``calculate_psnr`` / ``calculate_ssim``):
* Y channel: MATLAB ``rgb2ycbcr``, ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` with
  ``R, G, B`` in ``[0, 255]``; Y is kept as float (not rounded).
* SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, ``C1 = (0.01 * 255)^2``,
  ``C2 = (0.03 * 255)^2``, the SSIM map over the *valid* region (5 pixels trimmed on each
  side), averaged per channel, then over channels.
* ``crop_border`` pixels are removed from every side before either metric.
"""
from __future__ import annotations

import cv2
import numpy as np

from .common import Measurement, check_pair

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` RGB in ``[0, 255]`` -> ``(H, W)`` float64 Y (BT.601 studio range 16..235)."""
    return 16.0 + img.astype(np.float64) @ _Y_WEIGHTS


def _prepare(restored: np.ndarray, gt: np.ndarray, crop_border: int, y_channel: bool):
    """Check, crop and convert a pair to float64 ``(H, W, C)`` arrays on ``[0, 255]``."""
    check_pair(restored, gt)
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        restored = restored[crop_border:-crop_border, crop_border:-crop_border]
        gt = gt[crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        return rgb_to_y(restored)[..., None], rgb_to_y(gt)[..., None]
    return restored.astype(np.float64), gt.astype(np.float64)


def psnr(restored: np.ndarray, gt: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """Peak signal-to-noise ratio in dB (peak 255); ``inf`` for identical images.

    Args:
        restored, gt: ``(H, W, 3)`` uint8 RGB, same size.
        crop_border: pixels removed from each side first.
        y_channel: compare the MATLAB Y channel instead of RGB.
    """
    a, b = _prepare(restored, gt, crop_border, y_channel)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0 ** 2 / mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    k = cv2.getGaussianKernel(size, sigma)
    return k @ k.T


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two ``(H, W)`` float64 images on ``[0, 255]``; mean over the valid region."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    w = _gaussian_window()

    def blur(x):  # filter2D is a correlation; the window is symmetric. Trim to 'valid'.
        return cv2.filter2D(x, -1, w, borderType=cv2.BORDER_REFLECT)[5:-5, 5:-5]

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def ssim(restored: np.ndarray, gt: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """Structural similarity (Gaussian 11x11, sigma 1.5, valid region, mean over channels).

    Args as for :func:`psnr`. Images must be at least 11x11 after cropping.
    """
    a, b = _prepare(restored, gt, crop_border, y_channel)
    if min(a.shape[:2]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 after cropping, got {a.shape[:2]}")
    return float(np.mean([_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[2])]))


class PixelMetric:
    """Registry wrapper: ``PixelMetric('psnr', y_channel=True).measure(restored, gt)``."""
    weights = "none (closed-form)"
    kind = "pair"

    def __init__(self, kind: str, y_channel: bool = False, crop_border: int = 0):
        funcs = {"psnr": psnr, "ssim": ssim}
        if kind not in funcs:
            raise ValueError(f"unknown pixel metric {kind!r}; allowed: {sorted(funcs)}")
        self.func, self.y_channel, self.crop_border = funcs[kind], y_channel, crop_border
        self.name = kind + ("_y" if y_channel else "")
        self.higher_is_better = True

    def measure(self, restored: np.ndarray, gt: np.ndarray) -> Measurement:
        return Measurement(self.func(restored, gt, crop_border=self.crop_border, y_channel=self.y_channel))

    def __call__(self, restored: np.ndarray, gt: np.ndarray) -> float:
        return self.measure(restored, gt).value
