"""A start step N for each face (`start_step: auto`), from how much noise the face needs.

DifFace diffuses the estimate x0_hat = f(y) to step N so that the noise swamps the estimator's
error e = x0_hat - x and the prior can repair it (docs/method.md). How much noise that takes
depends on the face: at step N the noise-to-signal ratio of x_N = sqrt(abar_N) x0_hat +
sqrt(1 - abar_N) z, in units of x0, is (1 - abar_N) / abar_N. For a face whose head gives E:

    N(E) = the smallest step with (1 - abar_N) / abar_N >= c * E, clipped to [min_step, max_step]

with one calibration constant c per model.

E comes from a small head over five numbers computed from the networks the preset already has
(`error_features`): the probe (the estimate noised to a probe step t_p and predicted back by the
prior: how much the prior changes it), the detail of the estimate and of the input, and how much
the estimator changed the input; log E is linear in their logs (`predicted_error`, five weights
fitted by least squares: `fit_weights`, used by scripts/auto_start.py). The head can be fitted to
the estimator's mean-square error (E is then that error, and the rule matches the noise to it), or
to the noise-to-signal ratio of each training face's best fixed N (E is then that ratio); the demo
preset ships the latter, which measured better (docs/auto_start.md). The probe's noise is one
fixed draw for every face, so E depends on the face alone: a face restored with auto at the N it
is given is the fixed-N run with that N, bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

PROBE_SEED = 20240409  # the probe's noise: the same draw for every face


@dataclass(frozen=True)
class AutoStart:
    """The rule's settings (the config's `sampling.auto` block)."""

    constant: float = 1.0     # c of the SNR match
    probe_step: int = 200     # base step the estimate is noised to for the probe
    min_step: int = 0         # N is clipped to [min_step, max_step]
    max_step: int = 400
    probes: int = 1           # noise draws averaged per face
    # the head: log E = weights . [1, log probe, log estimate detail, log input detail, log correction]
    weights: Optional[list[float]] = None

    def check(self, num_steps: int) -> None:
        """Raise ValueError naming the first impossible setting."""
        if not (self.constant > 0 and math.isfinite(self.constant)):
            raise ValueError(f"auto.constant must be a positive number, got {self.constant}")
        if not 0 < self.probe_step < num_steps:
            raise ValueError(f"auto.probe_step must lie in 1 ... {num_steps - 1}, got {self.probe_step}")
        if not 0 <= self.min_step <= self.max_step < num_steps:
            raise ValueError(f"auto.min_step / max_step must satisfy 0 <= min_step <= max_step < {num_steps}, "
                             f"got {self.min_step} / {self.max_step}")
        if self.probes < 1:
            raise ValueError(f"auto.probes must be >= 1, got {self.probes}")
        if self.weights is not None and len(self.weights) != len(FEATURES):
            raise ValueError(f"auto.weights needs {len(FEATURES)} numbers ({', '.join(FEATURES)}), "
                             f"got {len(self.weights)}")


def noise_to_signal(alpha_bar: float) -> float:
    """(1 - abar) / abar: the noise variance of x_N in units of the signal x0."""
    return (1.0 - alpha_bar) / alpha_bar


def start_step(error: float, alphas_cumprod: Sequence[float], auto: AutoStart) -> int:
    """N for one face whose head gives `error` (E: a predicted mean-square error in [-1, 1] units, or
    a noise-to-signal ratio): the smallest base step whose noise-to-signal ratio reaches
    `auto.constant` * E, clipped to the rule's range. `alphas_cumprod[n]` is abar of base step n
    (decreasing)."""
    target = auto.constant * max(float(error), 0.0)
    n = auto.max_step
    for step in range(auto.min_step, auto.max_step + 1):
        if noise_to_signal(float(alphas_cumprod[step])) >= target:
            n = step
            break
    return n


def probe_noise(shape: Sequence[int], draw: int, device: torch.device) -> torch.Tensor:
    """The probe's noise (C, H, W) of draw `draw`: the same for every face, from a fixed seed."""
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(PROBE_SEED + draw)).to(device)


def probe_error(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0_hat: torch.Tensor,
                alpha_bar: float, probe_step: int, probes: int = 1) -> torch.Tensor:
    """Probe distance per face (B,): mean square distance, in [-1, 1] units, between the estimate
    x0_hat (B, 3, S, S) in [0, 1] and the prior's x0 prediction from it noised to `probe_step`
    (abar `alpha_bar`), averaged over `probes` noise draws. `model(x, t)` is the prior (eps, or eps
    and variance channels). Every face is probed with the same noise (`probe_noise`), so its
    distance depends on the face alone, not on its batch, sample or seed."""
    x0 = 2 * x0_hat.float() - 1
    t = torch.full((x0.shape[0],), probe_step, device=x0.device, dtype=torch.long)
    total = torch.zeros(x0.shape[0], device=x0.device)
    for draw in range(probes):
        z = probe_noise(x0.shape[1:], draw, x0.device)
        x_t = math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * z
        eps = model(x_t, t).float()[:, :x0.shape[1]]
        pred = (x_t - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)
        total += (pred.clamp(-1, 1) - x0).pow(2).flatten(1).mean(1)
    return total / probes


FEATURES = ("bias", "probe", "estimate detail", "input detail", "correction")
_LAPLACE = torch.tensor([[[[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]]])


def detail(x: torch.Tensor) -> torch.Tensor:
    """Mean square Laplacian of the grey image (B,): how much fine detail (or noise) x (B, 3, S, S) holds."""
    grey = x.float().mean(1, keepdim=True)
    return torch.nn.functional.conv2d(grey, _LAPLACE.to(grey)).pow(2).flatten(1).mean(1)


def error_features(probe: torch.Tensor, x0_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, 5): the logs of FEATURES for estimates x0_hat and inputs y (both (B, 3, S, S) in [0, 1] at the
    model size) and their probe distances `probe` (B,). The probe measures how much texture the prior
    changes, the two detail terms how sharp the estimate and the input are, the correction how much
    the estimator changed its input: together they separate a textured face (large probe) from a
    badly degraded one (little detail left, a large correction)."""
    eps = 1e-8
    terms = [probe, detail(x0_hat), detail(y), (x0_hat.float() - y.float()).pow(2).flatten(1).mean(1)]
    return torch.stack([torch.ones_like(probe), *(torch.log(t.float() + eps) for t in terms)], 1)


def predicted_error(features: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """The head: E = exp(features . weights), (B,)."""
    if len(weights) != len(FEATURES):
        raise ValueError(f"auto.weights needs {len(FEATURES)} numbers ({', '.join(FEATURES)}), got {len(weights)}")
    return torch.exp(features @ torch.tensor(list(weights), dtype=features.dtype, device=features.device))


def fit_weights(features: torch.Tensor, errors: torch.Tensor) -> list[float]:
    """Least squares of log `errors` (B,) (or any positive target) on `features` (B, 5): the head's weights."""
    solution = torch.linalg.lstsq(features.double(), torch.log(errors.double()).unsqueeze(1)).solution
    return [float(w) for w in solution.squeeze(1)]
