"""Gaussian diffusion maths of DifFace's prior (improved DDPM, Nichol & Dhariwal 2021).

Everything here is a function of an explicit schedule; nothing calls a network except
`hybrid_loss`, which is given the model. Conventions:

* Schedules are float64 NumPy arrays, as in the official implementation. Values picked for a
  step are cast to float32 before they touch image tensors.
* Timesteps are *base* steps 0..T-1 of the T-step process. A respaced schedule keeps a subset
  `timesteps` of them; its index i refers to base step `timesteps[i]` and the network is always
  called with the base step.
* Images live in diffusion space [-1, 1], shape (B, C, H, W).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

# --------------------------------------------------------------------------------------------
# Beta schedules
# --------------------------------------------------------------------------------------------


def linear_betas(num_steps: int) -> np.ndarray:
    """Linear schedule of Ho et al., rescaled so that any T spans the same total noise."""
    scale = 1000.0 / num_steps
    return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule (improved DDPM, Eq. 17): abar(t) = cos^2((t/T + s)/(1 + s) * pi/2), s = 0.008."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1.0 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
        for i in range(num_steps)
    ]
    return np.asarray(betas, dtype=np.float64)


BETA_SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
}


def make_betas(name: str, num_steps: int) -> np.ndarray:
    """Betas of the named schedule ('linear' or 'cosine') for a T-step process, float64."""
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; allowed: {sorted(BETA_SCHEDULES)}")
    if num_steps < 1:
        raise ValueError(f"the number of diffusion steps must be >= 1, got {num_steps}")
    return BETA_SCHEDULES[name](num_steps)


# --------------------------------------------------------------------------------------------
# Respacing
# --------------------------------------------------------------------------------------------


def space_timesteps(num_steps: int, spec: str | Sequence[int] | None) -> list[int]:
    """The base steps kept by a respacing, ascending (official `space_timesteps` semantics).

    * ``"ddimK"``: the smallest integer stride s with ``len(range(0, T, s)) == K``.
    * ``"K"`` or ``"K1,K2,..."``: T is cut into equal sections (the first ``T % n`` get one extra
      step); each section keeps K evenly spaced points, the fractional stride accumulated as a
      float and rounded with Python's ``round`` (half to even).
    * ``""`` / ``None``: all T steps. A sequence of ints is used as given (validated, sorted).
    """
    if spec is None or spec == "":
        return list(range(num_steps))
    if not isinstance(spec, str):
        steps = sorted({int(s) for s in spec})
        if not steps or steps[0] < 0 or steps[-1] >= num_steps:
            raise ValueError(f"timesteps must lie in [0, {num_steps - 1}], got {list(spec)}")
        return steps
    if spec.startswith("ddim"):
        wanted = int(spec[len("ddim"):])
        for stride in range(1, num_steps):
            if len(range(0, num_steps, stride)) == wanted:
                return list(range(0, num_steps, stride))
        raise ValueError(f"no integer stride gives exactly {wanted} steps out of {num_steps} ({spec!r})")
    counts = [int(c) for c in spec.split(",")]
    base, extra = divmod(num_steps, len(counts))
    kept: list[int] = []
    start = 0
    for section, count in enumerate(counts):
        size = base + (1 if section < extra else 0)
        if count > size:
            raise ValueError(f"cannot take {count} steps from a section of {size} ({spec!r})")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


# --------------------------------------------------------------------------------------------
# The schedule and its derived quantities
# --------------------------------------------------------------------------------------------


def _gather(values: np.ndarray, index: torch.Tensor, ndim: int) -> torch.Tensor:
    """values[index] as float32, shaped (B, 1, ..., 1) to broadcast over an ndim-D batch."""
    picked = torch.from_numpy(values).to(index.device)[index].float()
    return picked.reshape(-1, *([1] * (ndim - 1)))


@dataclass(frozen=True, eq=False)
class DiffusionSchedule:
    """A (possibly respaced) Gaussian diffusion: betas over the kept base steps.

    `timesteps[i]` is the base step of index i; for the base process it is i. All arrays have
    length K = len(timesteps) and dtype float64.
    """

    betas: np.ndarray
    timesteps: np.ndarray

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str = "linear", num_steps: int = 1000) -> "DiffusionSchedule":
        return cls(make_betas(name, num_steps), np.arange(num_steps, dtype=np.int64))

    def __post_init__(self) -> None:
        betas = np.asarray(self.betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array with values in (0, 1]")
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "timesteps", np.asarray(self.timesteps, dtype=np.int64))

        alphas = 1.0 - betas
        abar = np.cumprod(alphas)
        abar_prev = np.append(1.0, abar[:-1])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        # The posterior variance is 0 at index 0; its log is clipped to the value at index 1.
        post_var_clipped = np.append(post_var[1], post_var[1:]) if len(betas) > 1 else betas.copy()
        derived = {
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": np.sqrt(abar),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1.0),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": np.log(post_var_clipped),
            "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
        }
        for key, value in derived.items():
            object.__setattr__(self, key, value)

    def respace(self, timesteps: Sequence[int]) -> "DiffusionSchedule":
        """The process that visits only the given base steps (beta'_k = 1 - abar[m_k]/abar[m_{k-1}])."""
        kept = sorted({int(t) for t in timesteps})
        position = {int(t): i for i, t in enumerate(self.timesteps)}
        missing = [t for t in kept if t not in position]
        if missing:
            raise ValueError(f"timesteps {missing[:5]} are not steps of this schedule")
        abar = self.alphas_cumprod[[position[t] for t in kept]]
        betas = 1.0 - abar / np.append(1.0, abar[:-1])
        return DiffusionSchedule(betas, self.timesteps[[position[t] for t in kept]])

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    def alpha_bar(self, base_step: int | None) -> float:
        """abar at a base step of this schedule (float64); None means 'before step 0', i.e. 1."""
        if base_step is None:
            return 1.0
        index = np.searchsorted(self.timesteps, base_step)
        if index >= len(self.timesteps) or self.timesteps[index] != base_step:
            raise ValueError(f"base step {base_step} is not a step of this schedule")
        return float(self.alphas_cumprod[index])

    # ---- forward process q ------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, index: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps  (DDPM Eq. 4). index: (B,) schedule indices."""
        return (_gather(self.sqrt_alphas_cumprod, index, x0.ndim) * x0
                + _gather(self.sqrt_one_minus_alphas_cumprod, index, x0.ndim) * noise)

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, index: torch.Tensor):
        """Mean and clipped log-variance of q(x_{t-1} | x_t, x0) (DDPM Eq. 6-7)."""
        mean = (_gather(self.posterior_mean_coef1, index, x_t.ndim) * x0
                + _gather(self.posterior_mean_coef2, index, x_t.ndim) * x_t)
        return mean, _gather(self.posterior_log_variance_clipped, index, x_t.ndim)

    # ---- parameterisations ------------------------------------------------------------------
    def predict_x0_from_eps(self, x_t: torch.Tensor, index: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps."""
        return (_gather(self.sqrt_recip_alphas_cumprod, index, x_t.ndim) * x_t
                - _gather(self.sqrt_recipm1_alphas_cumprod, index, x_t.ndim) * eps)

    def learned_range_log_variance(self, v: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """log sigma^2 = frac log beta_t + (1 - frac) log beta~_t, frac = (v + 1)/2 (improved DDPM Eq. 15)."""
        frac = (v + 1) / 2
        max_log = _gather(np.log(self.betas), index, v.ndim)
        min_log = _gather(self.posterior_log_variance_clipped, index, v.ndim)
        return frac * max_log + (1 - frac) * min_log


# --------------------------------------------------------------------------------------------
# Training objective: the hybrid loss of improved DDPM (L_simple + L_vlb)
# --------------------------------------------------------------------------------------------


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF used by improved DDPM."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x) of 8-bit data in [-1, 1] under a Gaussian discretised into bins of width 2/255."""
    centred = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centred + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centred - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


def vlb_terms(schedule: DiffusionSchedule, eps_hat: torch.Tensor, v: torch.Tensor,
              x0: torch.Tensor, x_t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """L_{t-1} in bits per dimension, per sample: KL to the true posterior, decoder NLL at t = 0."""
    true_mean, true_log_var = schedule.q_posterior(x0, x_t, index)
    x0_hat = schedule.predict_x0_from_eps(x_t, index, eps_hat)
    model_mean, _ = schedule.q_posterior(x0_hat, x_t, index)
    model_log_var = schedule.learned_range_log_variance(v, index)
    kl = _mean_flat(normal_kl(true_mean, true_log_var, model_mean, model_log_var)) / math.log(2.0)
    nll = -_mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)) / math.log(2.0)
    return torch.where(index == 0, nll, kl)


def hybrid_loss(model: Callable, schedule: DiffusionSchedule, x0: torch.Tensor,
                index: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample hybrid loss mse(eps, eps_hat) + L_vlb (improved DDPM Sec. 3.1).

    x0: (B, C, H, W) in [-1, 1]; index: (B,) schedule indices; noise: like x0. The model
    returns 2C channels (eps_hat, variance logits v). The VLB sees a detached eps_hat, so it
    only trains the variance. Returns {'loss', 'mse', 'vb'}, each of shape (B,).
    """
    x_t = schedule.q_sample(x0, index, noise)
    out = model(x_t, torch.from_numpy(schedule.timesteps).to(index.device)[index])
    channels = x0.shape[1]
    if out.shape[1] != 2 * channels:
        raise ValueError(f"the hybrid loss needs a learned-variance model with {2 * channels} output "
                         f"channels, got {out.shape[1]}")
    eps_hat, v = out[:, :channels].float(), out[:, channels:].float()
    mse = _mean_flat((noise - eps_hat) ** 2)
    # RESCALED_MSE multiplies the VLB by T/1000 (= 1 for the 1000-step process).
    vb = vlb_terms(schedule, eps_hat.detach(), v, x0, x_t, index) * (schedule.num_steps / 1000.0)
    return {"loss": mse + vb, "mse": mse, "vb": vb}
