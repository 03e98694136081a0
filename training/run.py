"""A run's folder on disk: checkpoint files, EMA exports, and the decisions about them.

* :class:`CheckpointStore` - ``ckpts/step_<N>.pt`` (atomic writes, the last K kept) and ``best.pt``.
* :class:`RunFolder` - ``out_dir``: where to resume from, which later files a rollback or a
  divergence sets aside, which checkpoint a loss spike protects, which exports to prune.

Everything a checkpoint holds is tensors and plain Python types, so that
``torch.load(..., weights_only=True)`` reads it back.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from models.checkpoint import save_checkpoint

from .state import Dist

log = logging.getLogger("trainer")


class ResumeError(ValueError):
    """Checkpoints exist but none can be resumed from."""


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


def step_of(path: Path) -> int:
    """The step in a name like ``ema_00000040.safetensors`` (-1 if none)."""
    digits = path.stem.rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() else -1


class RunFolder:
    """A run's ``out_dir``: its :class:`CheckpointStore` (``ckpts/``) and EMA exports
    (``ema_<N>.safetensors``), and the decisions about them: where to resume, which later files
    to set aside, which checkpoint to protect, which exports to prune, which temp files to delete."""

    def __init__(self, out: str | Path, keep_last: int):
        self.out = Path(out)
        self.store = CheckpointStore(self.out / "ckpts", keep_last)

    def find(self, resume: Optional[str], d: Dist) -> Optional[tuple[Path, dict]]:
        """(path, state) to resume from, or None; refuse to train over existing checkpoints.

        Reads only: nothing in ``out_dir`` is created, moved or deleted (that is :meth:`prepare`'s,
        once the run starts). Rank 0 looks first; its errors reach the other ranks' barrier
        before they are raised, then the other ranks read the same checkpoint (a collective call).
        """
        found, error = None, None
        if d.main:
            try:
                found = self.resume_source(resume)
            except (OSError, ValueError) as err:  # the other ranks must not wait at the barrier
                error = err
        if d.world > 1:
            dist.barrier()
            if not d.main:
                found = self.resume_source(resume)
        if error is not None:
            raise error
        return found

    def prepare(self, step: Optional[int], d: Dist) -> None:
        """The run starts (resuming at ``step``, None = from step 0): rank 0 deletes temp files of
        interrupted writes and moves the checkpoints and exports of steps after ``step`` (a
        rollback, or unreadable newer files) into ``ckpts/rolled_back_after_step_<step>/``, so
        this run's lineage is the only one in ``ckpts/`` and pruning and a later ``--resume auto``
        never mix two runs. A collective call: every rank has read its checkpoint before, and
        learns after whether rank 0 succeeded."""
        if d.world > 1:
            dist.barrier()
        error = None
        if d.main:
            try:
                for p in self.remove_temp_files():
                    log.info("deleted %s, left by an interrupted write", p)
                if step is not None:
                    self.set_aside(step, "rolled_back")
            except OSError as err:
                error = err
        if d.from_main(error is not None):
            raise error if error is not None else RuntimeError("rank 0 could not prepare the run folder")

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

    def set_aside_diverged(self, trusted: int, main: bool) -> str:
        """After a divergence: rank 0 moves the checkpoints after step ``trusted`` aside (to
        ``ckpts/diverged_after_step_<trusted>``), so that ``--resume auto`` continues from the
        last trustworthy one. Returns the sentence that tells the user where that is."""
        moved = self.set_aside(trusted, "diverged") if main else None
        good = [p for s, p in self.store.steps() if s <= trusted]
        kept = (f"--resume auto continues from {good[-1]}" if good else
                "no checkpoint from before the divergence exists; start again from step 0")
        return f"later checkpoints were moved to {moved}; {kept}" if moved is not None else kept

    def protect(self, step: int) -> Optional[Path]:
        """Never prune the newest checkpoint at or before ``step``; returns it (None if none)."""
        kept = [(s, p) for s, p in self.store.steps() if s <= step]
        if not kept:
            return None
        self.store.protected.add(kept[-1][0])
        return kept[-1][1]

    def prune_exports(self, step: int) -> None:
        """Keep the EMA exports of the checkpoints kept (same rule as the store's pruning)."""
        keep = max(self.store.keep_last, 2) if self.store.keep_last > 0 else 0
        lineage = sorted(p for p in self.out.glob("ema_*.safetensors")
                         if step_of(p) <= step and step_of(p) not in self.store.protected)
        for old in lineage[:-keep] if keep > 0 else []:
            old.unlink(missing_ok=True)
