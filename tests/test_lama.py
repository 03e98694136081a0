"""LaMa FFC-ResNet generator: behaviour beyond the official parity test (tiny models, CPU)."""
import json

import pytest
import torch

from models.lama import FFCResNetGenerator, FourierUnit

RESNET = dict(ratio_gin=0.75, ratio_gout=0.75)


def tiny(enable_lfu: bool = False, **overrides) -> FFCResNetGenerator:
    """A small generator in the shape of the inpainting config (ngf 8, 2 downsamplings, 1 block)."""
    kw = dict(input_nc=4, output_nc=3, ngf=8, n_downsampling=2, n_blocks=1, add_out_act="sigmoid",
              init_conv_kwargs=dict(ratio_gin=0, ratio_gout=0, enable_lfu=False),
              downsample_conv_kwargs=dict(ratio_gin=0, ratio_gout=0, enable_lfu=False),
              resnet_conv_kwargs=dict(RESNET, enable_lfu=enable_lfu))
    kw.update(overrides)
    torch.manual_seed(0)
    return FFCResNetGenerator(**kw).eval()


def masked_input(h: int, w: int, b: int = 1) -> torch.Tensor:
    """(B, 4, H, W): RGB in [0,1] with zeros in a rectangular hole, then the mask (1 = hole)."""
    g = torch.Generator().manual_seed(1)
    img = torch.rand(b, 3, h, w, generator=g)
    mask = torch.zeros(b, 1, h, w)
    mask[..., h // 4: h // 2, w // 4: w // 2] = 1
    return torch.cat([img * (1 - mask), mask], dim=1)


def test_lfu_builds_runs_and_adds_keys():
    model = tiny(enable_lfu=True)
    keys = model.state_dict().keys()
    assert "model.4.conv1.ffc.convg2g.lfu.conv_layer.weight" in keys
    assert "model.4.conv1.ffc.convg2g.lfu.bn.running_var" in keys
    with torch.no_grad():
        out = model(masked_input(16, 16, b=2))
    assert out.shape == (2, 3, 16, 16)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_lfu_non_square_and_odd_feature_map():
    model = tiny(enable_lfu=True)
    with torch.no_grad():
        assert model(masked_input(16, 24)).shape == (1, 3, 16, 24)
        with pytest.raises(ValueError, match="even feature map"):
            model(masked_input(20, 20))  # 5x5 bottleneck


def test_non_square_input_and_batch_independence():
    model = tiny()
    x = masked_input(12, 20, b=2)
    with torch.no_grad():
        out = model(x)
        single = model(x[1:])
    assert out.shape == (2, 3, 12, 20)
    torch.testing.assert_close(out[1:], single, atol=1e-6, rtol=0)


def test_fourier_unit_interleaves_real_and_imag():
    """Spectrum channels are [re0, im0, re1, im1] (not [re0, re1, im0, im1]), output channels [re, im].

    A 1x1 conv routing in-channel 1 -> out-channel 0 and in-channel 2 -> out-channel 1 must give the
    spectrum relu(Im X0) + i relu(Re X1); a blocked layout would give relu(Re X1) + i relu(Im X0).
    """
    fu = FourierUnit(2, 1).eval()
    with torch.no_grad():
        fu.conv_layer.weight.zero_()
        fu.conv_layer.weight[0, 1] = 1
        fu.conv_layer.weight[1, 2] = 1
        fu.bn.running_mean.zero_(), fu.bn.running_var.fill_(1 - fu.bn.eps)  # BN = identity
        fu.bn.weight.fill_(1), fu.bn.bias.fill_(0)
        x = torch.randn(1, 2, 6, 8, generator=torch.Generator().manual_seed(0))
        spec = torch.fft.rfftn(x, dim=(-2, -1), norm="ortho")
        want = torch.complex(spec[:, 0].imag.relu(), spec[:, 1].real.relu())[:, None]
        expected = torch.fft.irfftn(want, s=(6, 8), dim=(-2, -1), norm="ortho")
        torch.testing.assert_close(fu(x), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(spatial_transform_layers=[0]), "spatial_transform_layers"),
    (dict(out_ffc=True), "out_ffc"),
    (dict(add_out_act="relu"), "add_out_act"),
    (dict(resnet_conv_kwargs=dict(RESNET, gated=True)), "gated"),
    (dict(init_conv_kwargs=dict(ratio_gin=0, ratio_gout=1.5)), "ratio_gout"),
    (dict(resnet_conv_kwargs=dict(RESNET, enable_lfu=True), ngf=6), "multiple of 4"),
])
def test_unsupported_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


def test_bad_input_shapes_raise():
    model = tiny()
    with pytest.raises(ValueError, match="multiples of 4"):
        model(masked_input(30, 32))
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        model(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("add_out_act, lo, hi", [(True, -1, 1), ("tanh", -1, 1), (False, None, None)])
def test_output_activation(add_out_act, lo, hi):
    model = tiny(add_out_act=add_out_act)
    assert isinstance(model.model[-1], torch.nn.Conv2d) == (add_out_act is False)
    with torch.no_grad():
        out = model(masked_input(16, 16))
    if lo is not None:
        assert out.min() >= lo and out.max() <= hi


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_close_to_fp32(fixtures_dir, dtype):
    """Fixture weights and input at a non-power-of-two size: CPU FFTs reject bf16/fp16, so this also
    checks that the Fourier units compute in float32 (observed max error ~0.02 bf16, ~0.003 fp16)."""
    model = FFCResNetGenerator(**json.loads((fixtures_dir / "lama.json").read_text())).eval()
    model.load_state_dict(torch.load(fixtures_dir / "lama.pth", weights_only=True), strict=True)
    x = torch.load(fixtures_dir / "lama_io.pt", weights_only=True)["x"][..., :60, :44]
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=dtype):
            low = model(x)
    assert low.dtype == dtype and low.shape == ref.shape == (1, 3, 60, 44)
    err = (low.float() - ref).abs()
    assert err.max() < 0.05 and err.mean() < 0.01
