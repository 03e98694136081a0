"""Training state: LR schedules, EMA, RNG states, processes.

What a checkpoint holds besides the network and optimizer: the LR schedule's position, the
EMA copy and every rank's RNG states, all as tensors and plain Python types (read back with
``torch.load(..., weights_only=True)``; the files themselves are :mod:`training.run`'s).
"""
from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist

from models.runtime import TRAIN_DEVICES, pick_device

if TYPE_CHECKING:
    from .config import OptimConfig

log = logging.getLogger("trainer")

# --------------------------------------------------------------------------------------------
# LR schedules and EMA
# --------------------------------------------------------------------------------------------


class LRFactor:
    """LR multiplier at a step (for LambdaLR): linear warm-up ``(step+1)/warmup``, then constant
    or cosine from 1 down to ``eta_min/lr`` over ``t_max`` steps (held after t_max).
    Plain float attributes only, so the scheduler state loads with ``weights_only=True``."""

    def __init__(self, cfg: "OptimConfig"):
        self.cosine = cfg.schedule == "cosine"
        self.warmup, self.t_max = int(cfg.warmup_steps), int(cfg.t_max)
        self.floor = float(cfg.eta_min) / float(cfg.lr)

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup) if self.warmup > 0 else 1.0
        if not self.cosine:
            return warm
        progress = min(step, self.t_max) / self.t_max
        return warm * (self.floor + (1 - self.floor) * (1 + math.cos(math.pi * progress)) / 2)


LR_SCHEDULES = ("constant", "cosine")


def build_optimizer(net: torch.nn.Module, cfg: "OptimConfig") -> tuple[torch.optim.AdamW,
                                                                       torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``net``'s parameters and its LR schedule (:class:`LRFactor`)."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                  weight_decay=cfg.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, LRFactor(cfg))


def apply_optim(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                cfg: "OptimConfig") -> None:
    """Set lr, betas, eps, weight decay and the LR schedule from ``cfg`` after a state load (the
    loaded optimizer and scheduler states carry the old run's values); the position is kept."""
    factor, groups = LRFactor(cfg), optimizer.param_groups
    scheduler.lr_lambdas = [factor] * len(groups)
    scheduler.base_lrs = [cfg.lr] * len(groups)
    for group in groups:
        group.update(initial_lr=cfg.lr, lr=cfg.lr * factor(scheduler.last_epoch), betas=tuple(cfg.betas),
                     eps=cfg.eps, weight_decay=cfg.weight_decay)
    scheduler._last_lr = [group["lr"] for group in groups]


class Ema:
    """Exponential moving average of a network: ema = rate * ema + (1 - rate) * param, every
    step, over the whole state dict (integer buffers copied). ``model`` is the averaged copy."""

    def __init__(self, net: torch.nn.Module, rate: float):
        self.rate = rate
        self.model = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        for ema, new in zip(self.model.state_dict().values(), net.state_dict().values()):
            if ema.dtype.is_floating_point:
                ema.lerp_(new.detach(), 1.0 - self.rate)
            else:
                ema.copy_(new)


# --------------------------------------------------------------------------------------------
# RNG states of every rank
# --------------------------------------------------------------------------------------------


def rng_state(device: torch.device) -> dict:
    """This process's global RNG states as tensors and plain types (``weights_only``-loadable).

    ``cuda`` holds the state of ``device`` only (None on CPU): one rank, one GPU.
    """
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": (version, list(mt), gauss),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict, device: torch.device) -> None:
    """Inverse of :func:`rng_state`."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def gather_rng_states(d: "Dist", generator: torch.Generator) -> list[dict]:
    """Every rank's global RNG states and ``generator``'s (the objective's t and eps draws), in
    rank order (a collective call)."""
    mine = {**rng_state(d.device), "objective": generator.get_state()}
    if d.world == 1:
        return [mine]
    states = [None] * d.world
    dist.all_gather_object(states, mine)
    return states


def restore_rng_states(states: list[dict], world: int, d: "Dist", generator: torch.Generator, seed: int,
                       step: int) -> None:
    """Inverse of :func:`gather_rng_states` for this rank (``world``: the saving run's number of
    processes); from another number, ``generator`` is reseeded from (seed, rank, step) and the
    global states are kept."""
    if world == d.world:
        set_rng_state(states[d.rank], d.device)
        generator.set_state(states[d.rank]["objective"])
    else:
        log.warning("checkpoint from %d processes, now %d: RNG streams reseeded from (seed, step)",
                    world, d.world)
        generator.manual_seed(seed + d.rank + 7919 * step)


# --------------------------------------------------------------------------------------------
# Processes: torchrun's environment, seeds, weight hashes
# --------------------------------------------------------------------------------------------


@dataclass
class Dist:
    """Where this process runs: rank, world size, device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    # collective calls: every rank makes them, in the same order
    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise mean of ``values`` over the ranks (in place)."""
        if self.world > 1:
            dist.all_reduce(values)
            values /= self.world
        return values

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def from_main(self, obj):
        """Rank 0's ``obj`` (a picklable object), on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def setup_distributed(device: str) -> Dist:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); init DDP when world > 1."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    use_cuda = pick_device(device, TRAIN_DEVICES).type == "cuda"
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, dev)


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def weights_hash(net: torch.nn.Module) -> str:
    """SHA-256 over the state dict's names and raw bytes (to compare ranks / runs)."""
    digest = hashlib.sha256()
    for name, t in net.state_dict().items():
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
