"""IDS ("Deg."): ArcFace identity angle as in VQFR's metric scripts (docs/method.md#metrics).

Network: ``resnet_face18`` of arcface-pytorch (ronghuaiyang), as basicsr's ``ResNetArcFace``
(IRBlock, layers 2-2-2-2, no SE), 1-channel 128x128 input, 512-d embedding. Weights
``resnet18_110.pth`` are never downloaded: the user passes the file (``--arcface PATH``).
Input: grey (``cv2`` RGB->GRAY), resized to 128x128 (``cv2.INTER_LINEAR``), ``(x - 127.5) / 127.5``.
Distance: ``arccos(cos(f_restored, f_gt))`` in degrees; pairs under 1 degree count as
"identical" and are excluded from the mean (the measurement is NaN with a note).

Not parity-checked: no copy of ``resnet18_110.pth`` was available when this was written; the
grey conversion / interpolation of VQFR's script are assumptions (noted in the report).
"""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from .common import Measurement, MetricUnavailable, check_pair


class IRBlock(nn.Module):
    """Improved residual block: BN -> conv -> BN -> PReLU -> conv(stride) -> BN (+ shortcut) -> PReLU."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, inplanes, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.prelu = nn.PReLU()
        self.conv2 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.prelu(self.bn1(self.conv1(self.bn0(x))))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.prelu(out + residual)


class ResNetArcFace(nn.Module):
    """``resnet_face18``: ``(B, 1, 128, 128)`` grey in ``[-1, 1]`` -> ``(B, 512)`` embedding."""

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2)):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(1, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.prelu = nn.PReLU()
        self.maxpool = nn.MaxPool2d(2, 2)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.bn4 = nn.BatchNorm2d(512)
        self.dropout = nn.Dropout()
        self.fc5 = nn.Linear(512 * 8 * 8, 512)
        self.bn5 = nn.BatchNorm1d(512)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [IRBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [IRBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.prelu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn4(x)).flatten(1)
        return self.bn5(self.fc5(x))


def _unwrap_state(obj) -> dict:
    """Accept a raw state dict or ``{'state_dict'|'params_ema'|'params': ...}``, strip ``module.``."""
    for key in ("state_dict", "params_ema", "params"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ValueError(f"expected a state dict, got {type(obj).__name__}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


@functools.lru_cache(maxsize=2)
def load_arcface(path: str, device: str) -> ResNetArcFace:
    """Build ``resnet_face18`` and load ``path`` strictly (``weights_only=True``); cached."""
    net = ResNetArcFace()
    net.load_state_dict(_unwrap_state(torch.load(path, map_location="cpu", weights_only=True)), strict=True)
    return net.eval().to(device)


def arcface_input(img: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB -> ``(1, 1, 128, 128)`` float32 grey in ``[-1, 1]``."""
    grey = cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (128, 128), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy((grey.astype(np.float32) - 127.5) / 127.5)[None, None]


class ArcFaceIdentity:
    """``ids_arcface``: identity angle in degrees (lower = more alike)."""
    name = "ids_arcface"
    higher_is_better = False
    kind = "pair"
    identical_below_deg = 1.0

    def __init__(self, weights_path: str | Path | None = None, device: str | torch.device = "cpu"):
        if weights_path is None:
            raise MetricUnavailable(
                "IDS (ArcFace) needs VQFR's ArcFace weights resnet18_110.pth (arcface-pytorch "
                "resnet_face18); pass the file explicitly (evaluate.py --arcface PATH). "
                "For an offline identity measure use 'id_dlib' (a different network).")
        path = Path(weights_path)
        if not path.is_file():
            raise MetricUnavailable(f"ArcFace weight file not found: {path}")
        self.device = str(torch.device(device))
        self.model = load_arcface(str(path.resolve()), self.device)
        self.weights = f"ArcFace resnet_face18 ({path.name}), grey 128x128"

    @torch.no_grad()
    def measure(self, restored: np.ndarray, gt: np.ndarray) -> Measurement:
        """Args: ``(H, W, 3)`` uint8 RGB images of equal size. NaN (excluded) if < 1 degree."""
        check_pair(restored, gt)
        x = torch.cat([arcface_input(restored), arcface_input(gt)], 0).to(self.device)
        f = self.model(x).double()
        cos = torch.nn.functional.cosine_similarity(f[:1], f[1:]).clamp(-1, 1).item()
        deg = float(np.degrees(np.arccos(cos)))
        if deg < self.identical_below_deg:
            return Measurement(float("nan"), f"identical ({deg:.3f} deg < 1), excluded from mean")
        return Measurement(deg)

    def __call__(self, restored: np.ndarray, gt: np.ndarray) -> float:
        return self.measure(restored, gt).value
