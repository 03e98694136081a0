"""Inference configs and the construction of a ready-to-run DifFace from one.

An inference config (a preset in `configs/inference/` or a user's YAML) names the two networks
with their hyper-parameters and weights, the diffusion schedule and the sampling settings. It
is validated against the dataclasses below when it is loaded: unknown keys and wrong types fail
then, with the key's name, before any network is built.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from models import DiffusionConfig, NetworkConfig, build_network
from models.checkpoint import REGISTRY, WeightsError, describe_missing, find_weights, load_weights, resolve_weights
from models.diffusion import DiffusionSchedule
from models.auto_start import AutoStart
from models.difface import DTYPES, DifFace, SamplingConfig, known_pixel_correction
from models.runtime import DEVICES, configure_backends, prepare_network
from models.samplers import SAMPLERS

from .presets import bundled_file, preset_dir, preset_paths, read_config_file

TASKS = ("restoration", "inpainting")


@dataclass
class InpaintingConfig:
    """Data-consistency correction of each predicted x0 (docs/method.md#known-pixel-correction)."""

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
    # with num_samples > 1: keep every sample ('all'), or per face only the one whose coarse content
    # is nearest the estimate ('fidelity', models/selection.py)
    select: str = "all"
    batch_size: int = 1
    device: str = "auto"
    dtype: str = "fp32"
    # With a reduced dtype (bf16, fp16): run only the prior's evaluations at base steps >= this
    # in it, the estimator and the low-noise steps below in fp32. None: every network in dtype.
    low_precision_from_step: Optional[int] = None
    channels_last: bool = True  # networks in NHWC memory order (same values, faster convolutions)
    compile: bool = False  # torch.compile the networks (CUDA: CUDA graphs); long warm-up, for large runs


SELECT_RULES = ("all", "fidelity")


def outputs_per_input(num_samples: int, select: str) -> int:
    """Images per input: every sample, or the one kept with `select: fidelity`."""
    return 1 if select == "fidelity" else num_samples


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key or the file."""


def find_preset(name_or_path: str) -> Path:
    """A config path as given, or the preset `configs/inference/<name>.yaml`."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    preset = preset_dir() / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    names = [p.stem for p in preset_paths()]
    raise ConfigError(f"config {name_or_path!r} is neither a file nor a preset; presets: {', '.join(names)}")


def load_config(name_or_path: str, overrides: Sequence[str] = ()) -> InferenceConfig:
    """Schema <- YAML (over its `base:` preset, if any) <- `key=value` overrides; validated, then
    returned read-only."""
    path = find_preset(name_or_path)
    try:
        data = read_config_file(path)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    data, overrides = _auto_start(data), _auto_overrides(overrides)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(InferenceConfig), OmegaConf.create(data))
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        overridden = key and any(o.split("=", 1)[0] == key for o in overrides)
        where = f"override of '{key}'" if overridden else f"config {path}"
        raise ConfigError(f"invalid {where}: {str(e).splitlines()[0]}") from None
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _auto_start(data: dict) -> dict:
    """`sampling.start_step: auto` in a YAML -> sampling.auto_start: true (the start step stays an integer)."""
    sampling = data.get("sampling") if isinstance(data, dict) else None
    if isinstance(sampling, dict) and str(sampling.get("start_step")).lower() == "auto":
        rest = {k: v for k, v in sampling.items() if k != "start_step"}
        return {**data, "sampling": {**rest, "auto_start": True}}
    return data


def _auto_overrides(overrides: Sequence[str]) -> list[str]:
    """`sampling.start_step=auto` -> `sampling.auto_start=true`; a fixed start step turns auto off."""
    out = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key.strip() != "sampling.start_step":
            out.append(override)
        elif value.strip().lower() == "auto":
            out.append("sampling.auto_start=true")
        else:
            out += [override, "sampling.auto_start=false"]
    return out


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
        (cfg.sampling.sampler != "dpmpp_2m_sde" or cfg.sampling.eta <= 1, "sampling.eta", "<= 1 with dpmpp_2m_sde"),
        (cfg.low_precision_from_step is None or cfg.low_precision_from_step >= 0, "low_precision_from_step",
         "None or >= 0"),
        (cfg.sampling.cache_depth is None or cfg.prior.name == "unet", "sampling.cache_depth",
         f"None: deep-feature caching needs a UNet prior, not {cfg.prior.name!r}"),
        (cfg.sampling.cache_depth is None or 1 <= cfg.sampling.cache_depth <= _levels(cfg.prior),
         "sampling.cache_depth", f"None (off) or an integer in [1, {_levels(cfg.prior)}] (the prior's levels)"),
        (cfg.sampling.cache_interval >= 1, "sampling.cache_interval", ">= 1"),
        (cfg.sampling.cache_last_full >= 0, "sampling.cache_last_full", ">= 0"),
        (cfg.num_samples >= 1, "num_samples", ">= 1"),
        (cfg.select in SELECT_RULES, "select", " or ".join(SELECT_RULES)),
        (cfg.batch_size >= 1, "batch_size", ">= 1"),
        (cfg.image_size >= 8, "image_size", ">= 8"),
        (len(cfg.face.template) == 5 and all(len(p) == 2 for p in cfg.face.template),
         "face.template", "five [x, y] points"),
    ]
    for ok, key, allowed in checks:
        if not ok:
            value = OmegaConf.select(cfg, key)
            raise ConfigError(f"invalid value {value!r} for '{key}': expected {allowed}")
    s = cfg.sampling
    try:
        sampling_of(cfg).timesteps(cfg.diffusion.steps)
    except ValueError as e:
        raise ConfigError(f"invalid sampling settings (start_step={s.start_step}, grid={s.grid!r}, "
                          f"steps={s.steps}): {e}") from None
    try:
        sampling_of(cfg).auto.check(cfg.diffusion.steps)
    except ValueError as e:
        raise ConfigError(f"invalid value for 'sampling.{str(e).split(' ')[0]}': {e}") from None
    if s.auto_start and s.auto.weights is None:
        raise ConfigError(f"start step 'auto' needs a start-step head for '{cfg.name}': sampling.auto.weights "
                          f"is not set (scripts/auto_start.py fits one; the demo preset has one)")
    try:
        sampling_of(cfg).full_evaluations(cfg.diffusion.steps)
    except ValueError as e:  # the scalar cache settings are checked above: the list of full steps
        raise ConfigError(f"invalid value for 'sampling.cache_full_steps': {e}") from None
    channels = estimator_channels(cfg.estimator)
    wanted = 4 if cfg.task == "inpainting" else 3
    if channels != wanted:
        kind = "an inpainting model (image + mask)" if channels == 4 else "a restoration model"
        other = "e.g. --cfg inpaint_ffhq256" if cfg.task == "inpainting" else "e.g. --cfg difface_ffhq512"
        raise ConfigError(f"task '{cfg.task}' does not fit '{cfg.name}': it is {kind}, its {cfg.estimator.name} "
                          f"estimator takes {channels} input channels, {cfg.task} needs {wanted} ({other})")


def _levels(spec: NetworkConfig) -> int:
    """Resolution levels of a UNet prior (entries of channel_mult; UNetModel's default has 4)."""
    return len(spec.params.get("channel_mult", (1, 2, 4, 8)))


def estimator_channels(spec: NetworkConfig) -> int:
    """Input channels of an estimator: 3 (RGB, restoration) or 4 (RGB + mask, inpainting)."""
    params = spec.params
    for key in ("input_nc", "in_chans"):
        if key in params:
            return int(params[key])
    return 4 if spec.name == "lama" else 3


def _network(spec: NetworkConfig) -> torch.nn.Module:
    params = spec.params
    return build_network(spec.name, OmegaConf.to_container(params, resolve=True)
                         if OmegaConf.is_config(params) else dict(params))


def _verifier(spec: NetworkConfig):
    """A check that a downloaded file fits the network: a strict load onto 'meta' tensors."""
    def verify(path: Path) -> None:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # copying into meta tensors is a (wanted) no-op
            load_weights(_network(spec), path)
    return verify


def _local_weights(spec: NetworkConfig, weights_dir) -> Path | None:
    """The weight file of a network if it is here; None for a registry file still to download."""
    if spec.weights is None:
        raise ConfigError(f"no weights given for the {spec.name} network (set its 'weights' key)")
    path = Path(spec.weights).expanduser()
    if path.is_file():
        return path
    bundled = bundled_file(spec.weights)  # bundled files (weights/demo/...) work from any folder
    if bundled is not None:
        return bundled
    if spec.weights not in REGISTRY:
        return resolve_weights(spec.weights, weights_dir, download=False)  # raises, naming the value
    return find_weights(REGISTRY[spec.weights], weights_dir)


def locate_weights(cfg: InferenceConfig, weights_dir=None, download: bool = True) -> list[Path]:
    """The estimator's and the prior's weight files, downloading missing registry files.

    When a file is missing and cannot be fetched, one WeightsError names every missing file of
    the config (name, size, URL, target path) and the ways around it.
    """
    specs = (cfg.estimator, cfg.prior)
    paths = [_local_weights(spec, weights_dir) for spec in specs]
    reason = "downloading is off (--no-download)"
    for i, spec in enumerate(specs):
        if paths[i] is None and download:
            try:
                paths[i] = resolve_weights(spec.weights, weights_dir, download=True, verify=_verifier(spec))
            except WeightsError as e:
                reason = str(e).split(". Download ")[0]
                break
    missing = [REGISTRY[spec.weights] for spec, path in zip(specs, paths) if path is None]
    if missing:
        raise WeightsError(
            f"'{cfg.name}' needs {len(missing)} weight file(s) that are not here ({reason.rstrip('.')})\n"
            f"{describe_missing(missing, weights_dir)}\n"
            f"Put the files at those paths by hand (or run `python scripts/download_weights.py` where there is "
            f"internet access), point --weights-dir or $DIFFACE_WEIGHTS at a folder holding them, or pass the "
            f"files' paths: estimator.weights=/path/file.pth prior.weights=/path/file.pth (key=value "
            f"overrides, or the same keys in a YAML given to --cfg).\n" + (
                "No bundled model inpaints: inpainting needs these files." if cfg.task == "inpainting" else
                "`--cfg demo` runs offline with the small bundled model, as a demonstration of the pipeline "
                "(it is not a restorer)."))
    return paths


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                   "xavier_normal_", "constant_", "zeros_", "ones_")


@contextlib.contextmanager
def _no_random_init():
    """Build networks without drawing their initial weights (1.6 s for the UNet-512 on a 2-core CPU):
    every parameter and buffer is then overwritten by a strict load of the weight file, which names any
    key the file lacks. Process-wide while it lasts: only for building networks whose weights follow."""
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def _build(spec: NetworkConfig, weights: Path, device: torch.device, channels_last: bool = False,
           compile: bool = False) -> torch.nn.Module:
    """A network with its weights, frozen, in eval mode, on `device` (see `models.runtime.prepare_network`)."""
    with _no_random_init():
        net = _network(spec)
    load_weights(net, weights, strict=True)
    net.requires_grad_(False)
    return prepare_network(net.eval().to(device), device, channels_last, compile)


def build_networks(cfg: InferenceConfig, device: torch.device, weights_dir: str | os.PathLike | None = None,
                   download: bool = True) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The estimator and the prior of `cfg`, with their weights, frozen, on `device`."""
    # Find (or fetch) both weight files before building anything large.
    paths = locate_weights(cfg, weights_dir, download)
    configure_backends(device)
    estimator = _build(cfg.estimator, paths[0], device, cfg.channels_last, cfg.compile)
    prior = _build(cfg.prior, paths[1], device, cfg.channels_last, cfg.compile)
    return estimator, prior


def build_difface(cfg: InferenceConfig, device: torch.device, weights_dir: str | os.PathLike | None = None,
                  download: bool = True, dtype: str | None = None) -> DifFace:
    """Build the networks of `cfg`, load their weights and wrap them in the method.

    `dtype` overrides `cfg.dtype` (e.g. the result of :func:`pick_dtype`)."""
    return make_difface(cfg, *build_networks(cfg, device, weights_dir, download), dtype)


def make_difface(cfg: InferenceConfig, estimator, prior, dtype: str | None = None) -> DifFace:
    """The method with the schedule and sampling settings of `cfg` around built networks.

    Used by :func:`build_difface` and by callers that keep the networks and change only the
    sampling settings (the web demo, per request).
    """
    schedule = DiffusionSchedule.from_name(cfg.diffusion.schedule, cfg.diffusion.steps)
    return DifFace(estimator, prior, schedule, cfg.image_size, sampling_of(cfg), dtype=dtype or cfg.dtype,
                   correct_x0_factory=correction(cfg), low_precision_from_step=cfg.low_precision_from_step)


def sampling_of(cfg: InferenceConfig) -> SamplingConfig:
    """The config's sampling block as a `SamplingConfig` (a plain dataclass the method takes)."""
    s = cfg.sampling
    if isinstance(s, SamplingConfig):
        return s
    values = OmegaConf.to_container(s, resolve=True)
    return SamplingConfig(**dict(values, auto=AutoStart(**values.get("auto") or {})))


def correction(cfg: InferenceConfig):
    """The x0-correction hook of the task: known-pixel consistency for inpainting, else none."""
    if cfg.task == "inpainting":
        return known_pixel_correction(cfg.inpainting.gamma, cfg.inpainting.num_update)
    return None
