"""Train the DifFace estimator or diffusion prior: ``python trainer.py --cfg configs/train/X.yaml``.

One :class:`Trainer` for both; the network, objective and dataset come from the config
(``training.TrainConfig``). The same command runs on one CPU or, under
``torchrun --nproc_per_node=K trainer.py ...``, as DDP on K processes (nccl on GPUs, gloo on
CPU). Rank 0 writes logs, TensorBoard, image grids and checkpoints to ``out_dir``.

Exact resume: a run stopped after step k and resumed with ``--resume auto`` reaches the same
weights at step n as an uninterrupted run, because everything random is a function of state
saved in the checkpoint (model, EMA, optimizer, scaler, scheduler, step, RNG states of every
rank) or of (seed, step): the data order and each sample's degradation (datapipe.datasets).
"""
from __future__ import annotations

import argparse
import errno
import logging
import math
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from omegaconf.errors import OmegaConfBaseException
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from datapipe.datasets import ResumableSampler, build_dataset
from models import build_network
from training import (AMP_DTYPES, LOWER_IS_BETTER, Ema, LRFactor, RunFolder, TrainConfig,
                      build_objective, config_changes, config_yaml, load_config, rng_state, seed_all,
                      set_rng_state, setup_distributed, weights_hash)
from training.guards import LossWatch, StopSignals, ignore_stop_signals, non_finite
from training.logs import RunLog

log = logging.getLogger("trainer")


class TrainingDiverged(RuntimeError):
    """The loss, gradient norm or weights became NaN/inf; training stopped without saving."""

# fp16: this many GradScaler-skipped steps in a row stop the run as diverged
MAX_SKIPPED_STEPS = 20


class Trainer:
    """The training loop; model, objective and data are injected through the config."""

    def __init__(self, cfg: TrainConfig, resume: Optional[str] = None):
        self.cfg, self.dist = cfg, setup_distributed(cfg.device)
        if cfg.data.batch_size % self.dist.world:
            raise ValueError(f"data.batch_size={cfg.data.batch_size} is not divisible by the "
                             f"{self.dist.world} processes")
        self.out = Path(cfg.out_dir)
        self.folder = RunFolder(self.out, cfg.log.keep_last)
        self.store = self.folder.store
        self.runlog = RunLog(self.out, self.dist.rank, cfg.log.tensorboard)
        self.watch = LossWatch(cfg.log.spike_factor)
        self.stopped_by: Optional[int] = None  # the signal that ended train(), if any
        try:
            self._build(cfg, resume)
            self.runlog.open_tensorboard(self.step)
            if self.dist.main:
                self._summary()
        except BaseException:
            self.close()
            raise

    def _build(self, cfg: TrainConfig, resume: Optional[str]) -> None:
        """Objective, data, network, EMA, optimizer, scheduler, scaler, generators; then resume."""
        resumed = self._find_resume(resume)
        device, rank = self.dist.device, self.dist.rank
        self.objective = build_objective(cfg)
        self._build_data()  # data problems surface before the (large) model is built
        seed_all(cfg.seed)  # the same initial weights on every rank
        self.net = build_network(cfg.model.name, cfg.model.params).to(device)
        if cfg.model.weights:
            from models.checkpoint import load_weights
            load_weights(self.net, cfg.model.weights)
        self.ema = Ema(self.net, cfg.ema_rate) if cfg.ema_rate > 0 else None
        opt = cfg.optim
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=opt.lr, betas=tuple(opt.betas),
                                           eps=opt.eps, weight_decay=opt.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, LRFactor(opt))
        self.scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
        self.generator = torch.Generator(device).manual_seed(cfg.seed + rank)  # t, eps draws
        seed_all(cfg.seed + rank)  # dropout etc.: a different stream per rank
        self.step, self.best, self.saved_step = 0, None, None
        if resumed is not None:
            self.load_state(resumed[1])
            self.saved_step = self.step
            log.info("resumed from %s at step %d", resumed[0], self.step)
        ddp = self.dist.world > 1
        ids = [device.index] if device.type == "cuda" else None
        self.model = DistributedDataParallel(self.net, device_ids=ids) if ddp else self.net
        if self.dist.main:
            (self.out / "config.yaml").write_text(config_yaml(cfg))

    # ---- setup -----------------------------------------------------------------------------
    def _find_resume(self, resume: Optional[str]) -> Optional[tuple[Path, dict]]:
        """(path, state) to resume from, or None; refuse to train over existing checkpoints.

        Rank 0 first deletes temp files of interrupted writes and, when resuming at step k,
        moves the checkpoints and exports of steps after k (a rollback, or unreadable newer
        files) into ``ckpts/rolled_back_after_step_<k>/``: this run's lineage is then the only
        one in ``ckpts/``, so pruning and a later ``--resume auto`` never mix two runs.
        """
        found, error = None, None
        if self.dist.main:
            try:
                for p in self.folder.remove_temp_files():
                    log.info("deleted %s, left by an interrupted write", p)
                found = self.folder.resume_source(resume)
                if found is not None:
                    self.folder.set_aside(found[1]["step"], "rolled_back")
            except (OSError, ValueError) as err:  # the other ranks must not wait at the barrier
                error = err
        if self.dist.world > 1:
            dist.barrier()
            if not self.dist.main:
                found = self.folder.resume_source(resume)
        if error is not None:
            raise error
        return found

    def _summary(self) -> None:
        """One block of log lines describing the run before its first step."""
        cfg, d = self.cfg, self.dist
        params = sum(p.numel() for p in self.net.parameters())
        val = len(self.val_loader.dataset) if self.val_loader is not None else 0
        log.info("network %s: %s parameters; objective %s; amp %s; EMA %s", cfg.model.name, f"{params:,}",
                 cfg.objective.name, cfg.amp, cfg.ema_rate or "off")
        log.info("data %s: %d training images, %d validation images", cfg.data.train.name,
                 len(self.loader.dataset), val)
        log.info("device %s, world size %d: effective batch %d = %d per process in micro-batches of %d; "
                 "%d steps per epoch", d.device, d.world, cfg.data.batch_size, self.per_rank,
                 cfg.data.micro_batch, self.steps_per_epoch)
        log.info("steps %d -> %d; lr %g (%s); checkpoints every %d steps in %s", self.step, cfg.max_steps,
                 cfg.optim.lr, cfg.optim.schedule, cfg.log.save_every, self.store.folder)

    def _build_data(self) -> None:
        cfg, d = self.cfg, self.dist
        self.per_rank = cfg.data.batch_size // d.world
        train_set = build_dataset(cfg.data.train, cfg.seed, d.rank)
        first = train_set[0]
        missing = [k for k in self.objective.inputs if k not in first]
        if missing:
            raise ValueError(f"objective {cfg.objective.name!r} needs {missing} but dataset "
                             f"{cfg.data.train.name!r} gives {sorted(first)}")
        self.sampler = ResumableSampler(train_set, d.world, d.rank, shuffle=True, seed=cfg.seed)
        self.steps_per_epoch = self.sampler.num_samples // self.per_rank
        if self.steps_per_epoch < 1:
            raise ValueError(f"{len(train_set)} training images are fewer than the batch "
                             f"({cfg.data.batch_size} over {d.world} processes)")
        self.loader = self._loader(train_set, self.per_rank, self.sampler, drop_last=True)
        self.val_loader = None
        if cfg.data.val is not None and d.main:
            val_set = build_dataset(cfg.data.val, cfg.seed, 0)
            self.val_loader = self._loader(val_set, cfg.data.val_batch, None, drop_last=False)

    def _loader(self, dataset, batch: int, sampler, drop_last: bool) -> DataLoader:
        workers = self.cfg.data.num_workers
        return DataLoader(dataset, batch_size=batch, sampler=sampler, shuffle=False, drop_last=drop_last,
                          num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=self.dist.device.type == "cuda", worker_init_fn=ignore_stop_signals,
                          generator=torch.Generator().manual_seed(self.cfg.seed))  # keeps global RNG untouched

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The whole training state (a collective call: RNG states are gathered from all ranks)."""
        rngs = [None] * self.dist.world
        mine = {**rng_state(self.dist.device), "objective": self.generator.get_state()}
        if self.dist.world > 1:
            dist.all_gather_object(rngs, mine)
        else:
            rngs = [mine]
        return {"step": self.step, "model": self.net.state_dict(),
                "ema": self.ema.model.state_dict() if self.ema else None,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "rng": rngs, "world_size": self.dist.world, "best": self.best,
                "config": config_yaml(self.cfg)}

    def load_state(self, state: dict) -> None:
        """Weights, EMA, optimizer moments, scaler, schedule position, step, RNG states and best
        score from ``state``; then the config's optimizer hyper-parameters (:meth:`_apply_optim`)."""
        self.net.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.model.load_state_dict(state["ema"] if state["ema"] is not None else state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.best = state["step"], state["best"]
        if state["world_size"] == self.dist.world:
            rng = state["rng"][self.dist.rank]
            set_rng_state(rng, self.dist.device)
            self.generator.set_state(rng["objective"])
        else:
            log.warning("checkpoint from %d processes, now %d: RNG streams reseeded from (seed, step)",
                        state["world_size"], self.dist.world)
            self.generator.manual_seed(self.cfg.seed + self.dist.rank + 7919 * self.step)
        self._apply_optim()
        log.info("from the checkpoint: weights, EMA, optimizer moments, scaler, schedule position (step %d), "
                 "RNG states, best score; from the config: every hyper-parameter", self.step)
        for key, old, new in config_changes(state["config"], self.cfg):
            log.warning("%s = %r from the config (the checkpoint's run had %r)", key, new, old)

    def _apply_optim(self) -> None:
        """Set lr, betas, eps, weight decay and the LR schedule from the config after a state load
        (the loaded optimizer and scheduler states carry the old run's values)."""
        opt, factor = self.cfg.optim, LRFactor(self.cfg.optim)
        groups = self.optimizer.param_groups
        self.scheduler.lr_lambdas = [factor] * len(groups)
        self.scheduler.base_lrs = [opt.lr] * len(groups)
        for group in groups:
            group.update(initial_lr=opt.lr, lr=opt.lr * factor(self.scheduler.last_epoch), betas=tuple(opt.betas),
                         eps=opt.eps, weight_decay=opt.weight_decay)
        self.scheduler._last_lr = [group["lr"] for group in groups]

    def save(self, name: Optional[str] = None) -> Optional[Path]:
        """Checkpoint (all ranks call; rank 0 writes) and export the EMA weights."""
        state = self.state_dict()
        bad = non_finite(model=state["model"], ema=state["ema"])
        if bad:
            raise self._diverged(f"{len(bad)} weight tensors ({', '.join(bad[:3])}) are not finite "
                                 f"after step {self.step}", self.step)
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
        net = self.ema.model if self.ema else self.net
        save_safetensors(net.state_dict(), path, {"network": self.cfg.model.name, "step": str(self.step),
                                                  "config": config_yaml(self.cfg)})

    # ---- the loop --------------------------------------------------------------------------
    def autocast(self):
        dtype = AMP_DTYPES[self.cfg.amp]
        return torch.autocast(self.dist.device.type, dtype=dtype) if dtype else nullcontext()

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.dist.device, non_blocking=True) if torch.is_tensor(v) and v.is_floating_point()
                else v for k, v in batch.items()}

    def train_step(self, batch: dict) -> dict[str, float]:
        """One optimizer step over the rank's batch, in micro-batches (DDP syncs on the last)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        batch = self._to_device(batch)
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
        stats = self._reduce(totals)
        self._watch_loss(stats["loss"])
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.net.parameters(), clip))
        if self.scaler:
            self._scaler_step(stats)
        else:
            if not math.isfinite(stats["grad_norm"]):
                raise self._diverged(f"the gradient norm is {stats['grad_norm']} at step {self.step + 1}", self.step)
            self.optimizer.step()
        stats["lr"] = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.net)
        return stats

    def _reduce(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        """Mean of the step's loss terms over ranks (so every rank sees a NaN together)."""
        values = torch.stack([totals[k] for k in sorted(totals)])
        if self.dist.world > 1:
            dist.all_reduce(values)
            values /= self.dist.world
        return dict(zip(sorted(totals), values.tolist()))

    # ---- divergence ------------------------------------------------------------------------
    # The loss of step k = self.step + 1 is computed with the weights of checkpoint k - 1.

    def _watch_loss(self, loss: float) -> None:
        """Stop on a NaN/inf loss (fp16: left to the GradScaler); note loss spikes."""
        k = self.step + 1
        if not math.isfinite(loss):
            if self.scaler is None:
                raise self._diverged(f"the loss is {loss} at step {k}", self.step)
            return
        if self.watch.is_new_spike(loss, k):
            kept = [(s, p) for s, p in self.store.steps() if s <= k - 2]
            if kept:
                self.store.protected.add(kept[-1][0])
            log.warning("loss spike at step %d: %.4g, over %g x the recent median; %s", k, loss,
                        self.cfg.log.spike_factor,
                        f"{kept[-1][1].name} (before the spike) will not be pruned" if kept
                        else "no checkpoint from before it exists")

    def _scaler_step(self, stats: dict) -> None:
        """fp16: GradScaler skips a step whose gradients overflowed and lowers its scale; many
        skips in a row mean divergence, not overflow."""
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scaler.get_scale() >= scale:
            self.watch.skipped = 0
            return
        self.watch.skipped += 1
        log.warning("step %d: fp16 gradients overflowed (loss %.4g); the update was skipped, loss scale %g -> %g",
                    self.step + 1, stats["loss"], scale, self.scaler.get_scale())
        if self.watch.skipped >= MAX_SKIPPED_STEPS:
            raise self._diverged(f"{self.watch.skipped} fp16 steps in a row overflowed (up to step "
                                 f"{self.step + 1})", self.step - self.watch.skipped + 1)

    def _diverged(self, what: str, bad_step: int) -> TrainingDiverged:
        """The error for a divergence first seen in the weights of step ``bad_step``: checkpoints
        from that step on (and from an ongoing loss spike) are moved aside, so that
        ``--resume auto`` continues from the last trustworthy one."""
        limit = self.watch.trusted_until(bad_step)
        moved = self.folder.set_aside(limit, "diverged") if self.dist.main else None
        good = [p for s, p in self.store.steps() if s <= limit]
        kept = (f"--resume auto continues from {good[-1]}" if good else
                "no checkpoint from before the divergence exists; start again from step 0")
        if moved is not None:
            kept = f"later checkpoints were moved to {moved}; {kept}"
        return TrainingDiverged(
            f"{what}: training stopped and nothing was saved; {kept}. Lower optim.lr, set optim.grad_clip, "
            f"or use amp=none/bf16.")

    def train(self) -> None:
        """Run until ``max_steps``, then save a final checkpoint and ``export.safetensors``."""
        cfg = self.cfg
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not self.dist.main, dynamic_ncols=True)
        clock, last_step, window = time.perf_counter(), self.step, {}
        with StopSignals() as signals:
            while self.step < cfg.max_steps and self.stopped_by is None:
                epoch, offset = divmod(self.step, self.steps_per_epoch)
                self.sampler.set_epoch(epoch, offset * self.per_rank)
                for batch in self.loader:
                    stats = self.train_step(batch)
                    self.step += 1
                    bar.update(1)
                    for k, v in stats.items():  # sums over the log window
                        window[k] = window.get(k, 0.0) + v
                    if self._due(cfg.log.log_every):
                        now = time.perf_counter()
                        means = {k: v / (self.step - last_step) for k, v in window.items()}
                        means["lr"] = stats["lr"]
                        means["it_per_s"] = (self.step - last_step) / max(now - clock, 1e-9)
                        means["img_per_s"] = means["it_per_s"] * cfg.data.batch_size
                        clock, last_step, window = now, self.step, {}
                        self.runlog.scalars("train", self.step, means)
                        bar.set_postfix(loss=f"{means['loss']:.4g}", lr=f"{means['lr']:.2g}")
                    self._periodic(batch)
                    if self._stop_requested(signals):
                        self.stopped_by = signals.received or signal.SIGTERM
                        break
                    if self.step >= cfg.max_steps:
                        break
        bar.close()
        if self.saved_step != self.step:  # decided in memory: every rank must agree
            self.save()
        if self.stopped_by is not None:
            log.warning("%s: stopped at step %d with a checkpoint; continue with --resume auto",
                        signal.Signals(self.stopped_by).name, self.step)
        elif self.dist.main:
            self.export(self.out / "export.safetensors")

    def _stop_requested(self, signals: StopSignals) -> bool:
        """Whether a stop signal reached any rank (all ranks agree, so all save together)."""
        flag = signals.received is not None
        if self.dist.world > 1:
            t = torch.tensor([float(flag)], device=self.dist.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

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

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean validation scores of the EMA model (rank 0): image metrics or the prior's loss."""
        model, scores = self.eval_model(), {}
        model.eval()
        generator = torch.Generator(self.dist.device).manual_seed(self.cfg.seed)
        for batch in self.val_loader:
            with self.autocast():
                for k, v in self.objective.evaluate(model, self._to_device(batch), generator).items():
                    scores.setdefault(k, []).extend(v)
        return {k: sum(v) / len(v) for k, v in scores.items()}

    def _is_new_best(self) -> bool:
        """Validate on rank 0; tell every rank whether ``log.best_metric`` improved."""
        flag = [False]
        if self.dist.main and self.val_loader is not None:
            scores = self.validate()
            self.runlog.scalars("val", self.step, scores)
            flag = [self._record_best(scores)]
        if self.dist.world > 1:
            dist.broadcast_object_list(flag, src=0)
        return flag[0]

    def _record_best(self, scores: dict[str, float]) -> bool:
        metric = self.cfg.log.best_metric
        if metric not in scores:
            log.warning("log.best_metric %r is not among the validation scores %s: no best.pt",
                        metric, sorted(scores))
            return False
        value, sign = scores[metric], (-1.0 if metric in LOWER_IS_BETTER else 1.0)
        if self.best is not None and sign * value <= sign * self.best["value"]:
            return False
        self.best = {"metric": metric, "value": value, "step": self.step}
        return True

    @torch.no_grad()
    def log_images(self, batch: dict) -> None:
        """A grid of the objective's image rows (n images wide) to TensorBoard and a PNG."""
        n = self.cfg.log.num_images
        model = self.eval_model()
        model.eval()
        small = self._to_device({k: v[:n] for k, v in batch.items()})
        generator = torch.Generator(self.dist.device).manual_seed(self.cfg.seed)
        with self.autocast():
            rows = self.objective.images(model, small, generator)
        self.runlog.grid("train", self.step, rows)

    def close(self) -> None:
        """Close TensorBoard and the log handlers; leave the process group."""
        self.runlog.close()
        if self.dist.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# Library entry point and CLI
# --------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, resume: Optional[str] = None, dump_weights_hash: bool = False) -> Trainer:
    """Build a :class:`Trainer`, run it to ``cfg.max_steps`` and close it; returns the trainer.

    ``dump_weights_hash``: every rank writes ``<out_dir>/weights_rank<r>.sha256`` at the end.
    """
    trainer = Trainer(cfg, resume)
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
SIGTERM / SIGINT save a checkpoint at the current step and stop; --resume auto continues exactly.
--resume PATH to an earlier step moves the later checkpoints into ckpts/rolled_back_after_step_<N>/.
Exit codes: 0 done, 2 a user error (config, data, disk) or divergence (NaN/inf loss or weights;
the last trustworthy checkpoint is kept), 128 + signal number when stopped by a signal."""


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
    p.add_argument("--max-steps", type=int, default=None, help="last step (default: the config's max_steps)")
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
    try:
        trainer = train(cfg, args.resume, args.debug_dump_weights_hash)
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # missing data root, full disk, unreadable files
        if err.errno == errno.ENOSPC:
            print(f"error: no space left on the device writing {err.filename or cfg.out_dir}: free some "
                  f"space or lower log.keep_last, then --resume auto", file=sys.stderr)
        else:
            print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # empty folder, batch larger than the dataset, unreadable checkpoints
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 128 + trainer.stopped_by if trainer.stopped_by is not None else 0


if __name__ == "__main__":
    sys.exit(main())
