"""RRDBNet (Real-ESRGAN background upsampler): released key layout, parameter counts, tiling."""
import pytest
import torch
import torch.nn.functional as F

from models.rrdbnet import RRDBNet, realesrgan, upscale_tiled


def _expected_keys(num_block: int = 23) -> list[str]:
    """BasicSR RRDBNet state_dict keys, written out independently of the module."""
    names = ["conv_first"]
    for b in range(num_block):
        names += [f"body.{b}.rdb{r}.conv{c}" for r in (1, 2, 3) for c in range(1, 6)]
    names += ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
    return [f"{n}.{p}" for n in names for p in ("weight", "bias")]


@pytest.mark.parametrize("scale, n_params, in_ch", [(4, 16_697_987, 3), (2, 16_703_171, 12)])
def test_released_layout_keys_and_param_count(scale, n_params, in_ch):
    with torch.device("meta"):
        net = realesrgan(scale)
    sd = net.state_dict()
    assert list(sd) == _expected_keys()
    assert sum(p.numel() for p in net.parameters()) == n_params
    assert tuple(sd["conv_first.weight"].shape) == (64, in_ch, 3, 3)
    assert tuple(sd["body.0.rdb1.conv5.weight"].shape) == (64, 64 + 4 * 32, 3, 3)
    assert tuple(sd["conv_last.weight"].shape) == (3, 64, 3, 3)


def test_pixel_unshuffle_matches_basicsr_order():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    b, c, hh, hw = x.shape
    s = 2  # BasicSR's pixel_unshuffle helper, verbatim maths
    ref = x.view(b, c, hh // s, s, hw // s, s).permute(0, 1, 3, 5, 2, 4)
    ref = ref.reshape(b, c * s * s, hh // s, hw // s)
    assert torch.equal(F.pixel_unshuffle(x, 2), ref)


def _tiny(scale: int) -> RRDBNet:
    torch.manual_seed(0)
    net = RRDBNet(3, 3, scale=scale, num_feat=8, num_block=1, num_grow_ch=4).eval()
    with torch.no_grad():  # push outputs into [0,1] so the clamp does not hide differences
        net.conv_last.bias.fill_(0.5)
        net.conv_last.weight.mul_(0.1)
    return net


@pytest.mark.parametrize("scale, pad", [(4, 20), (2, 40)])
def test_tiled_equals_untiled_with_enough_context(scale, pad):
    # receptive radius of the tiny net: ~18.3 px at the network's input, x2 after unshuffling
    net = _tiny(scale)
    img = torch.rand(1, 3, 45, 58, generator=torch.Generator().manual_seed(1))
    full = upscale_tiled(net, img, scale, tile=0)
    tiled = upscale_tiled(net, img, scale, tile=16, tile_pad=pad)
    assert full.shape == (1, 3, 45 * scale, 58 * scale)
    assert tiled.dtype == torch.float32 and 0 <= tiled.min() and tiled.max() <= 1
    assert (full - tiled).abs().max() < 1e-5
    # without context the tile seams do differ: the test above is not vacuous
    assert (full - upscale_tiled(net, img, scale, tile=16, tile_pad=0)).abs().max() > 1e-4


def test_odd_sizes_and_bad_arguments():
    net = _tiny(2)
    out = upscale_tiled(net, torch.rand(1, 3, 1, 7), 2, tile=4, tile_pad=2)
    assert out.shape == (1, 3, 2, 14)
    with pytest.raises(ValueError, match="multiples of 2"):
        upscale_tiled(net, torch.rand(1, 3, 8, 8), 2, tile=5)
    with pytest.raises(ValueError, match=r"\(1,3,H,W\)"):
        upscale_tiled(net, torch.rand(3, 8, 8), 2)
    with pytest.raises(ValueError, match="scale"):
        RRDBNet(scale=3)
