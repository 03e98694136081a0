"""Deep-feature caching (DeepCache): partial UNet evaluations and their schedule in the method."""
import pytest
import torch

from models import build_network
from models.deep_cache import CachedUNet, cached_unet, shallow_input_blocks
from models.runtime import prepare_network

from conftest import TINY_UNET

pytestmark = pytest.mark.usefixtures("one_thread")  # two spinning threads on 2 shared cores run slower

# three resolution levels, a per-level block count and attention at two of them: every kind of
# block sits on both sides of some branch depth
DEEPER_UNET = dict(TINY_UNET, channel_mult=[1, 2, 2], num_res_blocks=[1, 2, 1], attention_resolutions=[16, 8])


def _unet(params=DEEPER_UNET, seed=0):
    torch.manual_seed(seed)
    unet = build_network("unet", params).eval().requires_grad_(False)
    for p in unet.parameters():  # no zero-initialised layer: every block changes the output
        torch.nn.init.normal_(p, std=0.05)
    return unet


def _inputs(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 32, 32, generator=g), torch.tensor([300, 20, 150, 399][:batch])


@pytest.mark.parametrize("channels_last", [False, True])
def test_full_evaluation_is_the_network_forward_and_a_partial_one_from_its_own_cache_equals_it(channels_last):
    unet = _unet()
    if channels_last:
        unet = prepare_network(unet, torch.device("cpu"), channels_last=True)
    x, t = _inputs()
    with torch.inference_mode():
        reference = unet(x, t)
        for depth in (1, 2, 3):
            net = CachedUNet(unet, depth)
            out, deep = net.full(x, t)
            assert torch.equal(out, reference), depth
            torch.testing.assert_close(net.partial(x, t, deep), reference, atol=1e-6, rtol=0)


def test_the_deep_feature_is_the_decoder_input_at_the_branch_depth():
    unet = _unet()
    x, t = _inputs()
    # what the first shallow decoder block at each depth receives from below (before its skip)
    seen = {}
    first_shallow = {d: len(unet.output_blocks) - shallow_input_blocks(unet, d) for d in (1, 2, 3)}
    hooks = [unet.output_blocks[i].register_forward_pre_hook(
        lambda mod, args, i=i: seen.__setitem__(i, args[0])) for i in set(first_shallow.values())]
    with torch.inference_mode():
        unet(x, t)
        for h in hooks:
            h.remove()
        for depth, expected_shape in ((1, (2, 64, 32, 32)), (2, (2, 64, 16, 16)), (3, (2, 64, 8, 8))):
            _, deep = CachedUNet(unet, depth).full(x, t)
            assert tuple(deep.shape) == expected_shape
            received = seen[first_shallow[depth]]  # cat([deep, skip]) along channels
            assert torch.equal(received[:, :deep.shape[1]], deep), depth
    # block counts of this network: stem, level 0 (1 block), down, level 1 (2), down, level 2 (1)
    assert [shallow_input_blocks(unet, d) for d in (1, 2, 3)] == [2, 5, 7] and len(unet.input_blocks) == 7


def test_a_partial_evaluation_runs_only_the_shallow_blocks_and_uses_the_cache():
    unet = _unet()
    x, t = _inputs()
    calls = []
    for name in ("middle_block", "input_blocks", "output_blocks"):
        for i, block in enumerate(getattr(unet, name) if name != "middle_block" else [unet.middle_block]):
            block.register_forward_hook(lambda *a, key=(name, i): calls.append(key))
    net = CachedUNet(unet, 2)
    with torch.inference_mode():
        _, deep_a = net.full(x, t)
        _, deep_b = net.full(x.flip(0), t)
        calls.clear()
        out_a = net.partial(x, t, deep_a)
        out_b = net.partial(x, t, deep_b)
    ran = set(calls)
    assert ran == {("input_blocks", i) for i in range(5)} | {("output_blocks", i) for i in range(2, 7)}
    assert (out_a - out_b).abs().max() > 1e-5  # the cached feature matters (float noise: 1e-7)
    assert (out_a - unet(x, t)).abs().max() < 1e-6


def test_bf16_autocast_and_a_cache_from_another_precision():
    unet = _unet()
    x, t = _inputs()
    net = CachedUNet(unet, 1)
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reference = unet(x, t)
            out, deep = net.full(x, t)
            assert torch.equal(out, reference) and deep.dtype == torch.bfloat16
            assert torch.equal(net.partial(x, t, deep), reference)
        # a bf16 cache feeding an fp32 partial step (low-noise steps in fp32): runs, close to fp32
        fp32 = unet(x, t)
        mixed = net.partial(x, t, deep)
        assert mixed.dtype == torch.float32
        assert (mixed - fp32).abs().max() < 0.05 * fp32.abs().max()


def test_bad_depths_inputs_and_networks_are_refused():
    unet = _unet()
    for depth in (0, 4, 1.5, None):
        with pytest.raises(ValueError, match=r"cache depth must be an integer in \[1, 3\]"):
            CachedUNet(unet, depth)
    with pytest.raises(TypeError, match="UNetModel"):
        cached_unet(lambda x, t: x, 1)
    x, t = _inputs()
    with torch.inference_mode():
        _, deep = CachedUNet(unet, 2).full(x, t)
        with pytest.raises(ValueError, match="does not fit"):
            CachedUNet(unet, 1).partial(x, t, deep)
        with pytest.raises(ValueError, match="does not fit"):
            CachedUNet(unet, 2).partial(x[:1], t[:1], deep)


def test_a_compiled_prior_gives_a_compiled_cached_network(monkeypatch):
    """A torch.compile'd prior is unwrapped and the wrapper compiled the same way ('aot_eager'
    here: inductor's code generation takes minutes on a small CPU)."""
    calls, real_compile = [], torch.compile

    def fake_compile(model, mode=None, dynamic=None):
        calls.append(type(model).__name__)
        return real_compile(model, backend="aot_eager", dynamic=dynamic)

    unet = _unet()
    x, t = _inputs()
    with torch.inference_mode():
        reference = unet(x, t)
    monkeypatch.setattr(torch, "compile", fake_compile)
    compiled_prior = prepare_network(unet, torch.device("cpu"), compile=True)
    net = cached_unet(compiled_prior, 2)
    monkeypatch.undo()
    assert calls == ["UNetModel", "CachedUNet"] and isinstance(net, torch._dynamo.OptimizedModule)
    with torch.inference_mode():
        out, deep = net(x, t)
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)
        torch.testing.assert_close(net(x, t, deep), reference, atol=1e-5, rtol=0)
    assert isinstance(cached_unet(unet, 2), CachedUNet)


# --------------------------------------------------------------------------------------------
# The schedule and the method
# --------------------------------------------------------------------------------------------

from dataclasses import replace  # noqa: E402

from models.diffusion import DiffusionSchedule  # noqa: E402
from models.difface import DifFace, SamplingConfig, image_generator  # noqa: E402
from models.samplers import SAMPLERS  # noqa: E402

SCHEDULE = DiffusionSchedule.from_name("linear", 1000)


def test_full_evaluations_of_the_schedule():
    k15 = SamplingConfig(start_step=400, steps=15, sampler="dpmpp_2m")
    assert k15.full_evaluations(1000) == [True] * 15  # off by default
    plan = replace(k15, cache_depth=2, cache_interval=3, cache_last_full=2).full_evaluations(1000)
    assert [k for k, full in enumerate(plan) if full] == [0, 3, 6, 9, 12, 13, 14]
    plan = replace(k15, cache_depth=2, cache_full_steps=[0, 1, 5], cache_last_full=0).full_evaluations(1000)
    assert [k for k, full in enumerate(plan) if full] == [0, 1, 5]
    assert replace(k15, cache_depth=1, cache_interval=1).full_evaluations(1000) == [True] * 15
    assert SamplingConfig(cache_depth=1).full_evaluations(1000) == [k % 2 == 0 or k == 99 for k in range(100)]
    for bad, field in ((dict(cache_depth=0), "cache_depth"), (dict(cache_depth=1, cache_interval=0), "cache_interval"),
                       (dict(cache_depth=1, cache_last_full=-1), "cache_last_full"),
                       (dict(cache_depth=1, cache_full_steps=[2, 4]), "include 0"),
                       (dict(cache_depth=1, cache_full_steps=[0, 15]), "0 to 14")):
        with pytest.raises(ValueError, match=field):
            replace(k15, **bad).full_evaluations(1000)
        with pytest.raises(ValueError, match=field):
            DifFace(None, _unet(), SCHEDULE, 32, replace(k15, **bad))


def _restore(method, y, seed=0):
    gens = [image_generator(seed, f"face{i}") for i in range(len(y))]
    return method.restore(y, generator=gens).sample


def _faces(n=3):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_caching_off_or_only_full_steps_changes_nothing(sampler):
    unet, y = _unet(), _faces(2)
    estimator = lambda y: y.flip(-1)  # noqa: E731
    base = SamplingConfig(start_step=400, steps=6, sampler=sampler)
    reference = _restore(DifFace(estimator, unet, SCHEDULE, 32, base), y)
    # the cache settings without a depth are inert
    inert = replace(base, cache_interval=5, cache_full_steps=[0], cache_last_full=3)
    assert torch.equal(_restore(DifFace(estimator, unet, SCHEDULE, 32, inert), y), reference)
    # full evaluations through the wrapper are the network's forward, bit for bit
    every = replace(base, cache_depth=2, cache_interval=1)
    assert torch.equal(_restore(DifFace(estimator, unet, SCHEDULE, 32, every), y), reference)
    # partial steps change the result, a little
    cached = _restore(DifFace(estimator, unet, SCHEDULE, 32, replace(base, cache_depth=2, cache_interval=2)), y)
    assert 1e-6 < (cached - reference).abs().max() < 0.05


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_the_method_runs_each_evaluation_full_or_partial_as_planned(sampler):
    unet = _unet()
    sampling = SamplingConfig(start_step=400, steps=7, sampler=sampler, cache_depth=1, cache_interval=3,
                              cache_last_full=2)
    method = DifFace(lambda y: y, unet, SCHEDULE, 32, sampling)
    calls, net = [], method.cached_prior

    def spy(x, t, deep=None):
        calls.append((int(t[0]), deep is None))
        return net(x, t, deep)

    method.cached_prior = spy
    for _ in range(2):  # every chain starts anew: the first evaluation of each is full
        calls.clear()
        _restore(method, _faces(2))
        assert [full for _, full in calls] == [True, False, False, True, False, True, True]
        assert [t for t, _ in calls] == method.timesteps


def test_a_batch_gives_each_image_its_own_result():
    unet, y = _unet(), _faces(3)
    sampling = SamplingConfig(start_step=400, steps=5, sampler="dpmpp_2m", cache_depth=1, cache_interval=2)
    method = DifFace(lambda y: y.flip(-1), unet, SCHEDULE, 32, sampling)
    together = _restore(method, y)
    for i in range(3):
        alone = method.restore(y[i:i + 1], generator=[image_generator(0, f"face{i}")]).sample
        torch.testing.assert_close(together[i:i + 1], alone, atol=1e-5, rtol=0)


def test_bf16_steps_and_fp32_steps_share_one_cache():
    """low_precision_from_step: the noisy steps (full and partial) in bf16, the low-noise ones in
    fp32 from a cache a bf16 step left; fp32 throughout when the threshold is above every step."""
    unet, y = _unet(), _faces(1)
    seen = []
    sampling = SamplingConfig(start_step=400, steps=5, sampler="dpmpp_2m", cache_depth=2, cache_interval=2,
                              cache_last_full=0)

    def run(**kw):
        method = DifFace(lambda y: y, unet, SCHEDULE, 32, sampling, **kw)
        net = method.cached_prior

        def spy(x, t, deep=None):
            seen.append((int(t[0]), deep is None, torch.is_autocast_enabled("cpu")))
            return net(x, t, deep)

        method.cached_prior = spy
        return _restore(method, y)

    mixed = run(dtype="bf16", low_precision_from_step=200)
    assert seen == [(400, True, True), (300, False, True), (200, True, True), (100, False, False), (0, True, False)]
    fp32 = run(dtype="fp32")
    assert torch.equal(run(dtype="bf16", low_precision_from_step=401), fp32)
    assert 0 < (mixed - fp32).abs().max() < 0.05


def test_a_compiled_prior_restores_with_the_cache(monkeypatch):
    unet, y = _unet(), _faces(1)
    sampling = SamplingConfig(start_step=400, steps=4, sampler="ddim", cache_depth=2, cache_interval=2)
    eager = _restore(DifFace(lambda y: y, unet, SCHEDULE, 32, sampling), y)
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, mode=None, dynamic=None:
                        real_compile(model, backend="aot_eager", dynamic=dynamic))
    method = DifFace(lambda y: y, prepare_network(unet, torch.device("cpu"), compile=True), SCHEDULE, 32, sampling)
    assert isinstance(method.cached_prior, torch._dynamo.OptimizedModule)
    torch.testing.assert_close(_restore(method, y), eager, atol=1e-4, rtol=0)


def test_the_cache_settings_are_validated_at_config_load(tiny_cfg):
    from difface.pipeline import ConfigError, load_config, make_difface
    for override, key in (("sampling.cache_depth=0", "sampling.cache_depth"),
                          ("sampling.cache_depth=3", "sampling.cache_depth"),  # the tiny UNet has 2 levels
                          ("sampling.cache_interval=0", "sampling.cache_interval"),
                          ("sampling.cache_last_full=-1", "sampling.cache_last_full"),
                          ("sampling.cache_full_steps=[1,2]", "sampling.cache_full_steps"),
                          ("sampling.cache_full_steps=[0,3]", "sampling.cache_full_steps"),  # 3 evaluations
                          ("sampling.cache_interval=two", "sampling.cache_interval")):
        with pytest.raises(ConfigError, match=key):
            load_config(str(tiny_cfg), ["sampling.cache_depth=1", override])
    cfg = load_config(str(tiny_cfg), ["sampling.cache_depth=2", "sampling.cache_full_steps=[0,1]",
                                      "sampling.cache_last_full=0"])
    method = make_difface(cfg, None, _unet(dict(TINY_UNET)))
    assert method.full_steps == [True, True, False] and method.cached_prior.depth == 2
    assert make_difface(load_config(str(tiny_cfg)), None, None).cached_prior is None


def test_num_samples_through_the_restorer_equal_single_restorations(tiny_cfg):
    from difface import Restorer
    restorer = Restorer(str(tiny_cfg), device="cpu", overrides=["sampling.cache_depth=1", "sampling.steps=5",
                                                                "sampling.cache_last_full=0", "batch_size=2"])
    method = restorer.method
    assert method.full_steps == [True, False, True, False, True]
    crops, keys = _faces(3), ["a.png", "b.png", "c.png"]
    samples, _, _ = restorer.restore_crops(method, crops, keys, seed=9, num_samples=2)
    for k in range(2):
        for i, key in enumerate(keys):
            alone = method.restore(crops[i:i + 1], generator=[image_generator(9, key, k)]).sample
            torch.testing.assert_close(samples[k][i:i + 1], alone, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# Cost of a partial evaluation
# --------------------------------------------------------------------------------------------

from models.deep_cache import evaluation_macs  # noqa: E402


def test_macs_of_the_paper_unet_per_branch_depth():
    """The numbers of docs/deep_cache.md: UNet-512 (difface_ffhq512's prior), counted on fake tensors."""
    import yaml

    from conftest import REPO
    params = yaml.safe_load((REPO / "configs/inference/difface_ffhq512.yaml").read_text())["prior"]["params"]
    macs = evaluation_macs(params, 512, [1, 2, 3, 7])
    assert round(macs[None] / 1e9, 1) == 186.0  # 372 GFLOP
    assert [round(macs[d] / macs[None], 3) for d in (1, 2, 3, 7)] == [0.128, 0.362, 0.596, 0.996]


def test_macs_of_a_partial_evaluation_leave_out_exactly_the_deep_blocks():
    from torch.utils.flop_counter import FlopCounterMode
    unet = _unet()
    macs = evaluation_macs(DEEPER_UNET, 32, [1, 2, 3])
    assert macs[1] < macs[2] < macs[3] < macs[None]
    x, t = _inputs(1)
    with torch.inference_mode():
        emb = unet.time_embed(torch.zeros(1, 32))
        h = x
        for block in unet.input_blocks:
            h = block(h, emb)
        with FlopCounterMode(display=False) as counter:
            unet.middle_block(h, emb)
    assert macs[None] - macs[3] == counter.get_total_flops() // 2  # depth 3 = all levels: only the middle block


def test_benchmark_prints_the_cost_per_depth(tiny_cfg, capsys):
    import sys

    from conftest import REPO
    sys.path.insert(0, str(REPO / "scripts"))
    import benchmark
    assert benchmark.main(["--cfg", str(tiny_cfg), "--fast-cfg", str(tiny_cfg), "--cache-depths", "1,2",
                           "--forward-only", "--repeats", "1", "--device", "cpu", "--threads", "1"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [r[0].strip() for r in rows[1:]] == ["full", "1", "2"]
    assert [r[1].strip() for r in rows[2:]] == ["32x32x32", "32x16x16"]  # the tiny UNet: 32 channels per level
    assert float(rows[1][3]) == 1.0 and 0 < float(rows[2][3]) < float(rows[3][3]) < 1
    assert benchmark.main(["--cfg", str(tiny_cfg), "--cache-depths", "3", "--forward-only"]) == 2


def test_benchmark_counts_full_evaluation_equivalents_of_a_cached_setting(tiny_cfg, tmp_path, capsys):
    import sys

    import yaml

    from conftest import REPO
    sys.path.insert(0, str(REPO / "scripts"))
    import benchmark
    cached = tmp_path / "cached.yaml"
    tiny = yaml.safe_load(tiny_cfg.read_text())
    cached.write_text(yaml.safe_dump({**tiny, "sampling": {**tiny["sampling"], "cache_depth": 1}}))
    assert benchmark.main(["--cfg", str(tiny_cfg), "--fast-cfg", str(cached), "--modes", "fp32", "--batch-sizes", "1",
                           "--repeats", "1", "--device", "cpu", "--threads", "1", "--end-to-end"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [[c.strip() for c in line.split("|")[1:-1]] for line in lines if "| fp32 | 1 |" in line]
    fraction = evaluation_macs(TINY_UNET, 32, [1])
    fraction = fraction[1] / fraction[None]
    plain, partial = table
    assert plain[1:3] == ["3", "3.0"] and plain[8] == "-"
    # 3 evaluations, the middle one partial: 2 full + 1 x its MAC fraction
    assert partial[0].endswith("cache depth 1 (1 partial)") and partial[1] == "3"
    assert partial[2] == f"{2 + fraction:.1f}" and float(partial[8]) > 0  # its partial evaluation timed
    end_to_end = [line for line in lines if line.startswith("| tiny")]
    assert end_to_end and end_to_end[0].split("|")[5].strip() == f"{2 + fraction:.1f}"


def test_solver_quality_takes_cache_rows_and_ranks_rows_by_full_evaluation_equivalents():
    import argparse

    from test_solver_quality import _row, _script
    sq = _script()
    assert sq.cache_rows("15:1:2, 20:2:3:0") == [(15, 1, 2, 1), (20, 2, 3, 0)]
    for bad in ("15:1", "15:0:2", "15:1:2:-1", "a:b:c", "15:1:2:1:1"):
        with pytest.raises(argparse.ArgumentTypeError, match="K:DEPTH:INTERVAL"):
            sq.cache_rows(bad)
    assert sq.parse_args(["--out", "x", "--cache-rows", "15:1:3"]).cache_rows == [(15, 1, 3, 1)]
    ref = _row("DDIM", 100, 110.0, 40.0, 18.9, sampler="ddim")
    plain = _row("dpmpp_2m K = 10", 10, 109.0, 39.0, 19.0)
    cached = _row("dpmpp_2m cache depth 1 every 3 K = 15", 15, 109.0, 39.0, 19.0, cache=[1, 3, 1], equivalents=7.2)
    assert sq.choose(ref, [plain, cached], 0.2) is cached  # 7.2 full-evaluation equivalents < 10
    assert sq.choose(ref, [plain, dict(cached, equivalents=10.0)], 0.2) is plain  # a tie: the uncached row
    for r in (plain, cached):
        r.update(ssim=0.5, seconds_per_image=1.0)
    report = {"meta": dict(model="m", machine="cpu", torch="2", images=3, heldout="h", image_size=64,
                           degradation_from="d", seed=0, command="c"),
              "results": [{"N": 400, "reference": dict(ref, ssim=0.5, seconds_per_image=9.0), "rows": [plain, cached],
                           "selected": cached, "within_noise": None}]}
    text = sq.markdown(report)
    assert "| dpmpp_2m cache depth 1 every 3 K = 15 | 15 (= 7.2 full) |" in text and "| dpmpp_2m K = 10 | 10 |" in text


def test_benchmark_times_the_command_line_from_process_start(tiny_cfg, capsys):
    import sys

    from conftest import REPO
    sys.path.insert(0, str(REPO / "scripts"))
    import benchmark
    assert benchmark.main(["--cfg", str(tiny_cfg), "--fast-cfg", str(tiny_cfg), "--process", "--forward-only",
                           "--repeats", "1", "--device", "cpu", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    run = [line for line in lines if "process start to file written" in line]
    paper = [line for line in lines if line.startswith("| paper setting with the networks of this checkout")]
    assert len(run) == 1 and float(run[0].split("|")[2].split()[0]) > 0
    assert len(paper) == 1 and "x the fast preset's run" in paper[0]
