"""Inference configs and the construction of a ready-to-run DifFace from one.

An inference config (a preset in `configs/inference/` or a user's YAML) names the two networks
with their hyper-parameters and weights, the diffusion schedule and the sampling settings. It
is validated against the dataclasses below when it is loaded: unknown keys and wrong types fail
then, with the key's name, before any network is built.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import DiffusionConfig, NetworkConfig, build_network
from .checkpoint import load_weights, resolve_weights
from .diffusion import DiffusionSchedule
from .difface import DTYPES, DifFace, known_pixel_correction
from .runtime import configure_backends, prepare_network
from .samplers import SAMPLERS

REPO_DIR = Path(__file__).resolve().parents[1]
PRESET_DIR = REPO_DIR / "configs" / "inference"
TASKS = ("restoration", "inpainting")
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass
class SamplingConfig:
    """Where the reverse chain starts and how it runs (base steps of the T-step process)."""

    start_step: int = 400
    grid: str = "ddim250"
    steps: Optional[int] = None
    official_start: bool = True
    eta: float = 0.5
    sampler: str = "ddim"


@dataclass
class InpaintingConfig:
    """Data-consistency correction of each predicted x0 (SPEC §2.5)."""

    gamma: float = 0.5
    num_update: int = 1


@dataclass
class FaceConfig:
    """Whole-image mode: alignment template (pixels of a `face_size` crop) and detection."""

    template: list[list[float]] = field(default_factory=lambda: [
        [192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
        [201.26117, 371.41043], [313.08905, 371.15118]])
    template_size: int = 512
    border_value: list[int] = field(default_factory=lambda: [132, 133, 135])


@dataclass
class InferenceConfig:
    name: str = "DifFace"
    description: str = ""
    task: str = "restoration"
    image_size: int = 512
    estimator: NetworkConfig = field(default_factory=lambda: NetworkConfig(name="swinir"))
    prior: NetworkConfig = field(default_factory=lambda: NetworkConfig(name="unet"))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    inpainting: InpaintingConfig = field(default_factory=InpaintingConfig)
    face: FaceConfig = field(default_factory=FaceConfig)
    seed: int = 12345
    num_samples: int = 1
    batch_size: int = 1
    device: str = "auto"
    dtype: str = "fp32"
    channels_last: bool = True  # networks in NHWC memory order (same values, faster convolutions)
    compile: bool = False  # torch.compile the networks (CUDA: CUDA graphs); long warm-up, for large runs


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key or the file."""


def find_preset(name_or_path: str) -> Path:
    """A config path as given, or the preset `configs/inference/<name>.yaml`."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(f"config {name_or_path!r} is neither a file nor a preset; presets: {', '.join(names)}")


def load_config(name_or_path: str, overrides: Sequence[str] = ()) -> InferenceConfig:
    """Schema <- YAML <- `key=value` overrides; validated, then returned read-only."""
    path = find_preset(name_or_path)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(InferenceConfig), OmegaConf.load(path))
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid config {path}: {e}") from None
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def validate(cfg: InferenceConfig) -> None:
    """Value checks that a schema cannot express; raise ConfigError naming the key."""
    checks = [
        (cfg.task in TASKS, "task", f"one of {TASKS}"),
        (cfg.device in DEVICES, "device", f"one of {DEVICES}"),
        (cfg.dtype in DTYPES, "dtype", f"one of {tuple(DTYPES)}"),
        (cfg.sampling.sampler in SAMPLERS, "sampling.sampler", f"one of {tuple(SAMPLERS)}"),
        (0 <= cfg.sampling.start_step < cfg.diffusion.steps, "sampling.start_step",
         f"an integer in [0, {cfg.diffusion.steps - 1}]"),
        (cfg.sampling.steps is None or cfg.sampling.steps >= 1, "sampling.steps", "None or >= 1"),
        (cfg.sampling.eta >= 0, "sampling.eta", ">= 0"),
        (cfg.num_samples >= 1, "num_samples", ">= 1"),
        (cfg.batch_size >= 1, "batch_size", ">= 1"),
        (cfg.image_size >= 8, "image_size", ">= 8"),
        (len(cfg.face.template) == 5 and all(len(p) == 2 for p in cfg.face.template),
         "face.template", "five [x, y] points"),
    ]
    for ok, key, allowed in checks:
        if not ok:
            value = OmegaConf.select(cfg, key)
            raise ConfigError(f"invalid value {value!r} for '{key}': expected {allowed}")


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda, else mps, else cpu; an unavailable explicit device is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA device is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' was asked for but MPS is not available")
    return torch.device(name)


def _network(spec: NetworkConfig) -> torch.nn.Module:
    params = spec.params
    return build_network(spec.name, OmegaConf.to_container(params, resolve=True)
                         if OmegaConf.is_config(params) else dict(params))


def _weights_path(spec: NetworkConfig, weights_dir, download: bool) -> Path:
    """The weight file of a network; a fresh download is checked by a strict load (on 'meta')."""
    if spec.weights is None:
        raise ConfigError(f"no weights given for the {spec.name} network (set its 'weights' key)")

    def verify(path: Path) -> None:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # copying into meta tensors is a (wanted) no-op
            load_weights(_network(spec), path)

    # A relative path of a bundled file (e.g. weights/demo/...) also works outside the repository.
    bundled = REPO_DIR / spec.weights
    weights = bundled if not Path(spec.weights).expanduser().exists() and bundled.is_file() else spec.weights
    return resolve_weights(weights, weights_dir, download=download, verify=verify)


def _build(spec: NetworkConfig, weights: Path, device: torch.device, channels_last: bool = False,
           compile: bool = False) -> torch.nn.Module:
    """A network with its weights, frozen, in eval mode, on `device` (see `models.runtime.prepare_network`)."""
    net = _network(spec)
    load_weights(net, weights)
    net.requires_grad_(False)
    return prepare_network(net.eval().to(device), device, channels_last, compile)


def build_difface(cfg: InferenceConfig, device: torch.device, weights_dir: str | os.PathLike | None = None,
                  download: bool = True) -> DifFace:
    """Build the networks of `cfg`, load their weights and wrap them in the method."""
    # Find (or fetch) both weight files before building anything large.
    paths = [_weights_path(spec, weights_dir, download) for spec in (cfg.estimator, cfg.prior)]
    configure_backends(device)
    estimator = _build(cfg.estimator, paths[0], device, cfg.channels_last, cfg.compile)
    prior = _build(cfg.prior, paths[1], device, cfg.channels_last, cfg.compile)
    schedule = DiffusionSchedule.from_name(cfg.diffusion.schedule, cfg.diffusion.steps)
    s = cfg.sampling
    return DifFace(estimator, prior, schedule, image_size=cfg.image_size, start_step=s.start_step,
                   grid=s.grid, steps=s.steps, official_start=s.official_start, eta=s.eta,
                   sampler=s.sampler, dtype=cfg.dtype, correct_x0_factory=correction(cfg))


def correction(cfg: InferenceConfig):
    """The x0-correction hook of the task: known-pixel consistency for inpainting, else none."""
    if cfg.task == "inpainting":
        return known_pixel_correction(cfg.inpainting.gamma, cfg.inpainting.num_update)
    return None
