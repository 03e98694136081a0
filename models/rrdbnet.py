"""Real-ESRGAN's RRDBNet: background upsampler of the whole-image pipeline
(docs/method.md#whole-image-pipeline).

Parameter names follow BasicSR's ``RRDBNet`` so that the released ``RealESRGAN_x2plus.pth`` and
``RealESRGAN_x4plus.pth`` (key ``params_ema``) load strictly:
``conv_first``, ``body.N.rdb{1,2,3}.conv{1..5}``, ``conv_body``, ``conv_up1``, ``conv_up2``,
``conv_hr``, ``conv_last``. Loading the files is ``models/checkpoint.py``'s job.

The network always upsamples its (unshuffled) input by 4. For ``scale=2`` a pixel-unshuffle of 2
is put in front (3 -> 12 input channels), for ``scale=1`` one of 4 (3 -> 48), so the output is
``scale`` times the input size. Parameter counts with the released settings (num_feat 64,
num_block 23, num_grow_ch 32): x4plus 16,697,987, x2plus 16,703,171.

``upscale_tiled`` reproduces Real-ESRGAN's ``RealESRGANer.tile_process``: the image is cut into
non-overlapping ``tile``-pixel tiles, each run with ``tile_pad`` pixels of context around it,
and only the tile's own part of each output is kept.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; output = 0.2 * conv5 + input. (B, num_feat, H, W)."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        g = num_grow_ch
        self.conv1 = nn.Conv2d(num_feat, g, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + g, g, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * g, g, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * g, g, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * g, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three RDBs; output = 0.2 * rdb3(...) + input."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN generator as used by Real-ESRGAN.

    forward(x): x (B, num_in_ch, H, W), RGB [0,1] for the released weights, H and W divisible by
    4 // scale (2 for scale 2, 4 for scale 1) -> (B, num_out_ch, scale*H, scale*W), not clamped.
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4,
                 num_feat: int = 64, num_block: int = 23, num_grow_ch: int = 32):
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet scale must be 1, 2 or 4, got {scale!r}")
        self.scale = scale
        self.unshuffle = 4 // scale  # 1 means no pixel-unshuffle
        self.conv_first = nn.Conv2d(num_in_ch * self.unshuffle ** 2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)  # same channel order as BasicSR's helper
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


def realesrgan(scale: int = 2) -> RRDBNet:
    """The released Real-ESRGAN generator for ``RealESRGAN_x{scale}plus.pth`` (scale 2 or 4)."""
    if scale not in (2, 4):
        raise ValueError(f"released Real-ESRGAN weights exist for scale 2 or 4, got {scale!r}")
    return RRDBNet(3, 3, scale=scale, num_feat=64, num_block=23, num_grow_ch=32)


def _pad_to_multiple(img: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right to multiples of ``multiple`` (reflect; replicate if the image is tiny)."""
    h, w = img.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return img
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(img, (0, pw, 0, ph), mode=mode)


@torch.no_grad()
def upscale_tiled(model: nn.Module, img: torch.Tensor, scale: int,
                  tile: int = 400, tile_pad: int = 10) -> torch.Tensor:
    """Run an ``scale``-times upsampler tile by tile (Real-ESRGAN's ``tile_process``).

    Args:
        model: maps (1,3,h,w) -> (1,3,scale*h,scale*w); run in its own device and dtype.
        img: (1,3,H,W) float, RGB, [0,1], any device.
        scale: the model's upscale factor (1, 2 or 4).
        tile: tile side in input pixels; 0 runs the whole image at once.
        tile_pad: context pixels added around each tile (clipped at the image border).

    Returns:
        (1,3,scale*H,scale*W) float32 on ``img``'s device, clamped to [0,1].

    With ``tile_pad`` at least the network's receptive radius the result equals the untiled one
    up to float rounding; the released setting (tile 400, pad 10) is an approximation whose
    seams are invisible in practice.
    """
    if img.ndim != 4 or img.shape[:2] != (1, 3):
        raise ValueError(f"upscale_tiled expects a (1,3,H,W) tensor, got {tuple(img.shape)}")
    if scale not in (1, 2, 4):
        raise ValueError(f"scale must be 1, 2 or 4, got {scale!r}")
    multiple = 4 // scale
    if tile < 0 or tile_pad < 0 or tile % multiple or tile_pad % multiple:
        raise ValueError(f"tile ({tile}) and tile_pad ({tile_pad}) must be non-negative "
                         f"multiples of {multiple} for scale {scale}")
    param = next(model.parameters())
    h, w = img.shape[-2:]
    x = _pad_to_multiple(img, multiple)
    if tile == 0:
        out = model(x.to(param.device, param.dtype)).float().to(img.device)
    else:
        out = _tile_process(model, x, scale, tile, tile_pad, param)
    return out[..., : h * scale, : w * scale].clamp_(0, 1)


def _tile_process(model: nn.Module, x: torch.Tensor, scale: int, tile: int, tile_pad: int,
                  param: torch.Tensor) -> torch.Tensor:
    """Tiles of ``tile`` px with ``tile_pad`` px context; x (1,3,H,W), padded to a multiple."""
    _, c, h, w = x.shape
    out = torch.empty((1, c, h * scale, w * scale), dtype=torch.float32, device=x.device)
    for ty in range(math.ceil(h / tile)):
        for tx in range(math.ceil(w / tile)):
            y0, x0 = ty * tile, tx * tile
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            py0, px0 = max(y0 - tile_pad, 0), max(x0 - tile_pad, 0)
            py1, px1 = min(y1 + tile_pad, h), min(x1 + tile_pad, w)
            patch = x[..., py0:py1, px0:px1].to(param.device, param.dtype)
            res = model(patch).float().to(x.device)
            oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
            keep = res[..., oy: oy + (y1 - y0) * scale, ox: ox + (x1 - x0) * scale]
            out[..., y0 * scale: y1 * scale, x0 * scale: x1 * scale] = keep
    return out
