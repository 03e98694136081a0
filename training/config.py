"""The typed schema of a training run, merged with YAML and ``key=value`` overrides by OmegaConf.

Unknown keys and wrong types fail in :func:`load_config` with the key's name (OmegaConf);
:func:`check_config` adds the value checks types cannot express. Names that pick an entry of a
registry of the training package (objectives, LR schedules) are checked against the allowed
names the caller passes in (``names``; :func:`training.load_config` passes its registries'),
so this module imports none of the code that reads the config. The resolved config
(:func:`config_yaml`) is saved next to the outputs and inside every checkpoint.

Relative paths. An input path written in a config file (the keys of :data:`INPUT_PATHS`: data
folders and file lists, mask folders, ``model.weights``) is relative to the folder of that
file, so a config means the same data from any working folder: ``configs/train/X.yaml`` says
``../../examples/faces`` for the repository's ``examples/faces``. It is made absolute when the
file is loaded. A path given as a ``key=value`` override is relative to the working folder,
as any command-line path is. Left as written: absolute paths (``~`` expanded), values with an
interpolation (``${data.train.root}`` follows whatever that key ends up as), registry names
in ``model.weights``, and ``out_dir`` - an output, always relative to the working folder.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, List, Mapping, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from datapipe.datasets import DatasetConfig, check_dataset_config
from models import NETWORKS, DiffusionConfig, NetworkConfig
from models.checkpoint import REGISTRY
from models.diffusion import BETA_SCHEDULES
from models.runtime import TRAIN_DEVICES


@dataclass
class ObjectiveConfig:
    """``name``: a key of ``training.objectives.OBJECTIVES``. ``sample_steps``: DDIM steps of the prior's image grids.
    ``hole_weight``: weight of the hole pixels in ``weighted_l1`` (1 outside; official 10)."""

    name: str = "l1"
    sample_steps: int = 10
    hole_weight: float = 10.0


@dataclass
class OptimConfig:
    """AdamW and its LR schedule, one of ``training.state.LR_SCHEDULES``: constant or cosine (floor
    ``eta_min``, period ``t_max`` steps), both after an optional linear warm-up of ``warmup_steps``.
    ``grad_clip`` 0 = no clipping."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: str = "constant"
    warmup_steps: int = 0
    t_max: int = 0
    eta_min: float = 0.0
    grad_clip: float = 0.0


@dataclass
class DataConfig:
    """``batch_size`` is global (all ranks); each rank splits its share into ``micro_batch`` chunks."""

    train: DatasetConfig = field(default_factory=DatasetConfig)
    val: Optional[DatasetConfig] = None
    batch_size: int = 32
    micro_batch: int = 8
    val_batch: int = 16
    num_workers: int = 4


@dataclass
class LogConfig:
    """Intervals in steps (0 = never). ``keep_last``: step checkpoints kept (0 = all, else at
    least 2). ``best_metric`` ranks validations for ``best.pt``.
    ``spike_factor``: a step loss above this times the median of the recent losses is a spike;
    the last checkpoint from before it is then never pruned (0 = off)."""

    log_every: int = 100
    image_every: int = 2000
    val_every: int = 10000
    save_every: int = 10000
    keep_last: int = 3
    tensorboard: bool = True
    num_images: int = 4
    best_metric: str = "psnr"
    y_channel: bool = True
    spike_factor: float = 20.0


@dataclass
class TrainConfig:
    """A whole training run. ``ema_rate`` 0 = no EMA; ``amp``: none | bf16 | fp16."""

    model: NetworkConfig = field(default_factory=NetworkConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    log: LogConfig = field(default_factory=LogConfig)
    max_steps: int = 300000
    ema_rate: float = 0.0
    amp: str = "none"
    seed: int = 10000
    device: str = "auto"
    out_dir: str = "runs/train"


AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
LOWER_IS_BETTER = ("loss", "mse", "vb", "lpips")
BEST_METRICS = ("psnr", "ssim", *LOWER_IS_BETTER)


# The input paths of a config: in a config file, relative ones are relative to the file's folder.
INPUT_PATHS = ("model.weights", *(f"data.{split}.{key}" for split in ("train", "val")
                                  for key in ("root", "file_list", "lq_root", "hq_root", "mask.root")))


def load_config(path: str | Path | None, overrides: list[str] = (),
                names: Optional[Mapping[str, Collection[str]]] = None) -> TrainConfig:
    """Schema <- YAML file <- ``key=value`` overrides; unknown keys / wrong types raise here, and
    so do values outside ``names`` (dotted key -> allowed names, see :func:`check_config`).
    Relative input paths of the file are taken from the file's folder (module docstring)."""
    if path and not Path(path).is_file():
        raise FileNotFoundError(f"config file '{path}' does not exist")
    file_node = OmegaConf.load(path) if path else OmegaConf.create({})
    if path:
        absolute_input_paths(file_node, Path(path).absolute().parent)
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), file_node,
                             OmegaConf.from_dotlist(list(overrides)))
    cfg = OmegaConf.to_object(merged)
    check_config(cfg, names)
    return cfg


def absolute_input_paths(node: DictConfig, folder: Path) -> None:
    """Join every relative path of :data:`INPUT_PATHS` in ``node`` (a config file's contents)
    to ``folder``, in place. Interpolations are not followed, nor replaced."""
    for key in INPUT_PATHS:
        *parents, leaf = key.split(".")
        block = node
        for part in parents:
            if not isinstance(block, DictConfig) or part not in block or OmegaConf.is_interpolation(block, part):
                block = None
                break
            block = block[part]
        if not isinstance(block, DictConfig) or leaf not in block or OmegaConf.is_interpolation(block, leaf):
            continue
        value = block[leaf]
        if not isinstance(value, str) or not value or (key == "model.weights" and value in REGISTRY):
            continue
        given = Path(value).expanduser()
        block[leaf] = str(given) if given.is_absolute() else os.path.normpath(folder / given)


def config_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML text (saved next to outputs and in every checkpoint)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_changes(saved_yaml: str, cfg: TrainConfig) -> list[tuple[str, object, object]]:
    """(dotted key, saved value, current value) of every key that differs between a saved
    config (YAML text) and ``cfg``, sorted by key."""
    def flat(node, prefix: str = "") -> dict:
        if not isinstance(node, dict):
            return {prefix[:-1]: node}
        return {key: value for k, v in node.items() for key, value in flat(v, f"{prefix}{k}.").items()}

    old = flat(OmegaConf.to_container(OmegaConf.create(saved_yaml)))
    new = flat(OmegaConf.to_container(OmegaConf.structured(cfg)))
    return [(k, old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]


def saved_value(saved_yaml: str, key: str):
    """The value of dotted ``key`` in a saved config (YAML text), None if it has none."""
    return OmegaConf.select(OmegaConf.create(saved_yaml), key, default=None)


def _allowed(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not allowed; choose one of {sorted(allowed)}")


def check_config(cfg: TrainConfig, names: Optional[Mapping[str, Collection[str]]] = None) -> None:
    """Value checks OmegaConf's types cannot express; each error names the key. ``names``: the
    allowed values of more dotted keys, e.g. ``{"objective.name": OBJECTIVES}``."""
    choices = {"model.name": NETWORKS, **(names or {}), "diffusion.schedule": BETA_SCHEDULES,
               "amp": AMP_DTYPES, "device": TRAIN_DEVICES, "log.best_metric": BEST_METRICS}
    for key, allowed in choices.items():
        _allowed(key, functools.reduce(getattr, key.split("."), cfg), allowed)
    check_dataset_config(cfg.data.train, "data.train")
    if cfg.data.val is not None:
        check_dataset_config(cfg.data.val, "data.val")
    if cfg.optim.schedule == "cosine" and cfg.optim.t_max < 1:
        raise ValueError(f"optim.t_max must be >= 1 for the cosine schedule, got {cfg.optim.t_max}")
    positive = {"max_steps": cfg.max_steps, "data.batch_size": cfg.data.batch_size,
                "data.micro_batch": cfg.data.micro_batch, "data.val_batch": cfg.data.val_batch,
                "optim.lr": cfg.optim.lr, "diffusion.steps": cfg.diffusion.steps,
                "objective.hole_weight": cfg.objective.hole_weight}
    for key, value in positive.items():
        if value <= 0:
            raise ValueError(f"{key} must be > 0, got {value}")
    if not (cfg.log.spike_factor == 0 or cfg.log.spike_factor > 1):
        raise ValueError(f"log.spike_factor must be 0 (off) or > 1, got {cfg.log.spike_factor}")
    if not 0.0 <= cfg.ema_rate < 1.0:
        raise ValueError(f"ema_rate must lie in [0, 1) (0 = no EMA), got {cfg.ema_rate}")
    if cfg.optim.eta_min > cfg.optim.lr:
        raise ValueError(f"optim.eta_min={cfg.optim.eta_min} exceeds optim.lr={cfg.optim.lr}")
