"""Keeping a run safe: stop signals, loss spikes, finite weights.

* :class:`StopSignals` - SIGTERM / SIGINT (SLURM, Kubernetes, Ctrl-C) set a flag that the loop
  reads after each step, so the trainer saves a checkpoint at the current step and exits; a
  second signal gets the default behaviour (immediate stop).
* :class:`SpikeWatch` - a step loss above ``factor`` times the median of the recent losses.
* :func:`non_finite` - names of tensors in state dicts holding NaN or inf.

Step arithmetic used by the trainer: the loss of step ``k`` is computed with the weights of
checkpoint ``k - 1``, so when that loss is NaN or spikes, the newest trustworthy checkpoint is
the one at step ``k - 2`` or earlier.
"""
from __future__ import annotations

import math
import signal
import statistics
import threading
from collections import deque
from typing import Optional

import torch

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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
