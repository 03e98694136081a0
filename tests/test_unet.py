"""UNet behaviour beyond the official parity test: attention maths, embedding, validation,
resampling variants, autocast and gradient checkpointing. Tiny configs only (CPU, fast)."""
import math

import pytest
import torch

from models.unet import GroupNorm32, UNetModel, qkv_attention, timestep_embedding

TINY = dict(image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
            attention_resolutions=[8], channel_mult=(1, 2), num_head_channels=32,
            use_scale_shift_norm=True)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter (zero-initialised ones too) with seeded fan-in scaled noise."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            std = 1 / math.sqrt(p[0].numel()) if p.ndim > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def tiny(**overrides) -> UNetModel:
    return randomize(UNetModel(**{**TINY, **overrides})).eval()


def inputs(batch: int = 2, side: int = 16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, side, side, generator=g), torch.tensor([7, 613][:batch])


def explicit_attention(qkv: torch.Tensor, heads: int, legacy: bool) -> torch.Tensor:
    """The official formulation: q, k scaled by ch^-1/4 each, softmax over keys, einsums."""
    b, width, t = qkv.shape
    ch = width // (3 * heads)
    if legacy:
        q, k, v = qkv.reshape(b * heads, 3 * ch, t).split(ch, dim=1)
    else:
        q, k, v = (z.reshape(b * heads, ch, t) for z in qkv.chunk(3, dim=1))
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(dim=-1)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(b, -1, t)


@pytest.mark.parametrize("legacy", [True, False])
def test_sdpa_attention_matches_explicit_softmax(legacy):
    qkv = torch.randn(2, 3 * 3 * 8, 20, generator=torch.Generator().manual_seed(0))
    out = qkv_attention(qkv.transpose(1, 2), num_heads=3, legacy=legacy).transpose(1, 2)  # token-major
    assert out.shape == (2, 24, 20)
    torch.testing.assert_close(out, explicit_attention(qkv, 3, legacy), atol=1e-6, rtol=0)


def test_legacy_and_new_order_differ():
    qkv = torch.randn(1, 10, 3 * 2 * 8, generator=torch.Generator().manual_seed(0))
    assert (qkv_attention(qkv, 2, legacy=True) - qkv_attention(qkv, 2, legacy=False)).abs().max() > 1e-2


def test_timestep_embedding_cos_first_and_odd_padding():
    emb = timestep_embedding(torch.tensor([0, 5]), 7)
    assert emb.shape == (2, 7) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1, 1, 0, 0, 0, 0]))
    freqs = torch.exp(-math.log(10000) * torch.arange(3) / 3)
    torch.testing.assert_close(emb[1, :3], torch.cos(5 * freqs))
    torch.testing.assert_close(emb[1, 3:6], torch.sin(5 * freqs))
    torch.testing.assert_close(timestep_embedding(torch.tensor([5.0]), 7), emb[1:])


@pytest.mark.parametrize("overrides, match", [
    (dict(num_res_blocks=[1, 1, 1]), "one entry per level"),
    (dict(num_res_blocks=[1, 0]), "positive"),
    (dict(dims=3), "dims=3"),
    (dict(num_classes=10), "num_classes=10"),
    (dict(model_channels=24), "multiples of 32"),
    (dict(num_head_channels=48), "num_head_channels=48"),
    (dict(num_head_channels=-1, num_heads=5), "num_heads=5"),
])
def test_invalid_configs_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        UNetModel(**{**TINY, **overrides})


def test_bad_input_size_raises():
    model = UNetModel(**TINY)
    with pytest.raises(ValueError, match="multiples of 2"):
        model(torch.zeros(1, 3, 15, 16), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(1, 4, 16, 16), torch.tensor([0]))
    with pytest.raises(ValueError, match="timesteps"):
        model(torch.zeros(2, 3, 16, 16), torch.tensor([0, 1, 2]))


def test_attention_placed_by_absolute_resolution():
    model = UNetModel(**{**TINY, "channel_mult": (1, 1, 2), "attention_resolutions": [8]})
    has_attn = [any(type(m).__name__ == "AttentionBlock" for m in b) for b in model.input_blocks]
    assert has_attn == [False, False, False, True, False, False]  # only the 8x8 level (level 1)
    assert sum(type(m).__name__ == "AttentionBlock" for m in model.modules()) == 1 + 1 + 2


def test_zero_init_and_head_not_zero():
    model = UNetModel(**TINY)
    res = model.input_blocks[1][0]
    assert res.out_layers[3].weight.abs().sum() == 0
    assert model.input_blocks[3][1].proj_out.weight.abs().sum() == 0
    assert model.out[2].weight.abs().sum() > 0  # DifFace deviation from ADM


@pytest.mark.parametrize("overrides", [
    dict(resblock_updown=True),
    dict(conv_resample=False, use_scale_shift_norm=False),
    dict(use_new_attention_order=True, num_head_channels=-1, num_heads=2, num_heads_upsample=4),
    dict(num_res_blocks=[2, 1], dropout=0.1),
])
def test_variants_forward(overrides):
    model = tiny(**overrides)
    x, t = inputs()
    with torch.no_grad():
        out = model(x, t)
    assert out.shape == (2, 6, 16, 16) and torch.isfinite(out).all()


def test_resblock_updown_has_no_resample_params():
    keys = UNetModel(**{**TINY, "resblock_updown": True}).state_dict()
    assert not any(".op." in k or ".conv." in k for k in keys)
    assert "input_blocks.2.0.in_layers.2.weight" in keys  # the downsampling ResBlock


def test_scalar_timestep_broadcasts_and_float_equals_int():
    model = tiny()
    x, _ = inputs()
    with torch.no_grad():
        ref = model(x, torch.tensor([300, 300]))
        torch.testing.assert_close(model(x, torch.tensor(300)), ref, atol=0, rtol=0)
        torch.testing.assert_close(model(x, torch.tensor([300.0, 300.0])), ref, atol=0, rtol=0)


def test_groupnorm_upcasts_float16_and_runs_bfloat16_natively_under_autocast():
    norm = randomize(GroupNorm32(64))
    x = torch.randn(2, 64, 4, 4)
    with torch.autocast("cpu", dtype=torch.float16):
        y16 = norm(x.half())
    assert y16.dtype == torch.float16  # computed in float32 as the official code, then cast
    torch.testing.assert_close(y16, norm(x.half().float()).half(), atol=0, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x.bfloat16())
    assert y.dtype == torch.bfloat16  # bf16 statistics are accumulated in float32 by the kernel
    torch.testing.assert_close(y.float(), norm(x.bfloat16().float()), atol=0.05, rtol=0.02)


def test_bf16_autocast_close_to_fp32():
    model = tiny()
    x, t = inputs()
    with torch.no_grad():
        ref = model(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() / ref.abs().max() < 0.02  # observed 0.005


def test_float64_model_runs():
    model = tiny().double()
    x, t = inputs()
    with torch.no_grad():
        out = model(x.double(), t)
    assert out.dtype == torch.float64


def test_gradient_checkpointing_same_gradients():
    """Also with dropout: the recomputation must replay the same dropout masks."""
    plain = tiny(dropout=0.2)
    ckpt = tiny(dropout=0.2, use_checkpoint=True)
    x, t = inputs(batch=1)
    grads = []
    for model in (plain, ckpt):
        model.train()
        torch.manual_seed(0)
        model(x, t).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5, msg=name)
