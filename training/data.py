"""The trainer's data: each rank's share of the training set, resumable mid-epoch, and rank 0's
validation set (:mod:`datapipe.datasets` builds the datasets from their configs)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import DataLoader

from datapipe.datasets import ResumableSampler, build_dataset

from .config import DataConfig
from .guards import ignore_stop_signals
from .state import Dist


@dataclass
class TrainData:
    """``loader``: batches of ``per_rank`` images; the order and each image's degradation are a
    function of (seed, step), so :meth:`start_at` resumes a run exactly, mid-epoch too.
    ``val_loader``: rank 0 only (None elsewhere, or without ``data.val``)."""

    sampler: ResumableSampler
    loader: DataLoader
    val_loader: Optional[DataLoader]
    per_rank: int
    steps_per_epoch: int

    def start_at(self, step: int) -> None:
        """Make the next pass over ``loader`` yield the batches of steps ``step + 1`` onward."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        self.sampler.set_epoch(epoch, offset * self.per_rank)


def build_data(cfg: DataConfig, seed: int, d: Dist, inputs: tuple[str, ...], objective: str) -> TrainData:
    """The loaders of a run; raises ValueError when the dataset lacks a key in ``inputs`` (what
    the objective named ``objective`` reads) or holds fewer images than one batch."""
    per_rank = cfg.batch_size // d.world
    train_set = build_dataset(cfg.train, seed, d.rank)
    first = train_set[0]
    missing = [k for k in inputs if k not in first]
    if missing:
        raise ValueError(f"objective {objective!r} needs {missing} but dataset "
                         f"{cfg.train.name!r} gives {sorted(first)}")
    sampler = ResumableSampler(train_set, d.world, d.rank, shuffle=True, seed=seed)
    steps_per_epoch = sampler.num_samples // per_rank
    if steps_per_epoch < 1:
        raise ValueError(f"{len(train_set)} training images are fewer than the batch "
                         f"({cfg.batch_size} over {d.world} processes)")
    loader = _loader(cfg, seed, d, train_set, per_rank, sampler, drop_last=True)
    val_loader = None
    if cfg.val is not None and d.main:
        val_set = build_dataset(cfg.val, seed, 0)
        val_loader = _loader(cfg, seed, d, val_set, cfg.val_batch, None, drop_last=False)
    return TrainData(sampler, loader, val_loader, per_rank, steps_per_epoch)


def _loader(cfg: DataConfig, seed: int, d: Dist, dataset, batch: int, sampler, drop_last: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch, sampler=sampler, shuffle=False, drop_last=drop_last,
                      num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
                      pin_memory=d.device.type == "cuda", worker_init_fn=ignore_stop_signals,
                      generator=torch.Generator().manual_seed(seed))  # keeps the global RNG untouched
