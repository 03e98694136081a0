"""Reverse-process samplers: single steps and loops, as free functions of explicit inputs.

A loop is given the exact base timesteps it evaluates, in the order it evaluates them (descending),
and the state `x_start` it starts from. How `x_start` was made (pure noise, or a noised estimate
as in DifFace) is the caller's business. Step k moves from level ``timesteps[k]`` to level
``timesteps[k+1]`` (abar = 1 after the last step), which is exactly the official respaced process.

Noise: each stochastic step draws ``z`` from the caller's ``torch.Generator`` — one generator for
the batch, or one per sample so that a sample's result does not depend on its batch. A
``noise_fn(step, like)`` may replace the draws (to replay recorded noise). Draw order: one draw
per step that adds noise (sigma > 0), in loop order; none at the last step or with eta = 0.
When the generators live on another device than the chain (CPU generators, CUDA model), all
draws of the chain are made up front (`chain_noise`): the same numbers, one transfer.

The network is called as ``model(x_t, t)`` with ``t`` the (B,) int64 base steps and returns
(B, C, H, W) noise predictions, or (B, 2C, H, W) with variance logits in the second half.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .diffusion import DiffusionSchedule

Generators = torch.Generator | Sequence[torch.Generator] | None
NoiseFn = Callable[[int, torch.Tensor], torch.Tensor]
CorrectX0 = Callable[[torch.Tensor, int], torch.Tensor]


def draw_noise(like: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """Standard normal noise shaped like `like` (float32), from one generator or one per sample.

    A generator lives on a device; the noise is drawn there and moved to `like`'s device, so a
    CPU generator gives the same numbers whatever device the model runs on.
    """
    return _draw_on_generator_device(like, generator).to(like.device)


def chain_noise(like: torch.Tensor, generator: Generators, count: int) -> NoiseFn:
    """A `noise_fn` replaying `count` draws made now, up front, in the order the loop would make them.

    The numbers are bit-identical to drawing step by step from the same generator(s), because
    the same calls are made in the same order; they are moved to `like`'s device in one copy, so
    no step of a GPU chain waits on a host-to-device transfer. Memory: count x like.
    """
    draws = [_draw_on_generator_device(like, generator) for _ in range(count)]
    stacked = torch.stack(draws).to(like.device) if draws else None
    order = iter(range(count))

    def noise_fn(step: int, x: torch.Tensor) -> torch.Tensor:
        index = next(order, None)
        if index is None:
            raise RuntimeError(f"the chain asked for more than the {count} noise draws made up front")
        return stacked[index]

    return noise_fn


def _draw_on_generator_device(like: torch.Tensor, generator: Generators) -> torch.Tensor:
    """`draw_noise` without the final move to `like`'s device."""
    if generator is None or isinstance(generator, torch.Generator):
        device = generator.device if generator is not None else like.device
        return torch.randn(like.shape, generator=generator, device=device, dtype=torch.float32)
    if len(generator) != like.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {like.shape[0]}")
    return torch.stack([torch.randn(like.shape[1:], generator=g, device=g.device, dtype=torch.float32)
                        for g in generator]).to(generator[0].device)


UP_FRONT_NOISE_BYTES = 2 << 30  # above this the chain draws step by step (a large batch x samples)


def _up_front(noise_fn: NoiseFn | None, x: torch.Tensor, generator: Generators, count: int) -> NoiseFn | None:
    """`noise_fn` as given, else `chain_noise` when the generators live on another device than x
    (CPU generators, CUDA model) and the draws fit in UP_FRONT_NOISE_BYTES; else None."""
    if noise_fn is not None or generator is None or count == 0:
        return noise_fn
    gens = [generator] if isinstance(generator, torch.Generator) else list(generator)
    if all(g.device.type == x.device.type for g in gens) or count * x.numel() * 4 > UP_FRONT_NOISE_BYTES:
        return None
    return chain_noise(x, generator, count)


def _split_output(out: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(eps_hat, v) from the raw network output; v is None for a fixed-variance model."""
    out = out.float()
    if out.shape[1] == 2 * channels:
        return out[:, :channels], out[:, channels:]
    if out.shape[1] == channels:
        return out, None
    raise ValueError(f"model returned {out.shape[1]} channels for {channels}-channel images")


def _predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """x0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps, clipped to [-1, 1] (DDIM Eq. 9)."""
    x0 = math.sqrt(1.0 / alpha_bar) * x_t - math.sqrt(1.0 / alpha_bar - 1.0) * eps
    return x0.clamp(-1.0, 1.0)


# --------------------------------------------------------------------------------------------
# Single steps
# --------------------------------------------------------------------------------------------


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: float, alpha_bar_prev: float,
              eta: float, noise: torch.Tensor | None,
              correct_x0: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """One DDIM step (Song et al. 2021, Eq. 12) as the official DifFace code computes it.

    x_t, eps: (B, C, H, W) float32 in diffusion space; alpha_bar(_prev): float64 abar of this
    level and of the next lower one (1.0 after the last step); noise: z, or None when unused.
    Returns (x_prev, x0).
    """
    # 1. predicted x0, clipped to the data range, optionally corrected (e.g. inpainting)
    x0 = _predict_x0(x_t, eps, alpha_bar)
    if correct_x0 is not None:
        x0 = correct_x0(x0)
    # 2. sigma_t(eta) = eta sqrt((1 - abar_prev)/(1 - abar)) sqrt(1 - abar/abar_prev)
    sigma = eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * math.sqrt(1 - alpha_bar / alpha_bar_prev)
    # 3. x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z.
    #    The official code uses the raw network eps here, not eps re-derived from the clipped x0.
    x_prev = math.sqrt(alpha_bar_prev) * x0 + math.sqrt(max(1 - alpha_bar_prev - sigma ** 2, 0.0)) * eps
    if sigma > 0:
        if noise is None:
            raise ValueError("a stochastic DDIM step (sigma > 0) needs noise")
        x_prev = x_prev + sigma * noise
    return x_prev, x0


def ddpm_step(x_t: torch.Tensor, eps: torch.Tensor, v: torch.Tensor | None,
              schedule: DiffusionSchedule, index: int, noise: torch.Tensor | None,
              correct_x0: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """One ancestral step p(x_{t-1} | x_t) with the learned-range variance (improved DDPM Eq. 15).

    `schedule` is the respaced process and `index` the step's index in it. Without variance
    logits (v None) the clipped posterior variance is used. Returns (x_prev, x0, mean, log_var).
    """
    idx = torch.full((x_t.shape[0],), index, dtype=torch.long, device=x_t.device)
    x0 = _predict_x0(x_t, eps, float(schedule.alphas_cumprod[index]))
    if correct_x0 is not None:
        x0 = correct_x0(x0)
    mean, log_var = schedule.q_posterior(x0, x_t, idx)
    if v is not None:
        log_var = schedule.learned_range_log_variance(v, idx)
    else:
        log_var = log_var.expand_as(x_t)
    x_prev = mean
    if index > 0:
        if noise is None:
            raise ValueError("a DDPM step above index 0 needs noise")
        x_prev = mean + torch.exp(0.5 * log_var) * noise
    return x_prev, x0, mean, log_var


# --------------------------------------------------------------------------------------------
# Loops over explicit base timesteps
# --------------------------------------------------------------------------------------------


def _check_timesteps(timesteps: Sequence[int], schedule: DiffusionSchedule) -> list[int]:
    steps = [int(t) for t in timesteps]
    if not steps:
        raise ValueError("a sampling loop needs at least one timestep")
    if any(a <= b for a, b in zip(steps, steps[1:])):
        raise ValueError(f"timesteps must be strictly decreasing, got {steps[:6]}...")
    for t in steps:
        schedule.alpha_bar(t)  # raises for a step that is not in the schedule
    return steps


def _call_model(model: Callable, x: torch.Tensor, t: int) -> torch.Tensor:
    t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    return model(x, t_batch)


def _step_noise(step: int, x: torch.Tensor, generator: Generators, noise_fn: NoiseFn | None) -> torch.Tensor:
    return noise_fn(step, x) if noise_fn is not None else draw_noise(x, generator)


def ddim_sample_loop(model: Callable, x_start: torch.Tensor, timesteps: Sequence[int],
                     schedule: DiffusionSchedule, eta: float = 0.0, generator: Generators = None,
                     noise_fn: NoiseFn | None = None, correct_x0: CorrectX0 | None = None,
                     callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Run DDIM over `timesteps` (descending base steps) from `x_start` (B, C, H, W) in [-1, 1] space.

    `correct_x0(x0, t)` edits each predicted x0 (inpainting data consistency); `callback(step,
    x_prev, x0)` observes every step. Returns the final sample, the clipped x0 of the last step.
    """
    steps = _check_timesteps(timesteps, schedule)
    x = x_start.float()
    if eta > 0:
        noise_fn = _up_front(noise_fn, x, generator, len(steps) - 1)  # one draw per step but the last
    for k, t in enumerate(steps):
        t_prev = steps[k + 1] if k + 1 < len(steps) else None
        eps, _ = _split_output(_call_model(model, x, t), x.shape[1])
        ab, ab_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
        stochastic = eta > 0 and t_prev is not None
        noise = _step_noise(k, x, generator, noise_fn) if stochastic else None
        hook = (lambda x0, t=t: correct_x0(x0, t)) if correct_x0 is not None else None
        x, x0 = ddim_step(x, eps, ab, ab_prev, eta, noise, hook)
        if callback is not None:
            callback(k, x, x0)
    return x


def ddpm_sample_loop(model: Callable, x_start: torch.Tensor, timesteps: Sequence[int],
                     schedule: DiffusionSchedule, generator: Generators = None,
                     noise_fn: NoiseFn | None = None, correct_x0: CorrectX0 | None = None,
                     callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Ancestral sampling over `timesteps` (descending base steps) with the learned-range variance.

    The transition probabilities are those of the process respaced to `timesteps`, so any
    subset of steps can be used. Arguments as `ddim_sample_loop`.
    """
    steps = _check_timesteps(timesteps, schedule)
    respaced = schedule.respace(steps)
    position = {int(t): i for i, t in enumerate(respaced.timesteps)}
    x = x_start.float()
    noise_fn = _up_front(noise_fn, x, generator, sum(position[t] > 0 for t in steps))
    for k, t in enumerate(steps):
        eps, v = _split_output(_call_model(model, x, t), x.shape[1])
        index = position[t]
        noise = _step_noise(k, x, generator, noise_fn) if index > 0 else None
        hook = (lambda x0, t=t: correct_x0(x0, t)) if correct_x0 is not None else None
        x, x0, _, _ = ddpm_step(x, eps, v, respaced, index, noise, hook)
        if callback is not None:
            callback(k, x, x0)
    return x


def dpmpp_2m_sample_loop(model: Callable, x_start: torch.Tensor, timesteps: Sequence[int],
                         schedule: DiffusionSchedule, generator: Generators = None,
                         noise_fn: NoiseFn | None = None, correct_x0: CorrectX0 | None = None,
                         callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): multistep, second order, data prediction.

    Deterministic: no noise is drawn (`generator` and `noise_fn` are accepted for a uniform
    call). With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t/sigma_t)
    and D_k the clipped x0 predicted at `timesteps[k]` (from the eps half of the output):

        h_k = lambda_{k+1} - lambda_k,  r_k = h_{k-1} / h_k
        D   = D_k + (D_k - D_{k-1}) / (2 r_k)        (D = D_k at the first step)
        x_{k+1} = (sigma_{k+1}/sigma_k) x_k - alpha_{k+1} (exp(-h_k) - 1) D

    The last step goes to abar = 1 (sigma = 0), where the first-order update returns D_k.
    Arguments as `ddim_sample_loop`; returns the final sample (B, C, H, W) in [-1, 1].
    """
    return _dpmpp_2m(model, x_start, timesteps, schedule, 0.0, generator, noise_fn, correct_x0, callback)


def dpmpp_2m_sde_sample_loop(model: Callable, x_start: torch.Tensor, timesteps: Sequence[int],
                             schedule: DiffusionSchedule, eta: float = 1.0, generator: Generators = None,
                             noise_fn: NoiseFn | None = None, correct_x0: CorrectX0 | None = None,
                             callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None
                             ) -> torch.Tensor:
    """DPM-Solver++(2M) for the diffusion SDE (Lu et al. 2022, SDE-DPM-Solver++2M): stochastic.

    As `dpmpp_2m_sample_loop` with the update (eta in [0, 1] scales the injected noise; eta = 1
    is the SDE solver of the paper, eta = 0 is exactly `dpmpp_2m`)

        x_{k+1} = (sigma_{k+1}/sigma_k) exp(-eta h) x_k + alpha_{k+1} (1 - exp(-(1 + eta) h)) D
                  + sigma_{k+1} sqrt(1 - exp(-2 eta h)) z

    one noise draw z per step but the last (which returns D_k), from `generator` / `noise_fn`
    (none at all with eta = 0).
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"dpmpp_2m_sde needs 0 <= eta <= 1, got {eta}")
    return _dpmpp_2m(model, x_start, timesteps, schedule, eta, generator, noise_fn, correct_x0, callback)


def _dpmpp_2m(model, x_start, timesteps, schedule, eta: float, generator, noise_fn, correct_x0, callback):
    """Both 2M solvers; eta = 0 is the ODE solver (no draws), eta > 0 the SDE family."""
    steps = _check_timesteps(timesteps, schedule)
    x = x_start.float()
    sde = eta > 0
    if sde:
        noise_fn = _up_front(noise_fn, x, generator, len(steps) - 1)
    x0_prev, h_prev = None, None
    for k, t in enumerate(steps):
        t_next = steps[k + 1] if k + 1 < len(steps) else None
        eps, _ = _split_output(_call_model(model, x, t), x.shape[1])
        ab, ab_next = schedule.alpha_bar(t), schedule.alpha_bar(t_next)
        # 1. data prediction, clipped (and corrected) as in the DDIM path
        x0 = _predict_x0(x, eps, ab)
        if correct_x0 is not None:
            x0 = correct_x0(x0, t)
        if t_next is None:  # 2a. final step to sigma = 0: x = D_k
            x = x0
        else:
            # 2b. exponential-integrator step in lambda = log(alpha / sigma)
            sigma, sigma_next = math.sqrt(1 - ab), math.sqrt(1 - ab_next)
            alpha_next = math.sqrt(ab_next)
            h = 0.5 * math.log(ab_next / (1 - ab_next)) - 0.5 * math.log(ab / (1 - ab))
            d = x0 if x0_prev is None else x0 + (x0 - x0_prev) * (h / (2 * h_prev))
            if sde:
                z = _step_noise(k, x, generator, noise_fn)
                x = ((sigma_next / sigma) * math.exp(-eta * h)) * x + (alpha_next * -math.expm1(-(1 + eta) * h)) * d \
                    + (sigma_next * math.sqrt(-math.expm1(-2 * eta * h))) * z
            else:
                x = (sigma_next / sigma) * x - (alpha_next * math.expm1(-h)) * d
            x0_prev, h_prev = x0, h
        if callback is not None:
            callback(k, x, x0)
    return x


SAMPLERS = {"ddim": ddim_sample_loop, "ddpm": ddpm_sample_loop, "dpmpp_2m": dpmpp_2m_sample_loop,
            "dpmpp_2m_sde": dpmpp_2m_sde_sample_loop}
"""Sampler name -> loop. Every loop takes (model, x_start, timesteps, schedule, generator=,
noise_fn=, correct_x0=, callback=); those in TAKES_ETA also take `eta` (their stochasticity)."""
TAKES_ETA = ("ddim", "dpmpp_2m_sde")
