"""Image-quality and face metrics for evaluating restorations (docs/method.md#metrics).

One name -> factory table, :data:`METRICS`; :func:`build_metric` raises with the allowed
names for an unknown one. Every metric object has

* ``name``: the name its numbers are reported under (``lpips``, ``id_dlib``, ``lmd_dlib68``...),
* ``weights``: which weights / backbone computed it (reported with every number),
* ``kind``: ``'pair'`` (``measure(restored, gt) -> Measurement``, per image) or ``'set'`` (FID),
* ``higher_is_better``.

Images are ``(H, W, 3)`` uint8 RGB numpy arrays. Heavy models (LPIPS nets, Inception, dlib
models, ArcFace) are loaded once per process and shared. Missing weight files raise
:class:`MetricUnavailable` with the file name and where to put it; nothing is downloaded.
"""
from __future__ import annotations

from typing import Callable

from .common import Measurement, MetricUnavailable

__all__ = ["METRICS", "build_metric", "Measurement", "MetricUnavailable"]


def _pixel(kind: str, y_channel: bool):
    def make(device="cpu", crop_border=0, **_):
        from .pixel import PixelMetric
        return PixelMetric(kind, y_channel=y_channel, crop_border=crop_border)
    return make


def _lpips(net: str):
    def make(device="cpu", **_):
        from .lpips_metric import LpipsMetric
        return LpipsMetric(net, device=device)
    return make


def _fid(device="cpu", fid_backbone="auto", fid_method="sqrtm", **_):
    from .fid import FidMetric
    return FidMetric(device=device, backbone=fid_backbone, method=fid_method)


def _arcface(device="cpu", arcface_path=None, **_):
    from .arcface import ArcFaceIdentity
    return ArcFaceIdentity(arcface_path, device=device)


def _id_dlib(device="cpu", **_):
    from .face import DlibIdentity
    return DlibIdentity(device)


def _lmd_dlib(device="cpu", **_):
    from .face import DlibLandmarkDistance
    return DlibLandmarkDistance(device)


METRICS: dict[str, Callable] = {
    "psnr": _pixel("psnr", False),
    "ssim": _pixel("ssim", False),
    "psnr_y": _pixel("psnr", True),
    "ssim_y": _pixel("ssim", True),
    "lpips": _lpips("alex"),
    "lpips_vgg": _lpips("vgg"),
    "fid": _fid,
    "id": _arcface,
    "id_dlib": _id_dlib,
    "lmd": _lmd_dlib,
    "lmd_dlib68": _lmd_dlib,
}

def build_metric(name: str, device: str = "cpu", *, crop_border: int = 0, arcface_path=None,
                 fid_backbone: str = "auto", fid_method: str = "sqrtm"):
    """Build the metric registered as ``name`` (models are cached across calls).

    Args:
        name: a key of :data:`METRICS`.
        device: torch device for the network metrics (dlib always runs on the CPU).
        crop_border: pixels trimmed from each side for PSNR/SSIM.
        arcface_path: ``resnet18_110.pth`` for ``id`` (ArcFace IDS); required by it.
        fid_backbone: 'auto' | 'pytorch_fid' | 'fid_helper'.
        fid_method: 'sqrtm' (scipy, pytorch-fid parity) | 'fast' (same value, faster).
    Raises:
        ValueError: unknown name. MetricUnavailable: missing weights for this metric.
    """
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; allowed: {', '.join(METRICS)}")
    return METRICS[name](device=device, crop_border=crop_border, arcface_path=arcface_path,
                         fid_backbone=fid_backbone, fid_method=fid_method)
