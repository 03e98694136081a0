"""LPIPS (Zhang et al. 2018) through the ``lpips`` package, with no download at run time.

The ``lpips`` package ships its linear heads (``lpips/weights/v0.1/{alex,vgg}.pth``) but fetches
the ImageNet backbone through torchvision at construction. Here the backbone is built random
(``pnet_rand=True``) and its ``features.*`` weights are loaded, strictly and with
``weights_only=True``, from torchvision's own checkpoint file in the torch hub cache:

    <torch.hub.get_dir()>/checkpoints/alexnet-owt-7be5be79.pth   (net 'alex')
    <torch.hub.get_dir()>/checkpoints/vgg16-397923af.pth         (net 'vgg')

If the file is missing, :class:`MetricUnavailable` says so; a random backbone is never used.
"""
from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from .common import Measurement, MetricUnavailable, check_pair, hub_checkpoint, require_file, uint8_to_tensor

BACKBONE_FILES = {
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
}


def backbone_path(net: str) -> Path:
    """Where the torchvision ImageNet weights for ``net`` ('alex' | 'vgg') are looked up."""
    if net not in BACKBONE_FILES:
        raise ValueError(f"unknown LPIPS net {net!r}; allowed: {sorted(BACKBONE_FILES)}")
    return hub_checkpoint(BACKBONE_FILES[net][0])


def _backbone_state(lpips_net: torch.nn.Module, tv_state: dict) -> dict:
    """Map torchvision ``features.<i>.<p>`` keys onto lpips' ``slice<k>.<i>.<p>`` layout."""
    mapped = {}
    for key in lpips_net.state_dict():
        m = re.fullmatch(r"slice\d+\.(\d+)\.(\w+)", key)
        assert m, f"unexpected lpips backbone key {key}"
        src = f"features.{m.group(1)}.{m.group(2)}"
        if src not in tv_state:
            raise MetricUnavailable(f"backbone file lacks '{src}': not a torchvision checkpoint for this net")
        mapped[key] = tv_state[src]
    return mapped


@functools.lru_cache(maxsize=4)
def load_lpips(net: str, path: str, device: str) -> torch.nn.Module:
    """Build ``lpips.LPIPS(net)`` with the backbone weights of ``path``; cached per arguments."""
    import lpips  # imported here: it pulls in torchvision at import

    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    tv_state = torch.load(path, map_location="cpu", weights_only=True)
    model.net.load_state_dict(_backbone_state(model.net, tv_state), strict=True)
    return model.eval().to(device)


class LpipsMetric:
    """LPIPS distance (lower is better) between a restored image and its ground truth.

    ``LpipsMetric('alex')`` raises :class:`MetricUnavailable` at construction if the backbone
    file is missing, so a whole evaluation fails fast rather than after the first image.
    """
    higher_is_better = False
    kind = "pair"

    def __init__(self, net: str = "alex", device: str | torch.device = "cpu"):
        path = backbone_path(net)  # raises ValueError for an unknown net
        name, url = BACKBONE_FILES[net]
        path = require_file(path, f"LPIPS-{net}", url)
        self.device = str(torch.device(device))
        self.model = load_lpips(net, str(path.resolve()), self.device)
        self.name = "lpips" if net == "alex" else f"lpips_{net}"
        self.weights = f"lpips 0.1 linear heads ({net}.pth) + torchvision {name}"

    @torch.no_grad()
    def measure(self, restored: np.ndarray, gt: np.ndarray) -> Measurement:
        """Args: ``(H, W, 3)`` uint8 RGB images of equal size. Inputs go to lpips in ``[-1, 1]``."""
        check_pair(restored, gt)
        a = uint8_to_tensor(restored, self.device) * 2 - 1
        b = uint8_to_tensor(gt, self.device) * 2 - 1
        return Measurement(float(self.model(a, b).item()))

    def __call__(self, restored: np.ndarray, gt: np.ndarray) -> float:
        return self.measure(restored, gt).value
