"""Train the DifFace estimator or diffusion prior: ``python trainer.py --cfg configs/train/X.yaml``.

One :class:`Trainer` for both; the network, objective and dataset come from the config
(``training.TrainConfig``). The same command runs on one CPU or, under
``torchrun --nproc_per_node=K trainer.py ...``, as DDP on K processes (nccl on GPUs, gloo on
CPU). Rank 0 writes logs, TensorBoard, image grids and checkpoints to ``out_dir``.

Exact resume: a run stopped after step k and resumed with ``--resume auto`` reaches the same
weights at step n as an uninterrupted run, because everything random is a function of state
saved in the checkpoint (model, EMA, optimizer, scaler, scheduler, step, RNG states of every
rank) or of (seed, step): the data order and each sample's degradation (datapipe.datasets).
A resumed run trains to the target it was started with unless the command line names one.

Nothing is written before the run has passed its checks (config, data, network, checkpoint to
resume from): a refused run creates no ``out_dir`` and no ``train.log``.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import math
import signal
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from omegaconf.errors import OmegaConfBaseException
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from models import build_network
from models.checkpoint import WeightsError
from training import (AMP_DTYPES, Ema, RunFolder, TrainConfig, build_objective, config_changes, config_yaml,
                      load_config, saved_value, seed_all, setup_distributed, weights_hash)
from training.data import build_data
from training.guards import Guards, TrainingDiverged
from training.logs import Progress, RunLog, log_summary
from training.state import apply_optim, build_optimizer, gather_rng_states, restore_rng_states
from training.validation import image_rows, improves, to_device, validate

log = logging.getLogger("trainer")


class Trainer:
    """The training loop; model, objective and data are injected through the config.

    ``resume``: None, ``"auto"`` or a checkpoint path. ``target_from``: where ``cfg.max_steps``
    comes from, for the log of a resumed run; None means that it was not chosen for this run, and
    a resumed run then keeps the target saved in its checkpoint (``trainer.py --resume`` without
    ``--max-steps``). ``cfg`` (``self.cfg``) is then a copy with that target.
    """

    def __init__(self, cfg: TrainConfig, resume: Optional[str] = None, target_from: Optional[str] = "the config"):
        self.cfg, self.dist = cfg, setup_distributed(cfg.device)
        if cfg.data.batch_size % self.dist.world:
            raise ValueError(f"data.batch_size={cfg.data.batch_size} is not divisible by the "
                             f"{self.dist.world} processes")
        self.out = Path(cfg.out_dir)
        self.folder = RunFolder(self.out, cfg.log.keep_last)
        self.store = self.folder.store
        self.runlog = RunLog(self.out, self.dist.rank, cfg.log.tensorboard)  # no file yet
        self.guards = Guards(self.folder, self.dist, cfg.log.spike_factor)
        self.stopped_by: Optional[int] = None  # the signal that ended train(), if any
        try:
            self._build(resume, target_from)
            self._start()
        except BaseException:
            self.close()
            raise

    def _build(self, resume: Optional[str], target_from: Optional[str]) -> None:
        """Checkpoint to resume from, objective, data, network, EMA, optimizer, scheduler, scaler,
        generators, the resumed state: every check, and nothing written to disk."""
        resumed = self.folder.find(resume, self.dist)  # (path, state) or None
        if resumed is not None:
            self.cfg = self._target(resumed[1], target_from)
        cfg, device, rank = self.cfg, self.dist.device, self.dist.rank
        self.objective = build_objective(cfg.objective, cfg.diffusion, cfg.log.y_channel)
        # data problems surface before the (large) model is built
        self.data = build_data(cfg.data, cfg.seed, self.dist, self.objective.inputs, cfg.objective.name)
        seed_all(cfg.seed)  # the same initial weights on every rank
        self.net = build_network(cfg.model.name, cfg.model.params).to(device)
        if cfg.model.weights:
            from models.checkpoint import load_weights
            load_weights(self.net, cfg.model.weights)
        self.ema = Ema(self.net, cfg.ema_rate) if cfg.ema_rate > 0 else None
        self.optimizer, self.scheduler = build_optimizer(self.net, cfg.optim)
        self.scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
        self.generator = torch.Generator(device).manual_seed(cfg.seed + rank)  # t, eps draws
        seed_all(cfg.seed + rank)  # dropout etc.: a different stream per rank
        self.step, self.best, self.saved_step = 0, None, None
        if resumed is not None:
            try:
                self.load_state(resumed[1])
            except RuntimeError as err:  # shapes or names differ: another network's checkpoint
                raise ValueError(f"{resumed[0]} does not fit the network of this config ({cfg.model.name}): "
                                 f"{str(err).splitlines()[0]}") from err
            self.saved_step = self.step
            log.info("resumed from %s at step %d", resumed[0], self.step)
        ddp = self.dist.world > 1
        ids = [device.index] if device.type == "cuda" else None
        self.model = DistributedDataParallel(self.net, device_ids=ids) if ddp else self.net

    def _target(self, state: dict, target_from: Optional[str]) -> TrainConfig:
        """The config of a resumed run: ``self.cfg``, with the target (``max_steps``) of the
        checkpoint's run when ``target_from`` is None; the choice and its reason are logged."""
        cfg, saved = self.cfg, saved_value(state["config"], "max_steps")
        if target_from is None and saved is not None:
            log.info("target max_steps=%d: the resumed run's (the config says %d; --max-steps N or "
                     "max_steps=N sets another)", saved, cfg.max_steps)
            return dataclasses.replace(cfg, max_steps=saved)
        log.info("target max_steps=%d: from %s (the resumed run's was %s)", cfg.max_steps,
                 target_from or "the config", saved)
        return cfg

    def _start(self) -> None:
        """The run passed its checks and starts: ``out_dir`` and ``train.log``, the rollback's
        moves, ``config.yaml``, TensorBoard, the summary."""
        self.runlog.start()
        self.folder.prepare(self.saved_step, self.dist)  # saved_step: the resumed step, or None
        if self.dist.main:
            (self.out / "config.yaml").write_text(config_yaml(self.cfg))
        self.runlog.open_tensorboard(self.step)
        if self.dist.main:
            params = sum(p.numel() for p in self.net.parameters())
            log_summary(self.cfg, self.dist, self.data, params, self.step, self.store.folder)

    @property
    def loader(self) -> DataLoader:
        """This rank's training batches (``self.data.loader``)."""
        return self.data.loader

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The whole training state (a collective call: RNG states are gathered from all ranks)."""
        rngs = gather_rng_states(self.dist, self.generator)
        return {"step": self.step, "model": self.net.state_dict(),
                "ema": self.ema.model.state_dict() if self.ema else None,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "rng": rngs, "world_size": self.dist.world, "best": self.best,
                "config": config_yaml(self.cfg)}

    def load_state(self, state: dict) -> None:
        """Weights, EMA, optimizer moments, scaler, schedule position, step, RNG states and best
        score from ``state``; then the config's optimizer hyper-parameters (:func:`apply_optim`)."""
        self.net.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.model.load_state_dict(state["ema"] if state["ema"] is not None else state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.best = state["step"], state["best"]
        restore_rng_states(state["rng"], state["world_size"], self.dist, self.generator, self.cfg.seed, self.step)
        apply_optim(self.optimizer, self.scheduler, self.cfg.optim)
        log.info("from the checkpoint: weights, EMA, optimizer moments, scaler, schedule position (step %d), "
                 "RNG states, best score; from the config: every hyper-parameter", self.step)
        for key, old, new in config_changes(state["config"], self.cfg):
            if key == "max_steps":  # the target has its own log line
                continue
            log.warning("%s = %r from the config (the checkpoint's run had %r)", key, new, old)

    def save(self, name: Optional[str] = None) -> Optional[Path]:
        """Checkpoint (all ranks call; rank 0 writes) and export the EMA weights."""
        state = self.state_dict()
        self.guards.check_weights(self.step, model=state["model"], ema=state["ema"])
        if name is None:
            self.saved_step = self.step
        if not self.dist.main:
            return None
        path = self.store.save(state, name)
        if name is None:
            self.export(self.out / f"ema_{self.step:08d}.safetensors")
            self.folder.prune_exports(self.step)
        log.info("saved %s", path)
        return path

    def export(self, path: Path) -> None:
        """EMA weights (the raw weights without EMA) as safetensors, for inference."""
        from models.checkpoint import save_safetensors
        metadata = {"network": self.cfg.model.name, "step": str(self.step), "config": config_yaml(self.cfg)}
        save_safetensors(self.eval_model().state_dict(), path, metadata)

    # ---- the loop --------------------------------------------------------------------------
    def autocast(self):
        dtype = AMP_DTYPES[self.cfg.amp]
        return torch.autocast(self.dist.device.type, dtype=dtype) if dtype else nullcontext()

    def train_step(self, batch: dict) -> dict[str, float]:
        """One optimizer step over the rank's batch; returns its loss terms, grad_norm and lr."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        stats = self._backward(to_device(batch, self.dist.device))  # 1. loss terms, gradients
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.net.parameters(), clip))  # 2. clipping
        self.guards.step(self.step + 1, stats, self.optimizer, self.scaler)  # 3. the update, unless diverged
        stats["lr"] = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()  # 4. the LR schedule and the EMA
        if self.ema is not None:
            self.ema.update(self.net)
        return stats

    def _backward(self, batch: dict) -> dict[str, float]:
        """Gradients of the batch's loss, accumulated over micro-batches (DDP syncs on the last);
        returns the loss terms, means over the rank's batch and then over the ranks."""
        size = next(v for v in batch.values() if torch.is_tensor(v)).shape[0]
        starts = list(range(0, size, self.cfg.data.micro_batch))
        totals: dict[str, torch.Tensor] = {}
        for i, start in enumerate(starts):
            micro = {k: v[start:start + self.cfg.data.micro_batch] for k, v in batch.items()}
            weight = next(v for v in micro.values() if torch.is_tensor(v)).shape[0] / size
            last = i == len(starts) - 1
            sync = nullcontext() if last or self.dist.world == 1 else self.model.no_sync()
            with sync:
                with self.autocast():
                    terms = self.objective(self.model, micro, self.generator)
                loss = terms["loss"] * weight
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            for k, v in terms.items():
                totals[k] = totals.get(k, 0.0) + v.detach().float() * weight
        means = self.dist.mean(torch.stack([totals[k] for k in sorted(totals)]))  # every rank sees a NaN
        return dict(zip(sorted(totals), means.tolist()))

    def train(self) -> None:
        """Run until ``max_steps``, then save a final checkpoint and ``export.safetensors``."""
        cfg = self.cfg
        if self.step >= cfg.max_steps:
            log.info("already at step %d, %s: nothing to train", self.step,
                     "the target" if self.step == cfg.max_steps else f"past the target max_steps={cfg.max_steps}")
        progress = Progress(self.runlog, self.step, cfg.max_steps, cfg.log.log_every, cfg.data.batch_size)
        with self.guards:  # from here SIGTERM / SIGINT only set a flag, read after each step
            while self.step < cfg.max_steps and self.stopped_by is None:
                self.data.start_at(self.step)
                for batch in self.data.loader:
                    stats = self.train_step(batch)
                    self.step += 1
                    progress.update(self.step, stats)
                    self._periodic(batch)
                    self.stopped_by = self.guards.stop_signal()
                    if self.stopped_by is not None or self.step >= cfg.max_steps:
                        break
        progress.close()
        if self.saved_step != self.step:  # decided in memory: every rank must agree
            self.save()
        if self.stopped_by is not None:
            log.warning("%s: stopped at step %d with a checkpoint; continue with --resume auto",
                        signal.Signals(self.stopped_by).name, self.step)
        elif self.dist.main:
            self.export(self.out / "export.safetensors")

    def _due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def _periodic(self, batch: dict) -> None:
        """Image grid, validation (+ best.pt) and checkpoint when their intervals come up."""
        log_cfg = self.cfg.log
        if self.dist.main and self._due(log_cfg.image_every):
            self.log_images(batch)
        if self.cfg.data.val is not None and self._due(log_cfg.val_every):
            if self._is_new_best():
                self.save("best.pt")
        if self._due(log_cfg.save_every):
            self.save()

    # ---- validation and images -------------------------------------------------------------
    def eval_model(self) -> torch.nn.Module:
        return self.ema.model if self.ema is not None else self.net

    def _is_new_best(self) -> bool:
        """Validate on rank 0; tell every rank whether ``log.best_metric`` improved."""
        new = False
        if self.dist.main and self.data.val_loader is not None:
            scores = validate(self.eval_model(), self.objective, self.data.val_loader, self.dist.device,
                              self.autocast, self.cfg.seed)
            self.runlog.scalars("val", self.step, scores)
            metric = self.cfg.log.best_metric
            if improves(scores, metric, self.best):
                self.best, new = {"metric": metric, "value": scores[metric], "step": self.step}, True
        return self.dist.from_main(new)

    def log_images(self, batch: dict) -> None:
        """A grid of the objective's image rows (n images wide) to TensorBoard and a PNG."""
        rows = image_rows(self.eval_model(), self.objective, batch, self.cfg.log.num_images, self.dist.device,
                          self.autocast, self.cfg.seed)
        self.runlog.grid("train", self.step, rows)

    def close(self) -> None:
        """Close TensorBoard and the log handlers; leave the process group."""
        self.runlog.close()
        if self.dist.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# Library entry point and CLI
# --------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, resume: Optional[str] = None, dump_weights_hash: bool = False,
          target_from: Optional[str] = "the config") -> Trainer:
    """Build a :class:`Trainer`, run it to its target and close it; returns the trainer.

    ``dump_weights_hash``: every rank writes ``<out_dir>/weights_rank<r>.sha256`` at the end.
    ``target_from``: see :class:`Trainer` (None: a resumed run keeps its own ``max_steps``).
    """
    trainer = Trainer(cfg, resume, target_from)
    try:
        trainer.train()
        if dump_weights_hash:
            path = trainer.out / f"weights_rank{trainer.dist.rank}.sha256"
            path.write_text(weights_hash(trainer.net) + "\n")
    finally:
        trainer.close()
    return trainer


EXAMPLES = """examples:
  python trainer.py --cfg configs/train/tiny_estimator.yaml data.train.root=data/utkface64/train
  python trainer.py --cfg configs/train/estimator_swinir_ffhq512.yaml --resume auto
  torchrun --standalone --nproc_per_node=4 trainer.py --cfg configs/train/estimator_swinir_ffhq512.yaml

Outputs in out_dir: config.yaml, train.log, tb/ (TensorBoard), images/, ckpts/step_<N>.pt (last
log.keep_last) and ckpts/best.pt, ema_<N>.safetensors and export.safetensors (for inference).
SIGTERM / SIGINT save a checkpoint at the current step and stop; --resume auto continues exactly,
to the max_steps the run was started with unless --max-steps N (or max_steps=N) names another.
--resume PATH to an earlier step moves the later checkpoints into ckpts/rolled_back_after_step_<N>/.
Exit codes: 0 done, 2 a user error (config, data, disk) or divergence (NaN/inf loss or weights;
the last trustworthy checkpoint is kept), 128 + signal number when stopped by a signal. A user
error creates no out_dir and no train.log. Paths in a config file are relative to its folder;
paths on the command line and out_dir to the working folder."""


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the DifFace estimator or diffusion prior from a YAML config.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", required=True, help="training config YAML (configs/train/*.yaml)")
    p.add_argument("overrides", nargs="*", default=[],
                   help="config overrides key=value, e.g. data.train.root=DIR optim.lr=1e-4")
    p.add_argument("--resume", default=None, metavar="PATH|auto",
                   help="continue from a checkpoint file, or the latest readable one in out_dir/ckpts "
                        "(default: start at step 0; refused if out_dir already holds checkpoints)")
    p.add_argument("--out-dir", default=None, help="output folder (default: the config's out_dir)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="last step (default: the config's max_steps; with --resume, the resumed run's)")
    p.add_argument("--save-every", type=int, default=None,
                   help="checkpoint interval in steps (default: the config's log.save_every)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--debug-dump-weights-hash", action="store_true",
                   help="each rank writes a SHA-256 of its final weights to out_dir/weights_rank<r>.sha256")
    return p.parse_intermixed_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    flags = {"out_dir": args.out_dir, "max_steps": args.max_steps, "log.save_every": args.save_every}
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    try:
        cfg = load_config(args.cfg, overrides)
    except FileNotFoundError as err:
        print(f"error: --cfg: {err}", file=sys.stderr)
        return 2
    except (ValueError, OmegaConfBaseException) as err:  # unknown key, wrong type, bad value
        print(f"error: config {args.cfg}: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(config_yaml(cfg), end="")
        return 0
    named = args.max_steps is not None or any(o.split("=", 1)[0].strip() == "max_steps" for o in args.overrides)
    try:
        trainer = train(cfg, args.resume, args.debug_dump_weights_hash, "the command line" if named else None)
    except OSError as err:  # missing data root, full disk, unreadable files
        if err.errno == errno.ENOSPC:
            print(f"error: no space left on the device writing {err.filename or cfg.out_dir}: free some "
                  f"space or lower log.keep_last, then --resume auto", file=sys.stderr)
        else:
            print(f"error: {err}", file=sys.stderr)
        return 2
    except (TrainingDiverged, ValueError, WeightsError) as err:  # divergence, empty folder, too few images,
        # bad checkpoints, a model.weights file that is missing or does not fit
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 128 + trainer.stopped_by if trainer.stopped_by is not None else 0


if __name__ == "__main__":
    sys.exit(main())
