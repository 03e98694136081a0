"""The parts ``trainer.py`` composes: config schema, objectives, and training state.

* :mod:`training.config` - the typed :class:`TrainConfig`, :func:`load_config`.
* :mod:`training.objectives` - :data:`OBJECTIVES` (l1, l2, hybrid), :func:`build_objective`.
* :mod:`training.state` - LR schedules, EMA, RNG states, :class:`CheckpointStore`, processes.
* :mod:`training.guards` - stop signals, loss spikes, finite weights.
* :mod:`training.logs` - :class:`RunLog`: log lines, TensorBoard, image grids (rank 0).
"""
from .config import (AMP_DTYPES, LOWER_IS_BETTER, DataConfig, DiffusionConfig, LogConfig, ObjectiveConfig,
                     OptimConfig, TrainConfig, check_config, config_changes, config_yaml,
                     load_config)
from .objectives import OBJECTIVES, HybridDiffusionLoss, ImageScores, PixelLoss, build_objective
from .state import (LR_SCHEDULES, CheckpointStore, Dist, Ema, LRFactor, ResumeError, RunFolder, rng_state,
                    seed_all, set_rng_state, setup_distributed, weights_hash)

__all__ = [
    "AMP_DTYPES", "LOWER_IS_BETTER", "DataConfig", "DiffusionConfig", "LogConfig", "ObjectiveConfig",
    "OptimConfig", "TrainConfig", "check_config", "config_changes", "config_yaml", "load_config",
    "OBJECTIVES", "HybridDiffusionLoss", "ImageScores", "PixelLoss", "build_objective",
    "LR_SCHEDULES", "CheckpointStore", "Dist", "Ema", "LRFactor", "ResumeError", "RunFolder", "rng_state",
    "seed_all", "set_rng_state", "setup_distributed", "weights_hash",
]
