"""SwinIR (Liang et al. 2021), the "diffused estimator" f of DifFace (docs/method.md#swinir-estimator).

`SwinIR(y) -> x0_hat`: an image-to-image network; it knows nothing about diffusion.
Parameter and buffer names follow the official class exactly, so the released weights load
with `strict=True` (including the persistent buffers `relative_position_index` and `attn_mask`).

Data flow (face model: unshuffle 8, window 8, nearest+conv x8):
(B,3,H,W) [0,1] -> minus RGB mean -> [PixelUnshuffle] -> conv_first -> tokens (B, h*w, C)
-> LayerNorm -> RSTBs (each: Swin blocks, conv, residual) -> LayerNorm -> conv_after_body
+ shallow features -> upsampler -> plus mean -> (B,3,H',W'), not clamped.

Official quirk kept on purpose (it decides the key set): if the token grid of `img_size` is not
larger than `window_size`, every block shrinks its window to that grid and drops the shift, so
no `attn_mask` buffers exist and the bias tables are smaller.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

RGB_MEAN = (0.4488, 0.4371, 0.4040)
UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect", "nearest+conv", "")
RESI_CONNECTIONS = ("1conv", "3conv")
MASK_VALUE = -100.0  # the official additive penalty between shifted regions

# --------------------------------------------------------------------------------------------
# Window helpers (tokens laid out as (B, H, W, C))
# --------------------------------------------------------------------------------------------


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/ws * W/ws, ws*ws, C); windows ordered batch-major, then row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B * nW, ws*ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def relative_position_index(ws: int, device=None) -> torch.Tensor:
    """(ws*ws, ws*ws) int64 index into the (2ws-1)^2 bias table: (dy + ws-1)*(2ws-1) + dx + ws-1."""
    ys, xs = torch.meshgrid(torch.arange(ws, device=device), torch.arange(ws, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + ws - 1
    dx = xs[:, None] - xs[None, :] + ws - 1
    return dy * (2 * ws - 1) + dx


def shift_window_mask(h: int, w: int, ws: int, shift: int, device=None) -> torch.Tensor:
    """Additive attention mask for shifted windows on an h x w token grid.

    Returns (nW, ws*ws, ws*ws) float32 with 0 inside a region and -100 between tokens that
    came from different regions of the cyclically shifted grid. With shift 0 it is all zeros.
    """
    region = torch.zeros(1, h, w, 1, device=device)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)) if shift > 0 else (slice(None),)
    label = 0
    for rows in cuts:
        for cols in cuts:
            region[:, rows, cols, :] = label
            label += 1
    ids = window_partition(region, ws).squeeze(-1)  # (nW, ws*ws)
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.where(diff != 0, MASK_VALUE, 0.0).to(torch.float32)


@functools.lru_cache(maxsize=64)
def window_order(h: int, w: int, ws: int, shift: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token permutations of an h x w grid: `order` lists the tokens of the grid cyclically shifted
    by -shift in `window_partition` order, `inverse` undoes it.

    `tokens[:, order]` is roll + window_partition in one gather, `windows[:, inverse]` is
    window_reverse + roll back: the same values, one copy instead of three or four.
    """
    with torch.inference_mode(False):  # cached: a tensor made in inference mode could not serve autograd
        grid = torch.arange(h * w, device=device).view(1, h, w, 1)
        if shift > 0:
            grid = torch.roll(grid, shifts=(-shift, -shift), dims=(1, 2))
        order = window_partition(grid, ws).flatten()
        return order, torch.argsort(order)


@functools.lru_cache(maxsize=16)
def _cached_shift_mask(h: int, w: int, ws: int, shift: int, device: torch.device) -> torch.Tensor:
    """`shift_window_mask` for token grids other than the img_size grid, cached per size and device."""
    return shift_window_mask(h, w, ws, shift, device=device)


# --------------------------------------------------------------------------------------------
# Transformer parts
# --------------------------------------------------------------------------------------------


class DropPath(nn.Module):
    """Stochastic depth: zero whole samples with probability p during training, rescale the rest."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    """Linear -> GELU -> Dropout -> Linear -> Dropout on (..., C) tokens."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(token_linear(self.fc2, self.drop(self.act(token_linear(self.fc1, x)))))


def _version(t: torch.Tensor | None) -> int | None:
    """In-place modification counter (None for None and for inference tensors, which have none)."""
    return None if t is None or t.is_inference() else t._version


def _cpu_inference(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and not torch.is_grad_enabled()


def token_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` for tokens (..., C). In CPU inference it runs as a 1x1 convolution over the tokens
    laid out channels-last (a view, no copy): oneDNN's convolution is faster here than the GEMM
    of nn.Linear (SwinIR-512 forward about 8% faster on a 2-core AMD EPYC), same values to rounding.
    """
    if not _cpu_inference(x):
        return layer(x)
    tokens = x.reshape(1, -1, 1, x.shape[-1]).permute(0, 3, 1, 2)  # (1, C, T, 1), channels-last
    out = F.conv2d(tokens, layer.weight.view(*layer.weight.shape, 1, 1), layer.bias)
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], out.shape[1])


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws x ws windows with a relative position bias."""

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        """(heads, N, N) bias gathered from the table, N = ws*ws."""
        n = self.window_size ** 2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def attention_bias(self, mask: torch.Tensor | None) -> torch.Tensor:
        """(1 or nW, heads, N, N): position bias plus the shift mask. Without autograd it is
        cached per mask tensor and table version (the sum is the same every call)."""
        if torch.is_grad_enabled() or self.training:
            self._bias_cache = None
            return self._attention_bias(mask)
        table = self.relative_position_bias_table
        key = (id(mask), _version(mask), _version(table), table.data_ptr(), table.dtype)
        cache = getattr(self, "_bias_cache", None)
        if cache is None or cache[0] != key or cache[2] is not mask:
            self._bias_cache = cache = (key, self._attention_bias(mask), mask)
        return cache[1]

    def _attention_bias(self, mask: torch.Tensor | None) -> torch.Tensor:
        bias = self.position_bias().unsqueeze(0)  # (1, heads, N, N)
        return bias if mask is None else bias + mask.unsqueeze(1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B*nW, N, C) window tokens; mask: (nW, N, N) additive or None. Returns (B*nW, N, C)."""
        bw, n, c = x.shape
        qkv = token_linear(self.qkv, x).view(bw, n, 3, self.num_heads, c // self.num_heads)
        bias = self.attention_bias(mask)  # (1 or nW, heads, N, N)
        if _cpu_inference(x):
            out = self._attend_per_head(qkv, bias)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            if bias.shape[0] > 1:
                bias = bias.expand(bw // bias.shape[0], -1, -1, -1, -1).reshape(bw, self.num_heads, n, n)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias.to(q.dtype), dropout_p=self.attn_drop if self.training else 0.0,
                scale=self.scale).transpose(1, 2)
        return self.proj_drop(token_linear(self.proj, out.reshape(bw, n, c)))

    def _attend_per_head(self, qkv: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """softmax(scale q k^T + bias) v, one batched matmul per head on strided views of `qkv`
        (bw, N, 3, heads, d): no copies of q, k, v, and the (N, N) bias of a head broadcasts over
        the windows. On a CPU this beats the fused SDPA kernel at N = 64, d = 30. Returns (bw, N, heads, d)."""
        bw = qkv.shape[0]
        outs = []
        for head in range(self.num_heads):
            q, k, v = qkv[:, :, 0, head], qkv[:, :, 1, head], qkv[:, :, 2, head]
            b = bias[:, head]
            if b.shape[0] not in (1, bw):  # shifted windows of several images
                b = b.repeat(bw // b.shape[0], 1, 1)
            scores = torch.baddbmm(b.to(q.dtype), q, k.transpose(1, 2), alpha=self.scale)
            outs.append(torch.bmm(scores.softmax(-1), v))
        return torch.stack(outs, 2)


class SwinTransformerBlock(nn.Module):
    """Pre-norm (shifted-)window attention + MLP on (B, H*W, C) tokens.

    `input_resolution` is the token grid of img_size; its mask is the persistent buffer
    `attn_mask` (only when shifted). Other grids get a mask computed on the fly.
    """

    def __init__(self, dim, input_resolution, num_heads, window_size=8, shift_size=0, mlp_ratio=2.0,
                 qkv_bias=True, qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0, norm_layer=nn.LayerNorm):
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        if min(self.input_resolution) <= window_size:  # official quirk, see module docstring
            window_size, shift_size = min(self.input_resolution), 0
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size {shift_size} must be in [0, window_size={window_size})")
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        mask = shift_window_mask(*self.input_resolution, window_size, shift_size) if shift_size > 0 else None
        self.register_buffer("attn_mask", mask)

    def mask_for(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor | None:
        """The (nW, N, N) shift mask for a token grid (h, w), or None for unshifted blocks."""
        if self.shift_size == 0:
            return None  # the official code builds an all-zero mask here: same result
        if tuple(grid) == self.input_resolution:
            return self.attn_mask
        return _cached_shift_mask(grid[0], grid[1], self.window_size, self.shift_size, torch.device(device))

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """x: (B, h*w, C) tokens on grid (h, w), both multiples of the window. Returns the same shape."""
        h, w = grid
        b, n, c = x.shape
        ws, s = self.window_size, self.shift_size
        mask = self.mask_for(grid, x.device)
        if not torch.is_grad_enabled():  # inference: roll + partition and back as one gather each
            orders = window_order.__wrapped__ if torch.compiler.is_compiling() else window_order  # traced: no cache
            order, inverse = orders(h, w, ws, s, x.device)
            windows = self.norm1(x).index_select(1, order).view(-1, ws * ws, c)
            y = self.attn(windows, mask).view(b, n, c).index_select(1, inverse)
        else:  # training: rolls and views (their backward is deterministic on every device)
            y = self.norm1(x).view(b, h, w, c)
            if s > 0:
                y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
            y = window_reverse(self.attn(window_partition(y, ws), mask), ws, h, w)
            if s > 0:
                y = torch.roll(y, shifts=(s, s), dims=(1, 2))
            y = y.reshape(b, n, c)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    """`depth` Swin blocks alternating shift 0 and window_size // 2."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, drop_path: Sequence[float],
                 use_checkpoint=False, **block_kw):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, input_resolution, num_heads, window_size,
                                 0 if i % 2 == 0 else window_size // 2, drop_path=drop_path[i], **block_kw)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        for blk in self.blocks:
            if self.use_checkpoint and self.training:
                x = checkpoint(blk, x, grid, use_reentrant=False)
            else:
                x = blk(x, grid)
        return x


def _conv_block(dim: int, resi_connection: str) -> nn.Module:
    """The 3x3 conv closing an RSTB / the body: '1conv', or the lighter '3conv' bottleneck."""
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    q = dim // 4
    return nn.Sequential(nn.Conv2d(dim, q, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(q, q, 1, 1, 0),
                         nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(q, dim, 3, 1, 1))


def tokens_to_image(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, C) -> (B, C, h, w)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], grid[0], grid[1])


def image_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C)."""
    return x.flatten(2).transpose(1, 2)


class RSTB(nn.Module):
    """Residual Swin Transformer Block: Swin blocks -> conv on the image -> + input. (B, h*w, C)."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, drop_path, resi_connection="1conv",
                 use_checkpoint=False, **block_kw):
        super().__init__()
        self.residual_group = BasicLayer(dim, input_resolution, depth, num_heads, window_size, drop_path,
                                         use_checkpoint, **block_kw)
        self.conv = _conv_block(dim, resi_connection)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return image_to_tokens(self.conv(tokens_to_image(self.residual_group(x, grid), grid))) + x


class PatchEmbed(nn.Module):
    """Image (B, C, h, w) -> tokens (B, h*w, C), optionally LayerNorm'ed (key `patch_embed.norm`)."""

    def __init__(self, dim: int, norm_layer: Callable[[int], nn.Module] | None):
        super().__init__()
        self.norm = norm_layer(dim) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(image_to_tokens(x))


# --------------------------------------------------------------------------------------------
# Upsamplers
# --------------------------------------------------------------------------------------------


def _pixelshuffle_upsample(scale: int, feat: int) -> nn.Sequential:
    """Keys `upsample.{0,2,...}`: (conv feat -> 4 feat, PixelShuffle 2) per x2, or one x3 stage."""
    if scale == 3:
        return nn.Sequential(nn.Conv2d(feat, 9 * feat, 3, 1, 1), nn.PixelShuffle(3))
    layers = []
    for _ in range(int(math.log2(scale))):
        layers += [nn.Conv2d(feat, 4 * feat, 3, 1, 1), nn.PixelShuffle(2)]
    return nn.Sequential(*layers)


def _check_config(upsampler, resi_connection, sf, unshuffle, unshuffle_scale, embed_dim, depths, num_heads):
    """Reject unsupported hyper-parameters before anything is built, naming the value and what is allowed."""
    if upsampler not in UPSAMPLERS:
        raise ValueError(f"unknown upsampler {upsampler!r}; allowed: {UPSAMPLERS}")
    if resi_connection not in RESI_CONNECTIONS:
        raise ValueError(f"unknown resi_connection {resi_connection!r}; allowed: {RESI_CONNECTIONS}")
    if upsampler == "nearest+conv" and sf not in (4, 8):
        raise ValueError(f"upsampler 'nearest+conv' supports sf 4 or 8, got {sf}")
    if upsampler == "pixelshuffle" and not (sf == 3 or (sf >= 1 and sf & (sf - 1) == 0)):
        raise ValueError(f"upsampler 'pixelshuffle' supports sf = 2^n or 3, got {sf}")
    if unshuffle and (not isinstance(unshuffle_scale, int) or unshuffle_scale < 1):
        raise ValueError(f"unshuffle=True needs a positive integer unshuffle_scale, got {unshuffle_scale!r}")
    if unshuffle and upsampler == "":
        raise ValueError("unshuffle=True needs an upsampler ('' adds the input back at token resolution)")
    if len(depths) != len(num_heads):
        raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} must have the same length")
    for h in num_heads:
        if embed_dim % h:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {h}")


class SwinIR(nn.Module):
    """SwinIR image restorer with the official hyper-parameter names (DifFace's variant with unshuffle).

    forward(x): x (B, in_chans, H, W), RGB in [0,1]; H, W multiples of `size_multiple`
    (= window_size * unshuffle_scale; 64 for the face model). Returns (B, in_chans, H*s, W*s) with
    s = sf / unshuffle_scale (sf alone without unshuffle, 1 for upsampler ''), not clamped.
    `pad_to_multiple=True` accepts any size: reflect-pad right/bottom, then crop the output back.
    """

    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=96, depths=(6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6), window_size=7, mlp_ratio=4.0, qkv_bias=True, qk_scale=None,
                 drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1, norm_layer=nn.LayerNorm, ape=False,
                 patch_norm=True, use_checkpoint=False, sf=4, img_range=1.0, upsampler="", resi_connection="1conv",
                 unshuffle=False, unshuffle_scale=None, pad_to_multiple=False):
        super().__init__()
        _check_config(upsampler, resi_connection, sf, unshuffle, unshuffle_scale, embed_dim, depths, num_heads)
        feat = 64  # channels of the reconstruction head (official num_feat)
        self.img_range, self.upscale, self.upsampler = img_range, sf, upsampler
        self.unshuffle_scale = unshuffle_scale if unshuffle else 1
        self.pad_to_multiple = pad_to_multiple
        mean = RGB_MEAN if in_chans == 3 else (0.0,)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)

        # 1. shallow features
        u = self.unshuffle_scale
        if unshuffle:
            self.conv_first = nn.Sequential(nn.PixelUnshuffle(u), nn.Conv2d(in_chans * u * u, embed_dim, 3, 1, 1))
        else:
            self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)

        # 2. deep features on the token grid of img_size
        res = tuple(s // patch_size for s in _pair(img_size))
        self.patches_resolution = res
        self.patch_embed = PatchEmbed(embed_dim, norm_layer if patch_norm else None)
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, res[0] * res[1], embed_dim)) if ape else None
        if ape:
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        n = sum(depths)
        dpr = [drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]  # torch.linspace(0, rate, n)
        block_kw = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                        attn_drop=attn_drop_rate, norm_layer=norm_layer)
        self.layers = nn.ModuleList(
            RSTB(embed_dim, res, d, h, window_size, dpr[sum(depths[:i]):sum(depths[:i + 1])], resi_connection,
                 use_checkpoint, **block_kw)
            for i, (d, h) in enumerate(zip(depths, num_heads))
        )
        self.window_size = self.layers[0].residual_group.blocks[0].window_size  # effective window
        self.norm = norm_layer(embed_dim)
        self.conv_after_body = _conv_block(embed_dim, resi_connection)

        # 3. reconstruction
        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.upsample = _pixelshuffle_upsample(sf, feat)
            self.conv_last = nn.Conv2d(feat, in_chans, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(nn.Conv2d(embed_dim, sf * sf * in_chans, 3, 1, 1), nn.PixelShuffle(sf))
        elif upsampler == "nearest+conv":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.conv_up1 = nn.Conv2d(feat, feat, 3, 1, 1)
            self.conv_up2 = nn.Conv2d(feat, feat, 3, 1, 1)
            if sf == 8:
                self.conv_up3 = nn.Conv2d(feat, feat, 3, 1, 1)
            self.conv_hr = nn.Conv2d(feat, feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(feat, in_chans, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        else:
            self.conv_last = nn.Conv2d(embed_dim, in_chans, 3, 1, 1)
        self.apply(_init_weights)

    @property
    def size_multiple(self) -> int:
        """Input H and W must be multiples of this (window_size * unshuffle_scale)."""
        return self.window_size * self.unshuffle_scale

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """Output (H', W') for an input of (h, w) pixels."""
        if self.upsampler == "":
            return h, w
        return h * self.upscale // self.unshuffle_scale, w * self.upscale // self.unshuffle_scale

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) shallow features -> (B, C, h, w) deep features (before conv_after_body)."""
        grid = (x.shape[2], x.shape[3])
        x = self.patch_embed(x)
        if self.absolute_pos_embed is not None:
            x = x + self.absolute_pos_embed
        x = self.pos_drop(x)
        for layer in self.layers:
            x = layer(x, grid)
        return tokens_to_image(self.norm(x), grid)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.size_multiple
        if h % m == 0 and w % m == 0:
            return x
        if not self.pad_to_multiple:
            raise ValueError(f"SwinIR input size {h}x{w} is not a multiple of {m} (window_size {self.window_size} "
                             f"x unshuffle_scale {self.unshuffle_scale}); resize it or set pad_to_multiple=True")
        return F.pad(x, (0, (-w) % m, 0, (-h) % m), mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_chans, H, W) RGB [0,1] -> (B, in_chans, *output_size(H, W)), not clamped."""
        h, w = x.shape[-2:]
        x = (self._pad(x) - self.mean) * self.img_range
        if self.upsampler == "":
            first = self.conv_first(x)
            x = x + self.conv_last(self.conv_after_body(self.forward_features(first)) + first)
        else:
            x = self.conv_first(x)
            x = self.conv_after_body(self.forward_features(x)) + x
            x = self._reconstruct(x)
        x = x / self.img_range + self.mean
        out_h, out_w = self.output_size(h, w)
        return x[:, :, :out_h, :out_w]

    def _reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Upsampling head: (B, embed_dim, h, w) features -> (B, in_chans, h*sf, w*sf) image (mean not yet added)."""
        if self.upsampler == "pixelshuffle":
            return self.conv_last(self.upsample(self.conv_before_upsample(x)))
        if self.upsampler == "pixelshuffledirect":
            return self.upsample(x)
        x = self.conv_before_upsample(x)
        ups = [self.conv_up1, self.conv_up2] + ([self.conv_up3] if self.upscale == 8 else [])
        for conv in ups:
            x = self.lrelu(conv(F.interpolate(x, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(x)))


def _init_weights(m: nn.Module) -> None:
    """Official init: Linear ~ truncated N(0, 0.02^2) with zero bias, LayerNorm (1, 0); convs default."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
