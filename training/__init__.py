"""The parts ``trainer.py`` composes: config schema, objectives, training state, the run folder,
guards and logging.

* :mod:`training.config` - the typed :class:`TrainConfig` (imports nothing of this package).
* :mod:`training.objectives` - :data:`OBJECTIVES` (l1, l2, hybrid, weighted_l1), :func:`build_objective`.
* :mod:`training.state` - LR schedules, EMA, RNG states, processes.
* :mod:`training.run` - :class:`CheckpointStore`, :class:`RunFolder`: resume, rollback, pruning.
* :mod:`training.guards` - divergence, loss spikes, stop signals, finite weights.
* :mod:`training.logs` - :class:`RunLog`: log lines, TensorBoard, image grids (rank 0).

:func:`load_config` here is :func:`training.config.load_config` with the names of this
package's registries checked too (``objective.name``, ``optim.schedule``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from . import config
from .config import (AMP_DTYPES, LOWER_IS_BETTER, DataConfig, DiffusionConfig, LogConfig, ObjectiveConfig,
                     OptimConfig, TrainConfig, check_config, config_changes, config_yaml, saved_value)
from .objectives import OBJECTIVES, HybridDiffusionLoss, ImageScores, PixelLoss, build_objective
from .run import CheckpointStore, ResumeError, RunFolder
from .state import (LR_SCHEDULES, Dist, Ema, LRFactor, rng_state, seed_all, set_rng_state, setup_distributed,
                    weights_hash)

REGISTRY_NAMES = {"objective.name": OBJECTIVES, "optim.schedule": LR_SCHEDULES}


def load_config(path: Optional[str | Path], overrides: list[str] = ()) -> TrainConfig:
    """A run's config: schema <- YAML file <- ``key=value`` overrides, every value checked
    (unknown keys, wrong types and names outside the registries raise, naming the key)."""
    return config.load_config(path, overrides, REGISTRY_NAMES)


__all__ = [
    "AMP_DTYPES", "LOWER_IS_BETTER", "DataConfig", "DiffusionConfig", "LogConfig", "ObjectiveConfig",
    "OptimConfig", "TrainConfig", "check_config", "config_changes", "config_yaml", "load_config", "saved_value",
    "REGISTRY_NAMES", "OBJECTIVES", "HybridDiffusionLoss", "ImageScores", "PixelLoss", "build_objective",
    "LR_SCHEDULES", "CheckpointStore", "Dist", "Ema", "LRFactor", "ResumeError", "RunFolder", "rng_state",
    "seed_all", "set_rng_state", "setup_distributed", "weights_hash",
]
