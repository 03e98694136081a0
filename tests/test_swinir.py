"""SwinIR behaviour not covered by the official parity test: heads, sizes, padding, masks."""
import pytest
import torch

from models.swinir import SwinIR, shift_window_mask

TINY = dict(img_size=8, patch_size=1, in_chans=3, embed_dim=8, depths=[2], num_heads=[2], window_size=4,
            mlp_ratio=2, img_range=1.0, resi_connection="1conv")


def tiny(**kw) -> SwinIR:
    torch.manual_seed(0)
    return SwinIR(**{**TINY, **kw}).eval()


@pytest.mark.parametrize("kw, in_hw, out_hw", [
    (dict(upsampler="nearest+conv", sf=4), (8, 12), (32, 48)),
    (dict(upsampler="nearest+conv", sf=4, unshuffle=True, unshuffle_scale=4), (16, 32), (16, 32)),
    (dict(upsampler="nearest+conv", sf=8, unshuffle=True, unshuffle_scale=4, img_size=4), (16, 32), (32, 64)),
    (dict(upsampler="pixelshuffle", sf=2), (8, 8), (16, 16)),
    (dict(upsampler="pixelshuffle", sf=3, resi_connection="3conv"), (4, 8), (12, 24)),
    (dict(upsampler="pixelshuffledirect", sf=2), (8, 4), (16, 8)),
    (dict(upsampler="", sf=1), (8, 16), (8, 16)),
])
def test_output_sizes(kw, in_hw, out_hw):
    model = tiny(**kw)
    assert model.output_size(*in_hw) == out_hw
    with torch.no_grad():
        out = model(torch.rand(2, 3, *in_hw))
    assert out.shape == (2, 3, *out_hw) and torch.isfinite(out).all()


def test_invalid_config_raises():
    with pytest.raises(ValueError, match="allowed"):
        tiny(upsampler="bicubic")
    with pytest.raises(ValueError, match="resi_connection"):
        tiny(resi_connection="2conv")
    with pytest.raises(ValueError, match="sf 4 or 8"):
        tiny(upsampler="nearest+conv", sf=2)
    with pytest.raises(ValueError, match="unshuffle"):
        tiny(upsampler="", unshuffle=True, unshuffle_scale=2)
    with pytest.raises(TypeError):
        tiny(upsampler="", not_a_key=1)


def test_bad_size_raises_and_padding_restores_size():
    model = tiny(upsampler="nearest+conv", sf=4, unshuffle=True, unshuffle_scale=4)  # multiple 4*4 = 16
    assert model.size_multiple == 16
    x = torch.rand(1, 3, 13, 10)
    with pytest.raises(ValueError, match=r"13x10.*multiple of 16"):
        model(x)
    model.pad_to_multiple = True
    with torch.no_grad():
        out = model(x)
        padded = model(torch.nn.functional.pad(x, (0, 6, 0, 3), mode="reflect"))
    assert out.shape == (1, 3, 13, 10)
    torch.testing.assert_close(out, padded[:, :, :13, :10], rtol=0, atol=1e-6)


def test_stored_mask_matches_recomputed():
    model = tiny(upsampler="", sf=1)
    keys = [k for k in model.state_dict() if k.endswith("attn_mask")]
    assert keys == ["layers.0.residual_group.blocks.1.attn_mask"]
    stored = model.state_dict()[keys[0]]
    assert stored.shape == (4, 16, 16) and set(stored.unique().tolist()) == {-100.0, 0.0}
    assert torch.equal(stored, shift_window_mask(8, 8, 4, 2))
    assert not shift_window_mask(8, 8, 4, 0).any()


def test_official_mask_buffers_match_recomputed(fixtures_dir):
    sd = torch.load(fixtures_dir / "swinir.pth", weights_only=True)
    masks = {k: v for k, v in sd.items() if k.endswith("attn_mask")}
    assert len(masks) == 2
    for v in masks.values():  # img_size 16, window 8, shift 4
        assert torch.equal(v, shift_window_mask(16, 16, 8, 4))


def test_on_the_fly_mask_equals_model_built_for_that_grid():
    """A 12x8 grid on an img_size-8 model must equal a model whose stored masks are for 12x8."""
    small, sized = tiny(upsampler="", sf=1), tiny(upsampler="", sf=1, img_size=(12, 8))
    weights = {k: v for k, v in small.state_dict().items() if not k.endswith("attn_mask")}
    sized.load_state_dict(weights, strict=False)
    x = torch.rand(1, 3, 12, 8)
    with torch.no_grad():
        torch.testing.assert_close(small(x), sized(x), rtol=0, atol=1e-6)


def test_small_img_size_drops_shift():
    """Official quirk: img_size <= window_size -> window shrinks to the grid, no shift, no masks."""
    model = tiny(upsampler="", sf=1, img_size=4, window_size=8)
    assert model.window_size == 4
    assert not any(k.endswith("attn_mask") for k in model.state_dict())
    table = model.state_dict()["layers.0.residual_group.blocks.1.attn.relative_position_bias_table"]
    assert table.shape == (49, 2)


def test_checkpointing_keeps_gradients():
    plain = tiny(upsampler="", sf=1, drop_path_rate=0.0).train()
    ckpt = tiny(upsampler="", sf=1, drop_path_rate=0.0, use_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, 8, 8)
    plain(x).square().mean().backward()
    ckpt(x).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_window_order_is_roll_and_partition_and_serves_autograd_after_inference():
    from models.swinir import window_order, window_partition, window_reverse
    x = torch.randn(2, 8, 12, 5)
    for shift in (0, 2):
        with torch.inference_mode():  # first built (and cached) under inference mode
            order, inverse = window_order(8, 12, 4, shift, torch.device("cpu"))
        rolled = torch.roll(x, (-shift, -shift), (1, 2)) if shift else x
        windows = window_partition(rolled, 4)
        assert torch.equal(x.view(2, 96, 5).index_select(1, order).view(-1, 16, 5), windows)
        back = window_reverse(windows, 4, 8, 12)
        back = torch.roll(back, (shift, shift), (1, 2)) if shift else back
        assert torch.equal(windows.view(2, 96, 5).index_select(1, inverse).view(2, 8, 12, 5), back)
        assert torch.equal(back, x)
        w = torch.randn(2, 96, 5, requires_grad=True)
        w.index_select(1, order).sum().backward()  # a cached inference tensor would raise here


@pytest.mark.parametrize("batch, hw", [(1, (16, 16)), (3, (16, 24))])
def test_cpu_inference_path_equals_the_autograd_path(batch, hw):
    """Without autograd on a CPU the linears run as 1x1 convolutions and attention as one matmul
    per head; with autograd (training) nn.Linear and SDPA run. Same numbers; shifted windows
    of several images (batch 3) take the repeated-bias branch."""
    model = tiny(img_size=16, depths=[2, 2], num_heads=[2, 4], embed_dim=16, upsampler="", sf=1)
    for p in model.parameters():  # no zero-initialised bias table: the bias must matter
        torch.nn.init.normal_(p, std=0.1)
    x = torch.rand(batch, 3, *hw)
    with torch.enable_grad():
        reference = model(x)
    assert reference.requires_grad
    with torch.inference_mode():
        fast = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    torch.testing.assert_close(fast, reference.detach(), atol=2e-6, rtol=1e-5)
    assert torch.isfinite(low).all() and (low.float() - reference).abs().max() < 0.1
