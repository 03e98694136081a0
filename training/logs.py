"""What a run reports: log lines (stderr through tqdm, ``train.log``), TensorBoard, image grids.

Only rank 0 writes files; other ranks print warnings and errors only. :meth:`RunLog.close`
restores the loggers it configured, so runs in one process (tests) do not leak handlers.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from datapipe.image_io import write_image

LOGGERS = ("trainer", "datapipe")


class _TqdmHandler(logging.Handler):
    """Log lines that do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


class RunLog:
    """Log handlers of the ``trainer`` and ``datapipe`` loggers, TensorBoard and PNG grids of a run."""

    def __init__(self, out: Path, rank: int, tensorboard: bool):
        self.out, self.main = Path(out), rank == 0
        fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%H:%M:%S")
        handlers: list[logging.Handler] = [_TqdmHandler()]
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(self.out / "train.log"))
        self.saved = [(lg, lg.level, lg.propagate) for lg in map(logging.getLogger, LOGGERS)]
        for logger, _, _ in self.saved:
            _drop_handlers(logger)
            logger.setLevel(logging.INFO if self.main else logging.WARNING)
            logger.propagate = False
            for h in handlers:
                h.setFormatter(fmt)
                logger.addHandler(h)
        self.tensorboard, self.writer = tensorboard and self.main, None

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


def _drop_handlers(logger: logging.Logger) -> None:
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
