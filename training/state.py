"""Training state: LR schedules, EMA, RNG states, checkpoint files, processes.

Everything a checkpoint holds is tensors and plain Python types, so that
``torch.load(..., weights_only=True)`` reads it back.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
import torch.distributed as dist

from models.checkpoint import save_checkpoint

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
# Checkpoints: atomic files, last K + best, resume from the latest readable one
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


class CheckpointStore:
    """``<folder>/step_<N>.pt`` files (temp file + rename), the newest ``keep_last`` kept
    (0 = all; at least 2, because the newest one is vouched for only by the loss of a later
    step), plus ``best.pt``. Leftover temp files (``.step_*.tmp``) are never read.

    Pruning looks only at checkpoints of this run's lineage: files with a step above the one
    just saved (from an abandoned future, see :meth:`set_aside`) are never counted, and the
    steps in ``protected`` (the last checkpoint before a loss spike) are never deleted.
    """

    def __init__(self, folder: str | Path, keep_last: int):
        self.folder, self.keep_last = Path(folder), keep_last
        self.protected: set[int] = set()

    def path(self, step: int) -> Path:
        return self.folder / f"step_{step:08d}.pt"

    def steps(self) -> list[tuple[int, Path]]:
        """(step, path) of the step checkpoints on disk, oldest first."""
        found = []
        for p in self.folder.glob("step_*.pt"):
            try:
                found.append((int(p.stem.split("_")[1]), p))
            except ValueError:
                continue
        return sorted(found)

    def save(self, state: dict, name: str | None = None) -> Path:
        """Write ``state`` as ``step_<state['step']>.pt`` (or ``name``) atomically; prune old ones."""
        path = self.folder / name if name else self.path(state["step"])
        save_checkpoint(state, path)
        if self.keep_last > 0 and not name:
            lineage = [(s, p) for s, p in self.steps() if s <= state["step"] and s not in self.protected]
            for _, old in lineage[:-max(self.keep_last, 2)]:
                old.unlink(missing_ok=True)
        return path

    def remove_temp_files(self) -> list[Path]:
        """Delete the temp files that interrupted writes left behind; return their paths."""
        stale = sorted(self.folder.glob(".*.tmp")) if self.folder.is_dir() else []
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    def set_aside(self, step: int, extra: list[Path] = (), reason: str = "rolled_back") -> Optional[Path]:
        """Move checkpoints with a step above ``step`` (and ``best.pt`` when it is newer, and the
        ``extra`` files) into a new sub-folder ``<reason>_after_step_<step>[_k]``; nothing is deleted.

        Returns the sub-folder, or None when there was nothing to move.
        """
        later = [p for s, p in self.steps() if s > step] + list(extra)
        best = self.folder / "best.pt"
        if best.is_file():
            try:
                if self.load(best)["step"] > step:
                    later.append(best)
            except ValueError:
                later.append(best)
        if not later:
            return None
        base = self.folder / f"{reason}_after_step_{step:08d}"
        target, k = base, 1
        while target.exists():
            target, k = Path(f"{base}_{k}"), k + 1
        target.mkdir(parents=True)
        for p in later:
            os.replace(p, target / p.name)
        return target

    @staticmethod
    def load(path: str | Path) -> dict:
        """Read a training checkpoint (``weights_only=True``, on CPU); raise ValueError if bad."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"checkpoint {path} is unreadable (truncated or corrupt?): "
                             f"{type(err).__name__}: {str(err)[:200]}") from err
        missing = [k for k in ("step", "model", "optimizer", "scheduler", "config") if k not in state]
        if missing:
            raise ValueError(f"checkpoint {path} is not a training checkpoint: it lacks {missing}")
        return state

    def latest_valid(self) -> Optional[tuple[Path, dict]]:
        """The newest readable step checkpoint, else a readable ``best.pt`` (with a warning).

        Unreadable newer ones are skipped with a warning. Raises ``ResumeError`` when
        checkpoints exist but none of them (``best.pt`` included) can be read; None when the
        folder holds no checkpoint at all.
        """
        errors = []
        for _, path in reversed(self.steps()):
            try:
                return path, self.load(path)
            except ValueError as err:
                log.warning("skipping checkpoint: %s", err)
                errors.append(str(err))
        best = self.folder / "best.pt"
        if best.is_file():
            try:
                state = self.load(best)
            except ValueError as err:
                errors.append(str(err))
            else:
                if errors:
                    log.warning("every step checkpoint in %s is unreadable; falling back to %s (step %d)",
                                self.folder, best, state["step"])
                return best, state
        if errors:
            raise ResumeError(f"every checkpoint in {self.folder} is unreadable ({errors[0]}); nothing to "
                              f"resume from. Move them elsewhere to start again from step 0, or give "
                              f"--resume PATH")
        return None


class ResumeError(ValueError):
    """Checkpoints exist but none can be resumed from."""


def step_of(path: Path) -> int:
    """The step in a name like ``ema_00000040.safetensors`` (-1 if none)."""
    digits = path.stem.rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() else -1


class RunFolder:
    """A run's ``out_dir``: its :class:`CheckpointStore` (``ckpts/``) and EMA exports
    (``ema_<N>.safetensors``), and the decisions about them: where to resume, which later files
    to set aside, which exports to prune, which temp files to delete."""

    def __init__(self, out: str | Path, keep_last: int):
        self.out = Path(out)
        self.store = CheckpointStore(self.out / "ckpts", keep_last)

    def remove_temp_files(self) -> list[Path]:
        """Delete the temp files that interrupted checkpoint or export writes left behind."""
        stale = self.store.remove_temp_files()
        for p in [*self.out.glob(".ema_*.tmp"), *self.out.glob(".export.safetensors.*.tmp")]:
            p.unlink(missing_ok=True)
            stale.append(p)
        return stale

    def resume_source(self, resume: Optional[str]) -> Optional[tuple[Path, dict]]:
        """(path, state) for ``--resume auto|PATH``, or None; refuse to train over checkpoints."""
        if resume == "auto":
            found = self.store.latest_valid()
            if found is None:
                log.info("--resume auto: no checkpoint in %s, starting from step 0", self.store.folder)
            return found
        if resume:
            if not Path(resume).is_file():
                raise FileNotFoundError(f"--resume {resume}: no such checkpoint file")
            return Path(resume), CheckpointStore.load(resume)
        if self.store.steps():
            raise FileExistsError(f"{self.store.folder} already holds checkpoints; continue with "
                                  f"--resume auto or choose another --out-dir")
        return None

    def set_aside(self, step: int, reason: str) -> Optional[Path]:
        """Move checkpoints and EMA exports of steps after ``step`` into ``ckpts/<reason>_after_step_<step>``."""
        exports = [p for p in self.out.glob("ema_*.safetensors") if step_of(p) > step]
        moved = self.store.set_aside(step, exports, reason)
        if moved is not None:
            log.warning("the checkpoints after step %d (%s) were moved to %s; they are neither pruned "
                        "nor resumed from", step, ", ".join(sorted(p.name for p in moved.iterdir())), moved)
        return moved

    def prune_exports(self, step: int) -> None:
        """Keep the EMA exports of the checkpoints kept (same rule as the store's pruning)."""
        keep = max(self.store.keep_last, 2) if self.store.keep_last > 0 else 0
        lineage = sorted(p for p in self.out.glob("ema_*.safetensors")
                         if step_of(p) <= step and step_of(p) not in self.store.protected)
        for old in lineage[:-keep] if keep > 0 else []:
            old.unlink(missing_ok=True)


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


def setup_distributed(device: str) -> Dist:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); init DDP when world > 1."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but CUDA is not available")
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
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
