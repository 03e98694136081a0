"""DifFace (paper Algorithm 1): diffuse the estimator's output to step N, then sample back to 0.

    x0_hat = f(y).clamp(0, 1)                                   # diffused estimator
    x_N    = sqrt(abar_N) (2 x0_hat - 1) + sqrt(1 - abar_N) z    # p(x_N | y), paper Eq. 6
    x_0    = reverse diffusion from x_N with the pretrained prior (DDIM or DDPM)

Where the reverse chain starts is stated here and only here. The official code noises to
level N and makes its first network call at the next lower point of its sampling grid
(`official_start=True`, the default, so that released weights give the official results);
the textbook chain (`official_start=False`) makes its first call at N itself. The DPM-Solvers
(`dpmpp_2m`, `dpmpp_2m_sde`; no official counterpart) always start where x_N is, at N: taking
a state of level N for one of a lower level leaves noise that a few-step solver does not remove
(demo model, N = 400, 5 steps: FID 256 instead of 119).
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .auto_start import AutoStart, error_features, predicted_error, probe_error, start_step
from .deep_cache import cached_unet
from .diffusion import DiffusionSchedule, space_timesteps
from .samplers import SAMPLERS, TAKES_ETA, Generators, NoiseFn, draw_noise

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STARTS_AT_N = ("dpmpp_2m", "dpmpp_2m_sde")  # samplers whose first evaluation is always at N (textbook start)


def sampling_timesteps(start_step: int, num_steps: int, grid: str | None = "ddim250",
                       steps: int | None = None, official_start: bool = True) -> list[int]:
    """The descending base steps a restoration evaluates, for a chain noised to `start_step`.

    Without `steps`, the points of the respacing `grid` below `start_step` (official) or
    `start_step` followed by them (textbook). With `steps=K`, K evaluations evenly spread from
    `start_step` down to 0: the official variant drops the first of K + 1 points, the textbook
    one keeps K points including `start_step`.

    `start_step=0` means no diffusion at all: the result is the estimator's output, and the
    list is empty.
    """
    if not 0 <= start_step < num_steps:
        raise ValueError(f"start step must satisfy 0 <= N < {num_steps}, got {start_step}")
    if start_step == 0:
        return []
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        count = steps + 1 if official_start else steps
        if count - 1 > start_step:
            raise ValueError(f"cannot take {steps} distinct steps below start step {start_step}")
        points = np.linspace(start_step, 0, count) if count > 1 else np.array([start_step])
        points = sorted({int(round(p)) for p in points}, reverse=True)
        return points[1:] if official_start else points
    below = [t for t in space_timesteps(num_steps, grid) if t < start_step]
    steps_desc = sorted(below, reverse=True)
    if not official_start:
        steps_desc = [start_step] + steps_desc
    if not steps_desc:
        raise ValueError(f"start step {start_step} leaves no sampling step on the grid {grid!r}")
    return steps_desc


@dataclass
class SamplingConfig:
    """Where the reverse chain starts and how it runs (base steps of the T-step process).

    start_step N: the level the estimate is diffused to (0: the estimator alone). grid: the
    official respacing (e.g. 'ddim250') whose points below N are evaluated, unless `steps` K asks
    for K evaluations spread evenly from N to 0. official_start: the first evaluation one grid
    point below N, as the official code does (the DPM-Solvers always start at N). eta: noise scale
    of ddim and dpmpp_2m_sde. cache_*: partial UNet evaluations that reuse deep features (off
    without cache_depth; see `full_evaluations`). Variants: `dataclasses.replace(sampling, ...)`.
    """

    start_step: int = 400
    grid: str = "ddim250"
    steps: Optional[int] = None
    official_start: bool = True
    eta: float = 0.5
    sampler: str = "ddim"
    cache_depth: Optional[int] = None
    cache_interval: int = 2
    cache_full_steps: Optional[list[int]] = None
    cache_last_full: int = 1
    auto_start: bool = False  # `start_step: auto`: N per face from the start-step head (models/auto_start.py)
    auto: AutoStart = field(default_factory=AutoStart)

    def timesteps(self, num_steps: int) -> list[int]:
        """The descending base steps evaluated for a chain noised to `start_step`; the one place
        the start rule of each sampler is applied. Raises ValueError for impossible settings."""
        official = self.official_start and self.sampler not in STARTS_AT_N
        return sampling_timesteps(self.start_step, num_steps, self.grid, self.steps, official)

    def full_evaluations(self, num_steps: int) -> list[bool]:
        """For each evaluation of `timesteps(num_steps)`: True for a full network evaluation, False
        for a partial one that reuses the deep features of the last full one (docs/deep_cache.md).

        Without `cache_depth` (the default) every evaluation is full. With it, evaluations 0,
        k, 2k, ... for k = `cache_interval` are full, or those listed in `cache_full_steps` (indices
        into the evaluations, 0 first), and the last `cache_last_full` (low-noise) ones always.
        Raises ValueError naming the field of an impossible setting."""
        count = len(self.timesteps(num_steps))
        if self.cache_depth is None:
            return [True] * count
        if self.cache_depth < 1:
            raise ValueError(f"cache_depth must be None (off) or >= 1, got {self.cache_depth}")
        if self.cache_interval < 1:
            raise ValueError(f"cache_interval must be >= 1, got {self.cache_interval}")
        if self.cache_last_full < 0:
            raise ValueError(f"cache_last_full must be >= 0, got {self.cache_last_full}")
        if self.cache_full_steps is None:
            full = set(range(0, count, self.cache_interval))
        else:
            full = {int(i) for i in self.cache_full_steps}
            if count and (0 not in full or not all(0 <= i < count for i in full)):
                raise ValueError(f"cache_full_steps {list(self.cache_full_steps)} must be indices of the {count} "
                                 f"evaluations (0 to {count - 1}) and include 0: the first has no cache to reuse")
        return [k in full or k >= count - self.cache_last_full for k in range(count)]


def image_generator(seed: int, name: str, sample: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded from (seed, image name, sample index), independent of batch and order."""
    digest = hashlib.sha256(f"{seed}\x00{name}\x00{sample}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") & (2 ** 63 - 1))


def resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize with antialiasing (official pre/post-processing); no clamping."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    return F.interpolate(img, size=size, mode="bicubic", antialias=True, align_corners=False)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a (B, 1, H, W) {0, 1} mask; stays binary."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return (mask > 0.5).float()
    return (F.interpolate(mask.float(), size=size, mode="nearest") > 0.5).float()


@dataclass
class Restoration:
    """Output of `DifFace.restore`: images (B, 3, H, W) RGB in [0, 1] at the input size."""

    sample: torch.Tensor
    estimate: torch.Tensor
    start_steps: Optional[list[int]] = None  # with `start_step: auto`, each image's N


class DifFace:
    """The restoration method, built from an estimator f, a diffusion prior and its schedule.

    estimator: y (B,3,S,S) [0,1] -> (B,3,S,S); prior: (x_t, t) -> (B,6,S,S). Both are used
    in eval mode without gradients. `image_size` S is the prior's training resolution.
    `dtype` is the networks' autocast precision; with `low_precision_from_step` T only the prior's
    evaluations at base steps t >= T run in it, the estimator and the steps below T in fp32.
    With `sampling.cache_depth` the prior (a UNetModel, or one compiled by torch.compile) runs
    fully or partially per evaluation as `sampling.full_evaluations` says; each chain (one
    `restore` call) starts with an empty cache.
    """

    def __init__(self, estimator: Callable, prior: Callable, schedule: DiffusionSchedule, image_size: int,
                 sampling: SamplingConfig | None = None, dtype: str = "fp32",
                 correct_x0_factory: Callable[[torch.Tensor, torch.Tensor], Callable] | None = None,
                 low_precision_from_step: int | None = None,
                 on_evaluation: Callable[[int, int], None] | None = None):
        sampling = sampling or SamplingConfig()
        if sampling.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampling.sampler!r}; allowed: {sorted(SAMPLERS)}")
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; allowed: {sorted(DTYPES)}")
        if sampling.eta < 0:
            raise ValueError(f"eta must be >= 0, got {sampling.eta}")
        if low_precision_from_step is not None and low_precision_from_step < 0:
            raise ValueError(f"low_precision_from_step must be >= 0 or None, got {low_precision_from_step}")
        self.estimator, self.prior, self.schedule = estimator, prior, schedule
        self.image_size, self.sampling, self.dtype = image_size, sampling, dtype
        self.start_step, self.eta, self.sampler = sampling.start_step, sampling.eta, sampling.sampler
        self.low_precision_from_step = low_precision_from_step
        self.timesteps = sampling.timesteps(schedule.num_steps)
        self.full_steps = sampling.full_evaluations(schedule.num_steps)
        self.cached_prior = cached_unet(prior, sampling.cache_depth) if sampling.cache_depth is not None else None
        self.correct_x0_factory = correct_x0_factory
        self.on_evaluation = on_evaluation  # (done, total) after each prior evaluation of a chain
        self.auto = sampling.auto if sampling.auto_start else None
        if self.auto is not None:
            self.auto.check(schedule.num_steps)
            if self.auto.weights is None:
                raise ValueError("start step 'auto' needs the model's start-step head: sampling.auto.weights is "
                                 "not set (scripts/auto_start.py fits it)")

    def _autocast(self, device: torch.device, low: bool = True):
        """Mixed precision for the networks only; all diffusion arithmetic stays float32.
        `low` False: this call runs in fp32 whatever the dtype."""
        if self.dtype == "fp32" or not low:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=DTYPES[self.dtype])

    def _low(self, t: torch.Tensor) -> bool:
        # with low_precision_from_step, steps below it run in fp32 (reading t costs a host sync
        # on CUDA, so only then)
        return self.low_precision_from_step is None or int(t[0]) >= self.low_precision_from_step

    def _prior(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with self._autocast(x.device, self._low(t)):
            return self.prior(x, t).float()

    def _chain_prior(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The model the sampler calls for one chain (reporting to `on_evaluation` if set)."""
        model = self._chain_model()
        if self.on_evaluation is None:
            return model
        report, total, calls = self.on_evaluation, len(self.timesteps), [0]

        def reported(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out = model(x, t)
            calls[0] += 1
            report(calls[0], total)
            return out

        return reported

    def _chain_model(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The prior, or with deep-feature caching a fresh cache and the k-th call full or partial
        as `full_steps[k]` says (a sampler makes exactly one call per timestep, in order)."""
        if self.cached_prior is None:
            return self._prior
        net, plan, state = self.cached_prior, self.full_steps, {"calls": 0, "deep": None}

        def prior(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            k = state["calls"]
            assert k < len(plan), "the sampler made more prior calls than it has timesteps"
            state["calls"] += 1
            with self._autocast(x.device, self._low(t)):
                if plan[k]:
                    out, state["deep"] = net(x, t)
                else:
                    out = net(x, t, state["deep"])
            return out.float()

        return prior

    @torch.inference_mode()
    def estimate(self, y: torch.Tensor) -> torch.Tensor:
        """x0_hat = f(y) clamped to [0, 1]; y (B,3,S,S) RGB [0,1] at the model size."""
        with self._autocast(y.device, self.low_precision_from_step is None):
            return self.estimator(y).float().clamp(0.0, 1.0)

    def _model_inputs(self, y: torch.Tensor, mask: torch.Tensor | None):
        """y at the model size (holes zeroed for inpainting) and the mask at the model size."""
        size = (self.image_size, self.image_size)
        y_model = resize(y.float(), size)
        if mask is None:
            return y_model, None
        mask_model = resize_mask(mask, size)
        return y_model * (1 - mask_model), mask_model

    @torch.inference_mode()
    def estimate_input(self, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x0_hat (B, 3, S, S) [0,1] at the model size for inputs y (B, 3, H, W) RGB [0,1], as
        `restore` computes it (inpainting: the masked image and the mask (B, 1, H, W))."""
        y_model, mask_model = self._model_inputs(y, mask)
        return self.estimate(y_model if mask_model is None else torch.cat([y_model, mask_model], 1))

    @torch.inference_mode()
    def restore(self, y: torch.Tensor, generator: Generators = None,
                start_noise: torch.Tensor | None = None, noise_fn: NoiseFn | None = None,
                mask: torch.Tensor | None = None, estimate: torch.Tensor | None = None) -> Restoration:
        """Restore a batch y (B, 3, H, W) RGB [0,1]; any H, W (resized to the model size and back).

        Noise: `start_noise` (else drawn first) for the jump to step N, then the sampler's
        per-step draws, all from `generator` (one, or one per sample).
        Inpainting: `mask` (B, 1, H, W), 1 = unknown pixel. The estimator sees the image with
        zeros in the holes plus the mask, the x0-correction hook sees the observed pixels, and
        the known pixels of the input are pasted back at the input's resolution.
        `estimate`: x0_hat (B, 3, S, S) [0,1] at the model size from an earlier call on the same y
        (e.g. the previous sample); the estimator is then not run again.
        """
        size = (self.image_size, self.image_size)
        y_model, mask_model = self._model_inputs(y, mask)
        x0_hat = resize(estimate.float(), size) if estimate is not None else self.estimate_input(y, mask)
        if self.auto is not None:
            return self._restore_auto(y, x0_hat, y_model, generator, start_noise, noise_fn, mask)
        if self.timesteps:
            # Paper Eq. 6: one closed-form jump to level N.
            abar_n = self.schedule.alpha_bar(self.start_step)
            z = start_noise if start_noise is not None else draw_noise(x0_hat, generator)
            x_n = abar_n ** 0.5 * (2 * x0_hat - 1) + (1 - abar_n) ** 0.5 * z.to(x0_hat)
            correct = None
            if self.correct_x0_factory is not None:
                correct = self.correct_x0_factory(2 * y_model - 1, mask_model)
            kwargs = {"eta": self.eta} if self.sampler in TAKES_ETA else {}
            x0 = SAMPLERS[self.sampler](self._chain_prior(), x_n, self.timesteps, self.schedule,
                                        generator=generator, noise_fn=noise_fn, correct_x0=correct, **kwargs)
            sample = (0.5 * x0 + 0.5).clamp(0.0, 1.0)
        else:  # N = 0: the estimator alone, no noise drawn
            sample = x0_hat
        out_size = tuple(y.shape[-2:])
        if out_size != size:
            sample = resize(sample, out_size).clamp(0.0, 1.0)
            x0_hat = resize(x0_hat, out_size).clamp(0.0, 1.0)
        if mask is not None:  # keep every observed pixel exactly as it was
            known = 1 - (mask.float() > 0.5).float()
            sample = sample * (1 - known) + y.float() * known
        return Restoration(sample=sample, estimate=x0_hat)

    # ------------------------------------------------------------------ start step per face

    def with_start_step(self, n: int) -> "DifFace":
        """This method (same networks and settings) with the fixed start step `n`; with `steps` K,
        min(K, n) evaluations."""
        s = self.sampling
        sampling = replace(s, start_step=n, steps=None if s.steps is None or n == 0 else min(s.steps, n),
                           auto_start=False)
        return DifFace(self.estimator, self.prior, self.schedule, self.image_size, sampling, dtype=self.dtype,
                       correct_x0_factory=self.correct_x0_factory,
                       low_precision_from_step=self.low_precision_from_step, on_evaluation=self.on_evaluation)

    @torch.inference_mode()
    def predict_error(self, x0_hat: torch.Tensor, y_model: torch.Tensor) -> torch.Tensor:
        """The start-step head's E (B,) for estimates x0_hat and inputs y_model (B, 3, S, S) [0, 1]."""
        auto = self.auto or self.sampling.auto
        if auto.weights is None:
            raise ValueError("sampling.auto.weights is not set: this model has no start-step head")
        probe = probe_error(self._prior, x0_hat, self.schedule.alpha_bar(auto.probe_step), auto.probe_step,
                            auto.probes)
        return predicted_error(error_features(probe, x0_hat, y_model), auto.weights)

    def start_steps_for(self, x0_hat: torch.Tensor, y_model: torch.Tensor) -> list[int]:
        """N per image by the rule of models/auto_start.py."""
        auto = self.auto or self.sampling.auto
        abar = self.schedule.alphas_cumprod
        return [start_step(float(e), abar, auto) for e in self.predict_error(x0_hat, y_model)]

    def _restore_auto(self, y, x0_hat, y_model, generator, start_noise, noise_fn, mask) -> Restoration:
        """Each image at its own N: the batch is probed together, then restored in groups of equal
        N, each image exactly as a fixed-N run with its N restores it (its generator, noise and
        estimate are its own)."""
        if noise_fn is not None:
            raise ValueError("a per-step noise function does not split into groups of equal start step; "
                             "pass per-image generators with start_step auto")
        steps = self.start_steps_for(x0_hat, y_model)
        groups = {n: [i for i, m in enumerate(steps) if m == n] for n in sorted(set(steps))}
        methods = {n: self.with_start_step(n) for n in groups}
        total, done = sum(len(m.timesteps) for m in methods.values()), 0
        sample = estimate = None
        for n, idx in groups.items():
            method = methods[n]
            if self.on_evaluation is not None:
                method.on_evaluation = lambda k, _, before=done: self.on_evaluation(before + k, total)
            pick = torch.tensor(idx, device=y.device)
            gens = [generator[i] for i in idx] if isinstance(generator, (list, tuple)) else generator
            part = method.restore(y[pick], generator=gens,
                                  start_noise=None if start_noise is None else start_noise[pick],
                                  mask=None if mask is None else mask[pick], estimate=x0_hat[pick])
            if sample is None:
                sample = part.sample.new_empty((len(steps), *part.sample.shape[1:]))
                estimate = part.estimate.new_empty((len(steps), *part.estimate.shape[1:]))
            sample[pick], estimate[pick] = part.sample, part.estimate
            done += len(method.timesteps)
        return Restoration(sample=sample, estimate=estimate, start_steps=steps)


def known_pixel_correction(gamma: float = 0.5, num_update: int = 1):
    """The inpainting data-consistency hook (official `masking_regularizer`,
    docs/method.md#known-pixel-correction).

    Returns a factory `(y, mask) -> correct_x0(x0, t)`: `num_update` gradient steps on
    R(x0) = sum((x0 - y)^2 (1 - mask)), i.e. x0 <- x0 - 2 gamma (x0 - y)(1 - mask), then a clip
    to [-1, 1]. y (B,3,S,S) in [-1,1], mask (B,1,S,S) with 1 = hole. With gamma = 0.5 the known
    pixels of x0 are replaced by the observed ones.
    """
    if gamma < 0 or num_update < 0:
        raise ValueError(f"gamma and num_update must be >= 0, got {gamma}, {num_update}")

    def factory(y: torch.Tensor, mask: torch.Tensor | None):
        if mask is None:
            raise ValueError("the known-pixel correction needs a mask")
        known = 1 - mask

        def correct_x0(x0: torch.Tensor, t: int) -> torch.Tensor:
            for _ in range(num_update):
                x0 = x0 - 2 * gamma * (x0 - y) * known
            return x0.clamp(-1.0, 1.0)

        return correct_x0

    return factory
