"""Training objectives, chosen by name from :data:`OBJECTIVES`; what each trains is in
docs/training.md#what-is-trained.

The trainer is the same for every network: an objective is an object the trainer is given
(composition, not a subclass of the trainer).

An objective is a callable ``(model, batch, generator) -> {'loss': scalar, ...}`` with
``inputs`` (the batch keys it needs), ``images(...)`` (rows of the TensorBoard grid) and
``evaluate(...)`` (per-image validation scores). Batches hold (B, 3, H, W) float32 RGB
tensors in [0, 1]; randomness (timesteps, noise) comes from the given ``torch.Generator``.
Inpainting adds one entry, ``weighted_l1``: the LaMa estimator sees concat(lq, mask) and the
L1 is weighted by the mask from the batch (``(B, 1, H, W)`` float32 in {0, 1}, 1 = hole).
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

from datapipe.image_io import tensor_to_uint8
from metrics.pixel import psnr, ssim
from models import DiffusionConfig
from models.diffusion import DiffusionSchedule, hybrid_loss, space_timesteps
from models.samplers import ddim_sample_loop

from .config import ObjectiveConfig

log = logging.getLogger("trainer")


class ImageScores:
    """Per-image PSNR / SSIM (:mod:`metrics.pixel`, on the Y channel if ``y_channel``) and
    LPIPS-Alex when its backbone weights are on disk (otherwise skipped with one warning)."""

    def __init__(self, y_channel: bool = True):
        self.y_channel = y_channel
        self.lpips: Optional[Callable] = None
        self.lpips_tried = False
        self.fns = {"psnr": psnr, "ssim": ssim}

    def _lpips(self, device: torch.device) -> Optional[Callable]:
        if not self.lpips_tried:
            self.lpips_tried = True
            try:
                from metrics.lpips_metric import LpipsMetric
                self.lpips = LpipsMetric("alex", device)
            except Exception as err:  # MetricUnavailable, ImportError: skip, say it once
                log.warning("LPIPS skipped in validation: %s", err)
        return self.lpips

    def __call__(self, estimate: torch.Tensor, hq: torch.Tensor) -> dict[str, list[float]]:
        """estimate, hq: (B, 3, H, W) RGB [0, 1]. Returns per-image scores by metric name."""
        pairs = [(tensor_to_uint8(e), tensor_to_uint8(h)) for e, h in zip(estimate, hq)]
        scores = {name: [float(fn(a, b, y_channel=self.y_channel)) for a, b in pairs]
                  for name, fn in self.fns.items()}
        lpips = self._lpips(estimate.device)
        if lpips is not None:
            scores["lpips"] = [float(lpips(a, b)) for a, b in pairs]
        return scores


def lq_input(batch: dict) -> torch.Tensor:
    """The restoration estimator's input: lq, (B, 3, H, W) RGB [0, 1]."""
    return batch["lq"]


def masked_input(batch: dict) -> torch.Tensor:
    """The inpainting estimator's input (LaMa, docs/method.md#lama-estimator):
    concat(lq with zeros in the hole, mask), (B, 4, H, W); lq RGB [0, 1], mask {0, 1} with 1 = hole."""
    return torch.cat([batch["lq"], batch["mask"].to(batch["lq"].dtype)], dim=1)


class PixelLoss:
    """Estimator objective: mean |f(y) - x|^p, p = 1 (L1) or 2 (L2); images RGB [0, 1].
    ``model_input`` makes the network's input from the batch (default: lq)."""

    inputs = ("lq", "hq")

    def __init__(self, power: int, scores: ImageScores, model_input: Callable[[dict], torch.Tensor] = lq_input):
        self.power, self.scores, self.model_input = power, scores, model_input

    def estimate(self, model, batch: dict) -> torch.Tensor:
        """f(input): (B, 3, H, W) float32, not clamped."""
        return model(self.model_input(batch)).float()

    def __call__(self, model, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        diff = self.estimate(model, batch) - batch["hq"]
        return {"loss": diff.abs().mean() if self.power == 1 else diff.square().mean()}

    @torch.no_grad()
    def images(self, model, batch: dict, generator: torch.Generator) -> list[torch.Tensor]:
        """Rows of the image grid: LQ / estimate / HQ, each (n, 3, H, W) in [0, 1]."""
        return [batch["lq"], self.estimate(model, batch).clamp(0, 1), batch["hq"]]

    @torch.no_grad()
    def evaluate(self, model, batch: dict, generator: torch.Generator) -> dict[str, list[float]]:
        return self.scores(self.estimate(model, batch).clamp(0, 1), batch["hq"])


def weighted_l1(estimate: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                hole_weight: float) -> torch.Tensor:
    """sum(w |estimate - target|) / sum(w), w = hole_weight in the hole and 1 outside
    (docs/method.md#training-the-lama-estimator),
    summed over every element: the per-pixel weight counts once per channel, so hole_weight 1
    gives the plain mean L1.

    Args:
        estimate, target: (B, 3, H, W) float.
        mask: (B, 1, H, W) float in {0, 1}, 1 = hole.
    """
    weight = (1 + (hole_weight - 1) * mask.to(estimate.dtype)).expand_as(estimate)
    return (weight * (estimate - target).abs()).sum() / weight.sum()


class WeightedL1:
    """Inpainting estimator objective (official ``TrainerInpainting``,
    docs/method.md#training-the-lama-estimator): the network
    sees concat(lq, mask) and the loss is :func:`weighted_l1`. Image grids (LQ / estimate / HQ)
    and validation scores are the l1 objective's, on the same input."""

    inputs = ("lq", "mask", "hq")

    def __init__(self, hole_weight: float, scores: ImageScores):
        self.hole_weight = hole_weight
        self.pixel = PixelLoss(1, scores, masked_input)

    def __call__(self, model, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        estimate = self.pixel.estimate(model, batch)
        return {"loss": weighted_l1(estimate, batch["hq"], batch["mask"], self.hole_weight)}

    def images(self, model, batch: dict, generator: torch.Generator) -> list[torch.Tensor]:
        return self.pixel.images(model, batch, generator)

    def evaluate(self, model, batch: dict, generator: torch.Generator) -> dict[str, list[float]]:
        return self.pixel.evaluate(model, batch, generator)


class HybridDiffusionLoss:
    """Prior objective: x0 = 2 hq - 1, t ~ U{0..T-1}, hybrid eps-MSE + VLB
    (docs/method.md#training-the-prior)."""

    inputs = ("hq",)

    def __init__(self, schedule: DiffusionSchedule, sample_steps: int):
        self.schedule, self.sample_steps = schedule, sample_steps

    def terms(self, model, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-sample {'loss', 'mse', 'vb'}, each (B,); t and eps drawn from ``generator``."""
        x0 = batch["hq"] * 2 - 1
        index = torch.randint(0, self.schedule.num_steps, (x0.shape[0],), generator=generator,
                              device=generator.device).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
        return hybrid_loss(model, self.schedule, x0, index, noise)

    def __call__(self, model, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {k: v.mean() for k, v in self.terms(model, batch, generator).items()}

    @torch.no_grad()
    def images(self, model, batch: dict, generator: torch.Generator) -> list[torch.Tensor]:
        """Rows: prior samples (DDIM from pure noise, ``sample_steps`` steps) / training images."""
        hq = batch["hq"]
        x_start = torch.randn(hq.shape, generator=generator, device=generator.device).to(hq.device)
        spec = f"ddim{min(self.sample_steps, self.schedule.num_steps)}"
        steps = sorted(space_timesteps(self.schedule.num_steps, spec), reverse=True)
        sample = ddim_sample_loop(model, x_start, steps, self.schedule, eta=0.0)
        return [((sample + 1) / 2).clamp(0, 1), hq]

    @torch.no_grad()
    def evaluate(self, model, batch: dict, generator: torch.Generator) -> dict[str, list[float]]:
        return {k: v.tolist() for k, v in self.terms(model, batch, generator).items()}


def _hybrid(cfg: ObjectiveConfig, diffusion: DiffusionConfig, y_channel: bool) -> HybridDiffusionLoss:
    return HybridDiffusionLoss(DiffusionSchedule.from_name(diffusion.schedule, diffusion.steps), cfg.sample_steps)


# name -> factory(objective settings, diffusion settings, y_channel of the validation PSNR/SSIM).
OBJECTIVES: dict[str, Callable[[ObjectiveConfig, DiffusionConfig, bool], object]] = {
    "l1": lambda cfg, diffusion, y_channel: PixelLoss(1, ImageScores(y_channel)),
    "l2": lambda cfg, diffusion, y_channel: PixelLoss(2, ImageScores(y_channel)),
    "hybrid": _hybrid,
    "weighted_l1": lambda cfg, diffusion, y_channel: WeightedL1(cfg.hole_weight, ImageScores(y_channel)),
}


def build_objective(cfg: ObjectiveConfig, diffusion: DiffusionConfig, y_channel: bool):
    """The objective named ``cfg.name``; an unknown name raises with the allowed names.
    ``diffusion``: the prior's noise schedule; ``y_channel``: PSNR/SSIM of validations on Y."""
    if cfg.name not in OBJECTIVES:
        raise ValueError(f"unknown objective {cfg.name!r}; allowed: {sorted(OBJECTIVES)}")
    return OBJECTIVES[cfg.name](cfg, diffusion, y_channel)
