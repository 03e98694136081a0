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
