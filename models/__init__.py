"""Networks and the diffusion maths that drives them.

`NETWORKS` is the one table from a config name to a network class; `build_network` is the
only place that dispatches on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .lama import FFCResNetGenerator
from .swinir import SwinIR
from .unet import UNetModel

NETWORKS: dict[str, type] = {
    "unet": UNetModel,
    "swinir": SwinIR,
    "lama": FFCResNetGenerator,
}


def build_network(name: str, params: dict[str, Any]):
    """Construct the network called `name` from its (official) hyper-parameters."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; allowed: {sorted(NETWORKS)}")
    return NETWORKS[name](**dict(params))


@dataclass
class DiffusionConfig:
    """The forward process of a prior: beta schedule name and number of steps T."""

    schedule: str = "linear"
    steps: int = 1000


@dataclass
class NetworkConfig:
    """Config block of one network: its `NETWORKS` name, hyper-parameters and weight file.

    `weights` is a path or a name of the weights registry (`models.checkpoint.REGISTRY`).
    """

    name: str = "unet"
    params: dict[str, Any] = field(default_factory=dict)
    weights: Optional[str] = None
