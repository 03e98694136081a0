"""What a run reports: log lines (stderr through tqdm, ``train.log``), TensorBoard, image grids,
the progress bar and the training scalars (:class:`Progress`).

Only rank 0 writes files; other ranks print warnings and errors only. :meth:`RunLog.close`
restores the loggers it configured, so runs in one process (tests) do not leak handlers.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from datapipe.image_io import write_image

if TYPE_CHECKING:
    from .config import TrainConfig
    from .data import TrainData
    from .state import Dist

LOGGERS = ("trainer", "datapipe")


class _TqdmHandler(logging.Handler):
    """Log lines that do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


class _Held(logging.Handler):
    """Keeps the records logged before ``train.log`` exists."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class RunLog:
    """Log handlers of the ``trainer`` and ``datapipe`` loggers, TensorBoard and PNG grids of a run.

    Until :meth:`start` nothing is written to disk: log lines go to stderr, and rank 0 keeps them
    in memory. :meth:`start` (the run passed its checks and really starts) creates ``out_dir`` and
    ``train.log`` and writes the kept lines first, so a refused run leaves no folder and no log.
    """

    def __init__(self, out: Path, rank: int, tensorboard: bool):
        self.out, self.main = Path(out), rank == 0
        self.fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%H:%M:%S")
        self.held = _Held() if self.main else None
        handlers: list[logging.Handler] = [_TqdmHandler(), *([self.held] if self.held else [])]
        self.saved = [(lg, lg.level, lg.propagate) for lg in map(logging.getLogger, LOGGERS)]
        for logger, _, _ in self.saved:
            _drop_handlers(logger)
            logger.setLevel(logging.INFO if self.main else logging.WARNING)
            logger.propagate = False
            for h in handlers:
                h.setFormatter(self.fmt)
                logger.addHandler(h)
        self.tensorboard, self.writer = tensorboard and self.main, None

    def start(self) -> None:
        """Rank 0: create ``out_dir`` and append to ``out_dir/train.log``, the held lines first."""
        if self.held is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(self.out / "train.log")
        file.setFormatter(self.fmt)
        for record in self.held.records:
            file.handle(record)
        for logger, _, _ in self.saved:
            logger.removeHandler(self.held)
            logger.addHandler(file)
        self.held = None

    def open_tensorboard(self, step: int) -> None:
        """Start TensorBoard at ``step``: events a previous run wrote after ``step`` are purged
        (``purge_step``), so a resumed or rolled-back run does not draw its curves twice."""
        if self.tensorboard and self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.out / "tb"), purge_step=step + 1 if step > 0 else None)

    def scalars(self, prefix: str, step: int, values: dict[str, float]) -> None:
        """One log line and one TensorBoard scalar per value (rank 0)."""
        if not self.main:
            return
        logging.getLogger("trainer").info("step %d %s %s", step, prefix,
                                          " ".join(f"{k}={v:.5g}" for k, v in values.items()))
        if self.writer:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def grid(self, tag: str, step: int, rows: list[torch.Tensor]) -> None:
        """Rows of (n, 3, H, W) RGB [0, 1] images -> one grid, to ``images/`` and TensorBoard."""
        grid = torch.cat([torch.cat(list(row.float().cpu()), dim=2) for row in rows], dim=1).clamp(0, 1)
        write_image(self.out / "images" / f"{tag}_{step:08d}.png", grid)
        if self.writer:
            self.writer.add_image(f"{tag}/images", grid, step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
        for logger, level, propagate in self.saved:
            _drop_handlers(logger)
            logger.setLevel(level)
            logger.propagate = propagate


class Progress:
    """The progress bar of the training steps and, every ``log_every`` steps (0 = never), one
    ``train`` line of :meth:`RunLog.scalars`: the means of the step statistics since the last
    line (``lr``: the last step's), iterations and images per second."""

    def __init__(self, runlog: RunLog, step: int, max_steps: int, log_every: int, batch_size: int):
        self.runlog, self.log_every, self.batch_size = runlog, log_every, batch_size
        self.bar = tqdm(total=max_steps, initial=step, disable=not runlog.main, dynamic_ncols=True)
        self.clock, self.start, self.sums = time.perf_counter(), step, {}

    def update(self, step: int, stats: dict[str, float]) -> None:
        """Step ``step`` is done; ``stats``: its loss terms, grad_norm and lr."""
        self.bar.update(1)
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        if self.log_every > 0 and step % self.log_every == 0:
            now = time.perf_counter()
            means = {k: v / (step - self.start) for k, v in self.sums.items()}
            means["lr"] = stats["lr"]
            means["it_per_s"] = (step - self.start) / max(now - self.clock, 1e-9)
            means["img_per_s"] = means["it_per_s"] * self.batch_size
            self.clock, self.start, self.sums = now, step, {}
            self.runlog.scalars("train", step, means)
            self.bar.set_postfix(loss=f"{means['loss']:.4g}", lr=f"{means['lr']:.2g}")

    def close(self) -> None:
        self.bar.close()


def log_summary(cfg: "TrainConfig", d: "Dist", data: "TrainData", params: int, step: int, ckpts: Path) -> None:
    """One block of log lines describing the run before its first step."""
    log = logging.getLogger("trainer")
    val = len(data.val_loader.dataset) if data.val_loader is not None else 0
    log.info("network %s: %s parameters; objective %s; amp %s; EMA %s", cfg.model.name, f"{params:,}",
             cfg.objective.name, cfg.amp, cfg.ema_rate or "off")
    log.info("data %s: %d training images, %d validation images", cfg.data.train.name,
             len(data.loader.dataset), val)
    log.info("device %s, world size %d: effective batch %d = %d per process in micro-batches of %d; "
             "%d steps per epoch", d.device, d.world, cfg.data.batch_size, data.per_rank,
             cfg.data.micro_batch, data.steps_per_epoch)
    log.info("steps %d -> %d; lr %g (%s); checkpoints every %d steps in %s", step, cfg.max_steps,
             cfg.optim.lr, cfg.optim.schedule, cfg.log.save_every, ckpts)


def _drop_handlers(logger: logging.Logger) -> None:
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
