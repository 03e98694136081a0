"""The diffusion prior: the ADM / improved-diffusion UNet as DifFace modified it.

`UNetModel(x_t, t) -> tensor` knows nothing about diffusion: it maps a noisy image and the base
timestep to the raw network output (for the released models 6 channels: eps-hat then the
variance logits v). Parameter names, shapes and order equal the official ones, so the released
checkpoints load with `strict=True` (docs/method.md#unet-prior).

DifFace deviations from upstream improved-diffusion that are reproduced here:
  * `attention_resolutions` are absolute feature-map side lengths (a counter starts at
    `image_size` and halves at each downsample);
  * `num_res_blocks` may be a per-level list;
  * the output head's last conv is not zero-initialised.
Precision: `use_fp16` is accepted for config compatibility only and changes nothing. Choose the
precision with `torch.autocast` around the call. GroupNorm of float16 activations runs in float32
(as the official code); bfloat16 activations are normalised natively (the kernels accumulate the
statistics in float32, and bfloat16 has float32's range); the output is in the dtype of `x`.
Speed: the network runs in `torch.channels_last` memory format when its weights and input are
(`net.to(memory_format=torch.channels_last)`); every normalisation+SiLU pair and the residual
additions work in place on fresh tensors, which changes no value.
"""
import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

GROUPS = 32  # GroupNorm groups: every channel count must be a multiple of this


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, cosines first: [cos(t*f_k), sin(t*f_k)], f_k = max_period^(-k/half).

    timesteps: (B,) base steps 0..T-1, int or float (not rescaled). Returns (B, dim) float32,
    zero-padded by one column when `dim` is odd.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def qkv_attention(qkv: torch.Tensor, num_heads: int, legacy: bool = True) -> torch.Tensor:
    """Multi-head self-attention on a packed, token-major qkv tensor, computed with SDPA.

    qkv: (B, T, 3*H*C) for T tokens and H = num_heads heads of C channels. Legacy order
    (`legacy=True`, the released models): channels grouped as [head][q|k|v][C], i.e. heads are
    split before q/k/v. New order: [q|k|v][head][C]. The official code scales q and k by
    C^(-1/4) each, which equals SDPA's default 1/sqrt(C). Returns (B, T, H*C).
    q, k and v are strided views with unit channel stride, which the fused CPU/GPU kernels take
    without a copy (a channel-major layout would send SDPA to its slow reference path).
    """
    b, t, width = qkv.shape
    ch = width // (3 * num_heads)
    if legacy:
        q, k, v = qkv.view(b, t, num_heads, 3, ch).unbind(dim=3)
    else:
        q, k, v = qkv.view(b, t, 3, num_heads, ch).unbind(dim=2)
    q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (B, H, T, C)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, t, num_heads * ch)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32 groups, eps 1e-5) in x's dtype; float16 (and lower) is upcast to float32.

    Autocast is bypassed either way, so under bf16 autocast the activations are not copied to
    float32 and back around every normalisation. The result has x's dtype.
    """

    def __init__(self, channels: int):
        super().__init__(GROUPS, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float32, torch.float64, torch.bfloat16) and not torch.is_autocast_enabled(x.device.type):
            w, b = (self.weight, self.bias) if x.dtype == self.weight.dtype else \
                (self.weight.to(x.dtype), self.bias.to(x.dtype))
            return F.group_norm(x, self.num_groups, w, b, self.eps)
        dtype = x.dtype if x.dtype in (torch.float64, torch.bfloat16) else torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            y = F.group_norm(x.to(dtype), self.num_groups, self.weight.to(dtype), self.bias.to(dtype), self.eps)
        return y.to(x.dtype)


def norm_silu(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """SiLU(norm(x)); without autograd the SiLU works in place on the fresh normalised tensor (same values)."""
    return F.silu(norm(x), inplace=not torch.is_grad_enabled())


def zero_module(module: nn.Module) -> nn.Module:
    """Zero all parameters of `module` in place and return it."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class Upsample(nn.Module):
    """Nearest x2 upsampling, then a 3x3 conv when `use_conv` (key `conv`). (B,C,H,W) -> (B,C',2H,2W)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int = None):
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        elif out_channels != channels:
            raise ValueError("Upsample without conv cannot change the channel count")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class Downsample(nn.Module):
    """Stride-2 3x3 conv when `use_conv`, else 2x2 average pooling (key `op`). (B,C,H,W) -> (B,C',H/2,W/2)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int = None):
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        elif out_channels == channels:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)
        else:
            raise ValueError("Downsample without conv cannot change the channel count")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding, optionally resampling (up xor down).

    x: (B, channels, H, W), emb: (B, emb_channels). Returns (B, out_channels, H', W') with
    H' = 2H (up), H/2 (down) or H. With `use_scale_shift_norm` the embedding gives (scale, shift)
    applied after the second GroupNorm, otherwise it is added before it.
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int = None,
                 use_scale_shift_norm: bool = False, up: bool = False, down: bool = False,
                 use_checkpoint: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.resample = None  # parameter-free resampling of both branches (resblock_updown)
        if up:
            self.resample = Upsample(channels, use_conv=False)
        elif down:
            self.resample = Downsample(channels, use_conv=False)
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
                                        zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm_in, _, conv_in = self.in_layers
        norm_out, _, dropout, conv_out = self.out_layers
        h = norm_silu(norm_in, x)
        if self.resample is not None:  # resample between the activation and the conv, and on the skip path
            h, x = self.resample(h), self.resample(x)
        h = conv_in(h)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        inplace = not torch.is_grad_enabled()  # same values; in place only where autograd does not watch
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = norm_out(h)
            h = h.mul_(1 + scale).add_(shift) if inplace else h * (1 + scale) + shift
            h = F.silu(h, inplace=inplace)
        else:
            h = norm_silu(norm_out, h + emb_out)
        h = conv_out(dropout(h))
        skip = self.skip_connection(x)
        if inplace and h.dtype == skip.dtype and h.shape == skip.shape:
            return h.add_(skip)
        return skip + h


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual connection. (B, C, H, W) -> (B, C, H, W).

    Heads: C // num_head_channels when num_head_channels != -1, else num_heads.
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_new_attention_order: bool = False, use_checkpoint: bool = False):
        super().__init__()
        self.num_heads = _heads(channels, num_heads, num_head_channels)
        self.legacy = not use_new_attention_order
        self.use_checkpoint = use_checkpoint
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        # Token-major (B, T, C) throughout: for a channels_last x these are views, no copies.
        # The 1x1 Conv1d layers are applied as the linear maps they are (same parameters).
        b, c, height, width = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # GroupNorm of the image = of its tokens
        qkv = F.linear(h, self.qkv.weight.squeeze(-1), self.qkv.bias)
        h = qkv_attention(qkv, self.num_heads, self.legacy)
        h = F.linear(h, self.proj_out.weight.squeeze(-1), self.proj_out.bias)
        out = x.flatten(2).transpose(1, 2) + h  # (B, T, C)
        return out.transpose(1, 2).unflatten(2, (height, width))


def _heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    """Number of attention heads for `channels`, validated."""
    if num_head_channels == -1:
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must be >= 1 and divide the {channels} channels")
        return num_heads
    if num_head_channels < 1 or channels % num_head_channels:
        raise ValueError(f"num_head_channels={num_head_channels} must divide the {channels} channels "
                         "(or be -1 to use num_heads)")
    return channels // num_head_channels


class TimestepSequential(nn.Sequential):
    """nn.Sequential that passes the time embedding to the ResBlocks among its children."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


def _per_level(num_res_blocks: Union[int, Sequence[int]], levels: int) -> list:
    """num_res_blocks as a validated list with one positive int per level."""
    if isinstance(num_res_blocks, int):
        num_res_blocks = [num_res_blocks] * levels
    num_res_blocks = list(num_res_blocks)
    if len(num_res_blocks) != levels:
        raise ValueError(f"num_res_blocks={num_res_blocks} must be an int or have one entry per level "
                         f"of channel_mult ({levels} levels)")
    if not all(isinstance(n, int) and n >= 1 for n in num_res_blocks):
        raise ValueError(f"num_res_blocks={num_res_blocks} must hold positive ints")
    return num_res_blocks


class UNetModel(nn.Module):
    """ADM UNet with timestep conditioning (DifFace variant). Keyword names are the official ones.

    image_size: nominal side length; only used to place attention (`attention_resolutions` are
        feature-map side lengths counted from image_size, halving at each downsample).
    num_res_blocks: int, or one int per entry of `channel_mult`.
    num_heads / num_head_channels / num_heads_upsample: heads = C // num_head_channels unless that
        is -1; then num_heads in the encoder and middle block and, as in the official DifFace code
        (which builds decoder attention without passing a head count), 1 head in the decoder.
        num_heads_upsample is accepted for config compatibility and ignored.
    use_fp16: ignored (config compatibility); use torch.autocast. dims: only 2. num_classes: only None.
    use_checkpoint: gradient checkpointing of every ResBlock and AttentionBlock while grad is enabled.
    """

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: Union[int, Sequence[int]], attention_resolutions: Sequence[int],
                 dropout: float = 0.0, channel_mult: Sequence[int] = (1, 2, 4, 8), conv_resample: bool = True,
                 dims: int = 2, num_classes: int = None, use_checkpoint: bool = False, use_fp16: bool = False,
                 num_heads: int = 1, num_head_channels: int = -1, num_heads_upsample: int = -1,
                 use_scale_shift_norm: bool = False, resblock_updown: bool = False,
                 use_new_attention_order: bool = False):
        super().__init__()
        if dims != 2:
            raise ValueError(f"dims={dims} is not supported: only 2-D images (dims=2)")
        if num_classes is not None:
            raise ValueError(f"num_classes={num_classes} is not supported: only unconditional models (None)")
        bad = [model_channels * m for m in channel_mult if (model_channels * m) % GROUPS or m < 1]
        if not channel_mult or bad:
            raise ValueError(f"model_channels*channel_mult {bad} must be positive multiples of {GROUPS} "
                             f"(GroupNorm groups); channel_mult={list(channel_mult)}")
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.channel_mult = list(channel_mult)
        self.num_res_blocks = _per_level(num_res_blocks, len(channel_mult))
        self.attention_resolutions = [int(r) for r in attention_resolutions]
        self.use_fp16 = use_fp16  # documented no-op
        heads = dict(num_head_channels=num_head_channels, use_new_attention_order=use_new_attention_order,
                     use_checkpoint=use_checkpoint)
        res = dict(dropout=dropout, use_scale_shift_norm=use_scale_shift_norm, use_checkpoint=use_checkpoint)
        emb_ch = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))

        # Encoder: a stem conv, then per level res(+attn) blocks and a downsample (not after the last).
        ch = model_channels * channel_mult[0]
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_chans, ds = [ch], image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(self.num_res_blocks[level]):
                layers = [ResBlock(ch, emb_ch, out_channels=model_channels * mult, **res)]
                ch = model_channels * mult
                if ds in self.attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads=num_heads, **heads))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = (ResBlock(ch, emb_ch, down=True, **res) if resblock_updown
                        else Downsample(ch, conv_resample))
                self.input_blocks.append(TimestepSequential(down))
                skip_chans.append(ch)
                ds //= 2

        self.middle_block = TimestepSequential(
            ResBlock(ch, emb_ch, **res), AttentionBlock(ch, num_heads=num_heads, **heads), ResBlock(ch, emb_ch, **res))

        # Decoder: mirror of the encoder, one extra block per level, each eating one skip.
        up_heads = 1  # official DifFace: decoder attention keeps the default single head
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(self.num_res_blocks[level] + 1):
                layers = [ResBlock(ch + skip_chans.pop(), emb_ch, out_channels=model_channels * mult, **res)]
                ch = model_channels * mult
                if ds in self.attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads=up_heads, **heads))
                if level and i == self.num_res_blocks[level]:
                    layers.append(ResBlock(ch, emb_ch, up=True, **res) if resblock_updown
                                  else Upsample(ch, conv_resample))
                    ds *= 2
                self.output_blocks.append(TimestepSequential(*layers))
        assert not skip_chans

        # Output head; DifFace does not zero-initialise this conv (upstream does).
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Raw network output.

        x: (B, in_channels, H, W) float, model space (about [-1, 1] plus noise); H and W
            multiples of 2**(levels-1). timesteps: (B,) or scalar base steps 0..T-1, int or float.
        Returns (B, out_channels, H, W) in x's dtype (for the released models: eps-hat, then v).
        """
        timesteps = self._check_input(x, torch.as_tensor(timesteps, device=x.device).reshape(-1))
        emb = timestep_embedding(timesteps, self.model_channels).to(self.time_embed[0].weight.dtype)
        emb = self.time_embed(emb)
        skips, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop().to(h.dtype)], dim=1), emb)
        return self.out[2](norm_silu(self.out[0], h)).to(x.dtype)

    def _check_input(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Raise a ValueError for a wrong x shape or timestep count; return timesteps as (B,)."""
        factor = 2 ** (len(self.channel_mult) - 1)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected x of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"H and W must be multiples of {factor} for this UNet, got {tuple(x.shape[2:])}")
        if timesteps.numel() not in (1, x.shape[0]):
            raise ValueError(f"expected 1 or {x.shape[0]} timesteps, got {timesteps.numel()}")
        return timesteps.expand(x.shape[0])
