"""Keeping a run safe: divergence, loss spikes, stop signals, finite weights.

* :class:`Guards` - what the trainer calls: a guarded optimizer step, the stop signal after
  each step, the weights check before each save.
* :class:`StopSignals` - SIGTERM / SIGINT (SLURM, Kubernetes, Ctrl-C) set a flag that the loop
  reads after each step, so the trainer saves a checkpoint at the current step and exits; a
  second signal gets the default behaviour (immediate stop).
* :class:`SpikeWatch` - a step loss above ``factor`` times the median of the recent losses.
* :func:`non_finite` - names of tensors in state dicts holding NaN or inf.

Step arithmetic: the loss of step ``k`` is computed with the weights of checkpoint ``k - 1``,
so when that loss is NaN or spikes, the newest trustworthy checkpoint is the one at step
``k - 2`` or earlier.
"""
from __future__ import annotations

import logging
import math
import signal
import statistics
import threading
from collections import deque
from typing import Optional

import torch

from .run import RunFolder
from .state import Dist

log = logging.getLogger("trainer")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
MAX_SKIPPED_STEPS = 20  # fp16: this many GradScaler-skipped steps in a row stop the run as diverged


class TrainingDiverged(RuntimeError):
    """The loss, gradient norm or weights became NaN/inf; training stopped without saving."""


class Guards:
    """The checks of a run, each behind one call:

    * :meth:`step` - step ``k``'s optimizer update, unless its loss or gradient norm is NaN/inf
      (fp16: the GradScaler skips such steps; :data:`MAX_SKIPPED_STEPS` in a row are a
      divergence); a loss spike protects the last checkpoint from before it against pruning;
    * :meth:`stop_signal` - after each step, inside ``with guards:``: SIGTERM / SIGINT on any rank;
    * :meth:`check_weights` - before each save: every weight finite.

    A divergence moves the checkpoints it cannot vouch for aside
    (:meth:`RunFolder.set_aside_diverged`) and raises :class:`TrainingDiverged`.
    """

    def __init__(self, folder: RunFolder, d: Dist, spike_factor: float):
        self.folder, self.dist, self.spike_factor = folder, d, spike_factor
        self.watch = LossWatch(spike_factor)
        self.signals = StopSignals()

    def __enter__(self) -> "Guards":
        self.signals = StopSignals().__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.signals.__exit__(*exc)

    def step(self, k: int, stats: dict[str, float], optimizer: torch.optim.Optimizer,
             scaler: Optional[torch.amp.GradScaler]) -> None:
        """Step ``k``'s optimizer update from the gradients (``stats``: the step's ``loss`` and
        ``grad_norm``), or :class:`TrainingDiverged` instead when the step diverged."""
        self._watch_loss(k, stats["loss"], fp16=scaler is not None)
        if scaler is not None:
            self._scaler_step(k, stats["loss"], optimizer, scaler)
        elif not math.isfinite(stats["grad_norm"]):
            raise self.diverged(f"the gradient norm is {stats['grad_norm']} at step {k}", k - 1)
        else:
            optimizer.step()

    def _watch_loss(self, k: int, loss: float, fp16: bool) -> None:
        """Stop on a NaN/inf loss (fp16: left to the GradScaler); note loss spikes."""
        if not math.isfinite(loss):
            if not fp16:
                raise self.diverged(f"the loss is {loss} at step {k}", k - 1)
            return
        if self.watch.is_new_spike(loss, k):
            kept = self.folder.protect(k - 2)
            log.warning("loss spike at step %d: %.4g, over %g x the recent median; %s", k, loss, self.spike_factor,
                        f"{kept.name} (before the spike) will not be pruned" if kept
                        else "no checkpoint from before it exists")

    def _scaler_step(self, k: int, loss: float, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler) -> None:
        """fp16: GradScaler skips a step whose gradients overflowed and lowers its scale; many
        skips in a row mean divergence, not overflow."""
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        if scaler.get_scale() >= scale:
            self.watch.skipped = 0
            return
        self.watch.skipped += 1
        log.warning("step %d: fp16 gradients overflowed (loss %.4g); the update was skipped, loss scale %g -> %g",
                    k, loss, scale, scaler.get_scale())
        if self.watch.skipped >= MAX_SKIPPED_STEPS:
            raise self.diverged(f"{self.watch.skipped} fp16 steps in a row overflowed (up to step {k})",
                                k - self.watch.skipped)

    def check_weights(self, step: int, **state_dicts: Optional[dict]) -> None:
        """Raise :class:`TrainingDiverged` if a weight of step ``step`` is NaN/inf."""
        bad = non_finite(**state_dicts)
        if bad:
            raise self.diverged(f"{len(bad)} weight tensors ({', '.join(bad[:3])}) are not finite "
                                f"after step {step}", step)

    def diverged(self, what: str, bad_step: int) -> TrainingDiverged:
        """The error for a divergence first seen in the weights of step ``bad_step``: checkpoints
        from that step on (and from an ongoing loss spike) are moved aside, so that
        ``--resume auto`` continues from the last trustworthy one."""
        kept = self.folder.set_aside_diverged(self.watch.trusted_until(bad_step), self.dist.main)
        return TrainingDiverged(f"{what}: training stopped and nothing was saved; {kept}. Lower optim.lr, "
                                f"set optim.grad_clip, or use amp=none/bf16.")

    def stop_signal(self) -> Optional[int]:
        """The stop signal this process received (SIGTERM when only another rank got one), or
        None; every rank gets the same answer, so that all save together."""
        if not self.dist.any(self.signals.received is not None):
            return None
        return self.signals.received or signal.SIGTERM


class StopSignals:
    """Context manager: while active, SIGTERM / SIGINT only record ``self.received`` (the signal
    number). Installed only in the main thread (Python's rule); elsewhere it does nothing."""

    def __init__(self):
        self.received: Optional[int] = None
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum
        for sig, old in self._old.items():  # a second signal stops the process at once
            signal.signal(sig, old)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGTERM / SIGINT, which a scheduler or Ctrl-C
    sends to the whole process group, so that they keep serving the main process until it has
    saved its checkpoint and shuts them down."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class SpikeWatch:
    """A loss counts as a spike when it exceeds ``factor`` times the median of the last
    ``window`` finite losses (``factor`` 0 = never). Spikes enter the window too, so a lasting
    shift of the loss level stops counting as a spike once it fills half the window."""

    def __init__(self, factor: float, window: int = 50):
        self.factor = factor
        self.recent: deque[float] = deque(maxlen=window)

    def is_spike(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return False
        spike = self.factor > 0 and bool(self.recent) and loss > self.factor * statistics.median(self.recent)
        self.recent.append(loss)
        return spike


class LossWatch:
    """Loss bookkeeping of the divergence checks: spikes (:class:`SpikeWatch`), the first step of
    an ongoing spike, fp16 steps skipped in a row, and the newest step whose checkpoint is still
    trustworthy (:meth:`trusted_until`)."""

    def __init__(self, spike_factor: float):
        self.spike = SpikeWatch(spike_factor)
        self.spike_since: Optional[int] = None
        self.skipped = 0

    def is_new_spike(self, loss: float, k: int) -> bool:
        """Record the finite loss of step ``k``; True when it starts a spike."""
        if not self.spike.is_spike(loss):
            self.spike_since = None
            return False
        new = self.spike_since is None
        self.spike_since = self.spike_since or k
        return new

    def trusted_until(self, bad_step: int) -> int:
        """The newest step whose weights can be trusted when those of ``bad_step`` cannot (and not
        those of the step before an ongoing spike)."""
        limit = bad_step - 1
        return min(limit, self.spike_since - 2) if self.spike_since is not None else limit


def non_finite(**state_dicts: Optional[dict]) -> list[str]:
    """``'<group>.<key>'`` of every floating-point tensor holding NaN or inf."""
    bad = []
    for group, sd in state_dicts.items():
        for key, t in (sd or {}).items():
            if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad.append(f"{group}.{key}")
    return bad
