"""Diffusion maths and samplers: reference values, the DDIM oracle, the hybrid loss."""
import math

import numpy as np
import pytest
import torch

from models.diffusion import DiffusionSchedule, hybrid_loss, make_betas, space_timesteps
from models.difface import SamplingConfig, image_generator, sampling_timesteps
from models.samplers import ddim_sample_loop, ddpm_sample_loop, draw_noise

BASE = DiffusionSchedule.from_name("linear", 1000)


def test_reference_values_of_the_official_schedule():
    # docs/method.md#diffusion-schedule: abar at the steps the official restoration/inpainting use.
    expected = {400: 0.193572, 396: 0.199923, 480: 0.094869, 476: 0.098613, 401: 0.192006, 397: 0.198322}
    for step, value in expected.items():
        assert BASE.alpha_bar(step) == pytest.approx(value, abs=1e-6)
    assert BASE.betas[0] == pytest.approx(1e-4) and BASE.betas[-1] == pytest.approx(0.02)
    assert BASE.alphas_cumprod[-1] == pytest.approx(4.0358e-05, rel=1e-4)


def test_respacing_semantics():
    ddim250 = space_timesteps(1000, "ddim250")
    assert len(ddim250) == 250 and ddim250[1] == 4 and ddim250[-1] == 996
    plain250 = space_timesteps(1000, "250")
    assert plain250[-1] == 999 and plain250[100] == 401
    assert space_timesteps(1000, "") == list(range(1000))
    assert len(space_timesteps(1000, "10,15,20")) == 45
    with pytest.raises(ValueError):
        space_timesteps(1000, "ddim999")  # no integer stride gives 999 steps


def test_default_schedule_is_the_official_one():
    # Noised to 400, first call at 396, 100 evaluations (docs/method.md#start-index-off-by-one).
    steps = sampling_timesteps(400, 1000)
    assert steps[0] == 396 and steps[-1] == 0 and len(steps) == 100
    assert sampling_timesteps(480, 1000)[:2] == [476, 472] and len(sampling_timesteps(480, 1000)) == 120
    textbook = sampling_timesteps(400, 1000, official_start=False)
    assert textbook[:2] == [400, 396] and len(textbook) == 101
    # steps=K: K evaluations from N down to 0, equal to the grid when it divides evenly.
    assert sampling_timesteps(400, 1000, steps=100) == steps
    assert sampling_timesteps(400, 1000, steps=20, official_start=False)[0] == 400
    assert len(sampling_timesteps(400, 1000, steps=10)) == 10
    for bad in (-1, 1000):
        with pytest.raises(ValueError):
            sampling_timesteps(bad, 1000)


@pytest.mark.parametrize("start", [999, 400, 37, 0])
def test_ddim_oracle_recovers_x0(start):
    """With the true noise as the model output and eta = 0, DDIM returns x0 from any start."""
    x0 = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 1.8 - 0.9
    timesteps = sampling_timesteps(start, 1000, official_start=False) if start > 0 else [0]
    ab = BASE.alpha_bar(timesteps[0])
    x_start = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))

    def oracle(x_t, t):
        abar = BASE.alpha_bar(int(t[0]))
        return (x_t - math.sqrt(abar) * x0) / math.sqrt(1 - abar)

    out = ddim_sample_loop(oracle, x_start, timesteps, BASE, eta=0.0)
    assert (out - x0).abs().max().item() < 1e-5


def test_samplers_are_reproducible_and_per_sample():
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    model = lambda x_t, t: torch.cat([0.1 * x_t, torch.zeros_like(x_t)], 1)  # noqa: E731
    steps = [30, 20, 10, 0]
    gens = lambda: [image_generator(7, n) for n in ("a", "b")]  # noqa: E731
    for loop, kwargs in [(ddim_sample_loop, {"eta": 1.0}), (ddpm_sample_loop, {})]:
        first = loop(model, x, steps, BASE, generator=gens(), **kwargs)
        again = loop(model, x, steps, BASE, generator=gens(), **kwargs)
        alone = loop(model, x[1:], steps, BASE, generator=gens()[1:], **kwargs)
        assert torch.equal(first, again)
        assert torch.equal(first[1:], alone), "a sample must not depend on its batch"
    assert not torch.equal(draw_noise(x[:1], image_generator(7, "a")), draw_noise(x[:1], image_generator(7, "b")))


def test_hybrid_loss_is_finite_and_vlb_trains_only_the_variance():
    sched = DiffusionSchedule.from_name("linear", 1000)
    weight = torch.nn.Parameter(torch.tensor(0.5))
    var_logit = torch.nn.Parameter(torch.tensor(0.1))
    model = lambda x_t, t: torch.cat([weight * x_t, var_logit.expand_as(x_t)], 1)  # noqa: E731
    x0 = torch.rand(3, 3, 8, 8) * 2 - 1
    index = torch.tensor([0, 500, 999])
    losses = hybrid_loss(model, sched, x0, index, torch.randn_like(x0))
    assert all(torch.isfinite(v).all() for v in losses.values())
    losses["vb"].sum().backward()
    assert weight.grad is None or weight.grad.abs().item() == 0
    assert var_logit.grad is not None and var_logit.grad.abs().item() > 0


def test_cosine_schedule_and_errors():
    betas = make_betas("cosine", 1000)
    assert betas.dtype == np.float64 and (betas > 0).all() and (betas <= 0.999).all()
    with pytest.raises(ValueError, match="allowed"):
        make_betas("quadratic", 10)


def test_start_step_zero_is_the_estimator_alone():
    """N = 0: no timestep is evaluated and the restoration equals the clamped estimate."""
    from models.difface import DifFace
    assert sampling_timesteps(0, 1000) == [] and sampling_timesteps(0, 1000, steps=10) == []

    def prior(x, t):
        raise AssertionError("the prior must not run at N = 0")

    method = DifFace(lambda y: 2 * y - 0.25, prior, BASE, 8, SamplingConfig(start_step=0))
    y = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = method.restore(y, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out.sample, (2 * y - 0.25).clamp(0, 1)) and torch.equal(out.sample, out.estimate)
