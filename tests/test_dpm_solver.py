"""DPM-Solver++(2M): against diffusers' independent implementation, an oracle, and the CLI end to end."""
import numpy as np
import pytest
import torch
from torch import nn

from difface import cli as inference
from datapipe.image_io import write_image
from models.diffusion import DiffusionSchedule
from models.difface import DifFace, SamplingConfig, sampling_timesteps
from models.samplers import SAMPLERS, dpmpp_2m_sample_loop, dpmpp_2m_sde_sample_loop


class SmallNet(nn.Module):
    """A small time-conditioned conv net with a learned-variance head: (B,3,H,W), t -> (B,6,H,W)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 6, 3, padding=1)
        self.time = nn.Linear(1, 16)

    def forward(self, x, t):
        h = self.conv1(x) + self.time(t.float()[:, None] / 1000.0)[..., None, None]
        return self.conv2(torch.tanh(h))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("sde", [False, True])
@pytest.mark.parametrize("steps", [[380, 300, 200, 120, 60, 20, 0], [396, 264, 132, 0], [50, 0]])
def test_matches_diffusers_dpm_solver_multistep(steps, sde):
    diffusers = pytest.importorskip("diffusers")
    schedule = DiffusionSchedule.from_name("linear", 1000)
    net = SmallNet().eval()
    gen = torch.Generator().manual_seed(1)
    x_start = torch.randn(2, 3, 16, 16, generator=gen)
    noise = [torch.randn(2, 3, 16, 16, generator=gen) for _ in steps]
    loop = dpmpp_2m_sde_sample_loop if sde else dpmpp_2m_sample_loop
    with torch.no_grad():
        ours = loop(net, x_start, steps, schedule, noise_fn=lambda k, x: noise[k])
        ref = diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=1000, trained_betas=schedule.betas.tolist(), solver_order=2,
            algorithm_type="sde-dpmsolver++" if sde else "dpmsolver++", solver_type="midpoint",
            lower_order_final=True, final_sigmas_type="zero", thresholding=True, sample_max_value=1.0,
            prediction_type="epsilon", variance_type="learned_range")
        ref.set_timesteps(timesteps=steps)
        x = x_start.clone()
        for k, t in enumerate(ref.timesteps):
            x = ref.step(net(x, t.reshape(1).expand(x.shape[0])), t, x, variance_noise=noise[k]).prev_sample
    assert [int(t) for t in ref.timesteps] == steps
    # diffusers keeps its schedule in float32, ours in float64
    torch.testing.assert_close(ours, x, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(ours, x_start, atol=1e-2)


def test_sde_eta_zero_is_the_ode_solver_and_draws_nothing():
    schedule = DiffusionSchedule.from_name("linear", 1000)
    net = SmallNet().eval()
    x_start = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    steps = [400, 250, 120, 40, 0]

    def no_noise(k, x):
        raise AssertionError("eta = 0 drew noise")
    with torch.no_grad():
        ode = dpmpp_2m_sample_loop(net, x_start, steps, schedule)
        sde0 = dpmpp_2m_sde_sample_loop(net, x_start, steps, schedule, eta=0.0, noise_fn=no_noise)
    assert torch.equal(ode, sde0)
    with pytest.raises(ValueError, match="eta"):
        dpmpp_2m_sde_sample_loop(net, x_start, steps, schedule, eta=1.5)


@pytest.mark.parametrize("eta", [0.3, 0.7, 1.0])
def test_sde_keeps_the_forward_marginals_for_every_eta(eta):
    """Oracle: a network whose x0 prediction is always D. Started from x_N ~ N(a_N D, s_N^2), each
    state of the SDE solver must be N(a_k D, s_k^2): a wrong decay or noise coefficient for the
    given eta shows in the mean or the spread (e.g. sqrt(1 - exp(-eta h)) for the noise gives a
    spread about 7% too small at eta = 0.5)."""
    schedule = DiffusionSchedule.from_name("linear", 1000)
    d = torch.tensor([-0.6, 0.1, 0.5]).view(1, 3, 1, 1)
    steps = [400, 300, 200, 120, 60, 20, 0]
    gen = torch.Generator().manual_seed(5)

    def oracle(x, t):
        ab = schedule.alpha_bar(int(t[0]))
        return (x - ab ** 0.5 * d) / (1 - ab) ** 0.5

    ab0 = schedule.alpha_bar(steps[0])
    x_start = ab0 ** 0.5 * d + (1 - ab0) ** 0.5 * torch.randn(16, 3, 64, 64, generator=gen)
    states = []
    out = dpmpp_2m_sde_sample_loop(oracle, x_start, steps, schedule, eta=eta, generator=gen,
                                   callback=lambda k, x, x0: states.append(x))
    torch.testing.assert_close(out, d.expand_as(out), atol=1e-5, rtol=0)
    for x, t in zip(states, steps[1:]):
        ab = schedule.alpha_bar(t)
        mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
        torch.testing.assert_close(mean, ab ** 0.5 * d.flatten(), atol=0.01, rtol=0)
        torch.testing.assert_close(std, torch.full_like(std, (1 - ab) ** 0.5), atol=0, rtol=0.02)


def test_true_eps_recovers_x0_and_intermediate_states_stay_on_the_path():
    """Oracle: with the exact noise of x_t = a x0 + s z, every state is a_k x0 + s_k z."""
    schedule = DiffusionSchedule.from_name("linear", 1000)
    x0 = torch.rand(1, 3, 8, 8) * 1.6 - 0.8
    z = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    steps = [399, 250, 100, 30, 0]
    ab0 = schedule.alpha_bar(steps[0])
    x_start = ab0 ** 0.5 * x0 + (1 - ab0) ** 0.5 * z
    states = []
    out = dpmpp_2m_sample_loop(lambda x, t: z.expand_as(x), x_start, steps, schedule,
                               callback=lambda k, x, x0_: states.append(x))
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)
    for k, t_next in enumerate(steps[1:]):
        ab = schedule.alpha_bar(t_next)
        torch.testing.assert_close(states[k], ab ** 0.5 * x0 + (1 - ab) ** 0.5 * z, atol=1e-5, rtol=0)


def test_is_registered_and_runs_in_the_method_without_drawing_step_noise():
    assert SAMPLERS["dpmpp_2m"] is dpmpp_2m_sample_loop
    schedule = DiffusionSchedule.from_name("linear", 1000)
    net = SmallNet().eval()
    method = DifFace(lambda y: y, net, schedule, 16, SamplingConfig(start_step=400, steps=5, sampler="dpmpp_2m"))
    # the solver's first evaluation is at N, where x_N is (no official off-by-one)
    assert method.timesteps == sampling_timesteps(400, 1000, steps=5, official_start=False) == [400, 300, 200, 100, 0]
    y = torch.rand(2, 3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    a = method.restore(y, generator=gen).sample
    after = torch.randn(1, generator=gen)
    gen2 = torch.Generator().manual_seed(0)
    b = method.restore(y, generator=gen2).sample
    torch.randn(2, 3, 16, 16, generator=gen2.manual_seed(0))  # only the jump to x_N draws noise
    assert torch.equal(a, b) and torch.equal(after, torch.randn(1, generator=gen2))


def test_cli_sampler_dpmpp_2m_with_steps(tiny_cfg, tmp_path, capsys):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    write_image(src / "a.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    out = tmp_path / "out"
    assert inference.main(["-i", str(src), "-o", str(out), "--aligned", "--cfg", str(tiny_cfg),
                           "--sampler", "dpmpp_2m", "--steps", "4"]) == 0
    assert (out / "a.png").is_file()
    err = capsys.readouterr().err
    assert "sampler=dpmpp_2m" in err and "4 network evaluations per face" in err
    assert inference.main(["-i", str(src), "-o", str(tmp_path / "o2"), "--aligned", "--cfg", str(tiny_cfg),
                           "--sampler", "nope"]) == 2
    assert "'sampling.sampler'" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_config_validation_follows_the_solver_start_at_n(tiny_cfg):
    """dpmpp_2m evaluates at N itself, so N = 5 allows 6 steps (5..0); DDIM's official start does not."""
    from difface.pipeline import ConfigError, load_config
    cfg = load_config(str(tiny_cfg), ["sampling.sampler=dpmpp_2m", "sampling.start_step=5", "sampling.steps=6"])
    assert cfg.sampling.steps == 6
    with pytest.raises(ConfigError, match="sampling"):
        load_config(str(tiny_cfg), ["sampling.sampler=ddim", "sampling.start_step=5", "sampling.steps=6"])
    with pytest.raises(ConfigError, match="sampling.eta"):
        load_config(str(tiny_cfg), ["sampling.sampler=dpmpp_2m_sde", "sampling.eta=1.5"])
    assert load_config(str(tiny_cfg), ["sampling.sampler=ddim", "sampling.eta=1.5"]).sampling.eta == 1.5
