"""Faster inference paths give the reference numbers: channels_last, compile wiring, up-front noise."""
import sys
from pathlib import Path

import pytest
import torch

from models import build_network
from models.diffusion import DiffusionSchedule
from models.difface import DifFace, SamplingConfig, image_generator
from models.runtime import prepare_network
from models.samplers import chain_noise, ddim_sample_loop, ddpm_sample_loop, draw_noise

from conftest import TINY_SWINIR, TINY_UNET

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import benchmark  # noqa: E402


def _nets(seed=0):
    torch.manual_seed(seed)
    unet = build_network("unet", TINY_UNET).eval().requires_grad_(False)
    for p in unet.parameters():  # no zero-initialised layer: every path matters
        torch.nn.init.normal_(p, std=0.05)
    swinir = build_network("swinir", TINY_SWINIR).eval().requires_grad_(False)
    return unet, swinir


def _copy(net):
    twin = type(net)(**(TINY_UNET if isinstance(net, type(_nets()[0])) else TINY_SWINIR)).eval()
    twin.load_state_dict(net.state_dict())
    return twin.requires_grad_(False)


def test_channels_last_networks_match_the_reference():
    unet, swinir = _nets()
    x, t = torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([10, 700])
    with torch.no_grad():
        ref_u, ref_s = unet(x, t), swinir(x * 0.5 + 0.5)
    fast_u = prepare_network(_copy(unet), torch.device("cpu"), channels_last=True)
    fast_s = prepare_network(_copy(swinir), torch.device("cpu"), channels_last=True)
    assert fast_u.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out_u, out_s = fast_u(x, t), fast_s(x * 0.5 + 0.5)
    torch.testing.assert_close(out_u, ref_u, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_s, ref_s, atol=1e-5, rtol=0)
    assert ref_u.abs().max() > 0.1


def test_in_place_inference_ops_equal_the_autograd_path_and_training_still_backpropagates():
    unet, _ = _nets()
    x, t = torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([5, 500])
    with torch.inference_mode():
        fast = unet(x, t)
    unet.requires_grad_(True)
    slow = unet(x, t)  # grad enabled: no in-place ops
    assert torch.equal(fast, slow.detach())
    slow.square().mean().backward()
    assert unet.input_blocks[1][0].in_layers[2].weight.grad.abs().sum() > 0


def test_compile_path_runs_our_networks_and_matches(monkeypatch):
    """The compile wiring (mode per device, dynamo tracing through both networks) on the CPU.

    Inductor's code generation takes minutes on a small CPU, so the graph is run by the
    'aot_eager' backend here; the benchmark measures the real one.
    """
    calls, real_compile = [], torch.compile

    def fake_compile(model, mode=None, dynamic=None):
        calls.append(mode)
        return real_compile(model, backend="aot_eager", dynamic=dynamic)

    unet, swinir = _nets()
    x, t = torch.rand(1, 3, 32, 32) * 2 - 1, torch.tensor([300])
    with torch.no_grad():
        ref_u, ref_s = unet(x, t), swinir(x * 0.5 + 0.5)
    monkeypatch.setattr(torch, "compile", fake_compile)
    cu = prepare_network(_copy(unet), torch.device("cpu"), compile=True)
    cs = prepare_network(_copy(swinir), torch.device("cpu"), compile=True)
    monkeypatch.undo()
    with torch.inference_mode():
        torch.testing.assert_close(cu(x, t), ref_u, atol=1e-4, rtol=0)
        torch.testing.assert_close(cs(x * 0.5 + 0.5), ref_s, atol=1e-4, rtol=0)
    assert calls == [None, None]  # CPU: default mode; CUDA would get "reduce-overhead"


@pytest.mark.parametrize("per_sample", [False, True])
def test_noise_drawn_up_front_is_bit_identical_to_per_step_draws(per_sample):
    schedule = DiffusionSchedule.from_name("linear", 1000)
    unet, _ = _nets()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    steps = [396, 300, 200, 100, 0]

    def gens():
        if per_sample:
            return [image_generator(7, name) for name in ("a.png", "b.png")]
        return torch.Generator().manual_seed(3)

    with torch.inference_mode():
        for loop, kw in ((ddim_sample_loop, {"eta": 0.5}), (ddpm_sample_loop, {})):
            per_step = loop(unet, x, steps, schedule, generator=gens(), **kw)
            g = gens()
            up_front = loop(unet, x, steps, schedule, noise_fn=chain_noise(x, g, len(steps) - 1), **kw)
            assert torch.equal(per_step, up_front), loop.__name__
            # the generators are left where per-step drawing would leave them
            g2 = gens()
            loop(unet, x, steps, schedule, generator=g2, **kw)
            assert torch.equal(draw_noise(x[:1], g if not per_sample else g[0]),
                               draw_noise(x[:1], g2 if not per_sample else g2[0]))


def test_chain_noise_refuses_an_extra_draw():
    fn = chain_noise(torch.zeros(1, 3, 4, 4), torch.Generator().manual_seed(0), 1)
    fn(0, None)
    with pytest.raises(RuntimeError, match="more than the 1"):
        fn(1, None)


def test_restore_runs_under_inference_mode_with_prepared_networks():
    unet, swinir = _nets()
    schedule = DiffusionSchedule.from_name("linear", 1000)
    ref = DifFace(swinir, unet, schedule, 32, SamplingConfig(start_step=400, steps=3))
    fast = DifFace(prepare_network(_copy(swinir), torch.device("cpu")),
                   prepare_network(_copy(unet), torch.device("cpu")), schedule, 32,
                   SamplingConfig(start_step=400, steps=3))
    y = torch.rand(2, 3, 32, 32)
    a = ref.restore(y, generator=torch.Generator().manual_seed(0)).sample
    b = fast.restore(y, generator=torch.Generator().manual_seed(0)).sample
    assert a.is_inference()
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_low_precision_from_step_runs_only_the_noisier_prior_steps_in_bf16():
    """With low_precision_from_step T the prior runs in bf16 at t >= T and in fp32 below, the
    estimator in fp32; T above every step gives the fp32 result exactly."""
    schedule = DiffusionSchedule.from_name("linear", 1000)
    unet, swinir = _nets()
    seen = []

    def autocast_dtype():
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None

    def prior(x, t):
        seen.append((int(t[0]), autocast_dtype()))
        return unet(x, t)

    def estimator(y):
        seen.append(("estimator", autocast_dtype()))
        return swinir(y)

    def run(**kw):
        seen.clear()
        sampling = SamplingConfig(start_step=400, steps=5, sampler="dpmpp_2m")
        method = DifFace(estimator, prior, schedule, 32, sampling, **kw)
        out = method.restore(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
                             generator=torch.Generator().manual_seed(0)).sample
        return out, list(seen)

    _, calls = run(dtype="bf16", low_precision_from_step=200)
    assert calls == [("estimator", None), (400, torch.bfloat16), (300, torch.bfloat16), (200, torch.bfloat16),
                     (100, None), (0, None)]
    bf16, calls = run(dtype="bf16")  # every network in bf16
    assert {c[1] for c in calls} == {torch.bfloat16}
    fp32, _ = run(dtype="fp32", low_precision_from_step=200)  # no reduced dtype: nothing changes
    assert torch.equal(run(dtype="bf16", low_precision_from_step=401)[0], fp32)
    assert not torch.allclose(bf16, fp32, atol=1e-5)
    with pytest.raises(ValueError, match="low_precision_from_step"):
        DifFace(estimator, prior, schedule, 16, dtype="bf16", low_precision_from_step=-1)


def test_low_precision_from_step_reaches_the_method_from_the_config(tiny_cfg):
    from difface.pipeline import ConfigError, load_config, make_difface
    cfg = load_config(str(tiny_cfg), ["dtype=bf16", "low_precision_from_step=200"])
    assert make_difface(cfg, None, None).low_precision_from_step == 200
    assert make_difface(load_config(str(tiny_cfg)), None, None).low_precision_from_step is None
    with pytest.raises(ConfigError, match="low_precision_from_step"):
        load_config(str(tiny_cfg), ["low_precision_from_step=-5"])


def test_cli_says_which_steps_run_in_reduced_precision(tiny_cfg, tmp_path, capsys, monkeypatch):
    import numpy as np

    from difface import cli as inference
    import models.runtime as runtime
    from datapipe.image_io import write_image
    monkeypatch.setattr(runtime, "_cpu_has_bf16", lambda: True)
    write_image(tmp_path / "in" / "a.png", np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    common = ["-i", str(tmp_path / "in"), "--aligned", "--cfg", str(tiny_cfg), "--device", "cpu", "--dtype", "bf16"]
    assert inference.main([*common, "-o", str(tmp_path / "a"), "low_precision_from_step=2"]) == 0
    assert "(bf16 for the prior at t >= 2, else fp32)" in capsys.readouterr().err
    assert inference.main([*common, "-o", str(tmp_path / "b"), "low_precision_from_step=null"]) == 0
    assert "(bf16);" in capsys.readouterr().err


def test_benchmark_imports_another_checkouts_networks_under_a_private_name(tmp_path):
    classes = benchmark.import_networks(REPO, "selftest")
    unet, swinir = _nets()
    assert classes["unet"] is not type(unet) and classes["unet"].__module__ == "_bench_selftest.unet"
    twin = classes["unet"](**TINY_UNET).eval()
    twin.load_state_dict(unet.state_dict())
    x, t = torch.rand(1, 3, 32, 32), torch.tensor([100])
    with torch.no_grad():
        torch.testing.assert_close(twin(x, t), unet(x, t), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="models/unet.py"):
        benchmark.import_networks(tmp_path, "empty")


def test_benchmark_prints_the_side_by_side_table(tiny_cfg, capsys):
    assert benchmark.main(["--cfg", str(tiny_cfg), "--fast-cfg", str(tiny_cfg), "--modes", "fp32,bf16",
                           "--batch-sizes", "1,2", "--repeats", "1", "--device", "cpu",
                           "--baseline", str(REPO), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| unet 32 | baseline" in out and "| swinir 32 | baseline" in out
    rows = [line for line in out.splitlines() if "| fp32 |" in line or "| bf16 |" in line]
    assert len(rows) == 4, out  # one sampling setting (the tiny config twice) x 2 modes x 2 batch sizes
    assert all("| 3 |" in row for row in rows)  # the tiny config's 3 evaluations per face
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--modes", "fp64"])


def test_benchmark_end_to_end_runs_the_preset_precision_and_fp32(tiny_cfg, tmp_path, capsys, monkeypatch):
    import yaml

    import models.runtime as runtime
    monkeypatch.setattr(runtime, "_cpu_has_bf16", lambda: True)
    fast = tmp_path / "fast.yaml"
    fast.write_text(yaml.safe_dump({**yaml.safe_load(tiny_cfg.read_text()), "dtype": "bf16",
                                    "low_precision_from_step": 100}))
    assert benchmark.main(["--cfg", str(tiny_cfg), "--fast-cfg", str(fast), "--modes", "fp32,bf16", "--batch-sizes",
                           "1", "--repeats", "1", "--device", "cpu", "--threads", "1", "--end-to-end"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny")]
    assert [row.split("|")[3].strip() for row in rows] == ["bf16 at t >= 100, else fp32", "fp32", "bf16"], rows


def test_swinir_attention_bias_cache_follows_new_weights():
    _, swinir = _nets(0)
    _, other = _nets(1)
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        swinir(x)  # fills the caches
    swinir.load_state_dict(other.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(swinir(x), other(x), atol=0, rtol=0)


def test_up_front_noise_only_across_devices_and_within_its_memory_cap(monkeypatch):
    """Pre-drawing pays only when the generators live elsewhere than the chain, and is skipped
    (step-by-step draws, same numbers) when the whole chain's noise would not fit the cap."""
    from models import samplers
    g = torch.Generator().manual_seed(0)
    on_cpu, elsewhere = torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8, device="meta")
    assert samplers._up_front(None, on_cpu, g, 10) is None
    assert callable(samplers._up_front(None, elsewhere, g, 10))
    monkeypatch.setattr(samplers, "UP_FRONT_NOISE_BYTES", 10 * elsewhere.numel() * 4 - 1)
    assert samplers._up_front(None, elsewhere, g, 10) is None
    given = lambda step, x: x  # noqa: E731
    assert samplers._up_front(given, elsewhere, g, 10) is given
