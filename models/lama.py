"""LaMa's FFC-ResNet generator: the inpainting estimator of DifFace (docs/method.md#lama-estimator).

A Fast Fourier Convolution (FFC) layer keeps two branches of channels: a *local* branch handled by
ordinary 3x3 convolutions and a *global* branch whose main path is a convolution in the Fourier
domain (one 1x1 conv over the 2-D spectrum sees the whole image). The generator is

    ReflectionPad(3) -> FFC 7x7 -> n_downsampling strided FFCs -> n_blocks FFC ResNet blocks
    -> concat(local, global) -> n_downsampling x (ConvTranspose + BN + act) -> ReflectionPad(3)
    -> Conv 7x7 -> output activation

Attribute names and the ``model.N`` Sequential indices are the official ones, so the released
checkpoint loads with ``strict=True``. Branches absent for a given ratio are ``None`` here (the
official code passes an int ``0``); neither holds state, so the state_dict is identical.
"""
import copy
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

Tensor = torch.Tensor
Branches = Tuple[Tensor, Optional[Tensor]]  # (local, global); global is None when ratio_gout is 0

CONV_KWARGS = ("ratio_gin", "ratio_gout", "enable_lfu")
OUT_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


class FourierUnit(nn.Module):
    """Global 1x1 convolution on the 2-D real spectrum of a feature map.

    rfftn over (H, W) with ``norm='ortho'``; the real and imaginary parts are interleaved per channel
    (channel 2k = real part of input channel k, 2k+1 = imaginary part), mixed by a bias-free 1x1 conv
    + BatchNorm + ReLU, and transformed back to the input size. The FFTs always run in float32 (also
    under autocast or for a half-precision model); the result is cast back to the input dtype.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv_layer = nn.Conv2d(2 * in_channels, 2 * out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(2 * out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C_in, H, W) -> (B, C_out, H, W), same dtype as x."""
        b, _, h, w = x.shape
        spec = torch.fft.rfftn(x.float(), dim=(-2, -1), norm="ortho")  # (B, C, H, W//2+1) complex
        spec = torch.stack((spec.real, spec.imag), dim=2).flatten(1, 2)  # (B, 2C, H, W//2+1)
        spec = self.relu(self.bn(self.conv_layer(spec.to(x.dtype))))
        spec = spec.float().unflatten(1, (-1, 2))  # (B, C_out, 2, H, W//2+1)
        spec = torch.complex(spec[:, :, 0], spec[:, :, 1])
        out = torch.fft.irfftn(spec, s=(h, w), dim=(-2, -1), norm="ortho")
        return out.to(x.dtype)


class SpectralTransform(nn.Module):
    """The global-to-global path of an FFC: 1x1 reduce -> FourierUnit (+ local FU) -> 1x1 expand.

    With ``enable_lfu`` a second Fourier unit sees the first quarter of the channels folded into
    2x2 spatial quadrants (LaMa's "local Fourier unit"); its output is tiled back to full size. The
    official code folds the width by H//2, which only works for square maps; here the width is folded
    by W//2, identical for square inputs and also valid for non-square ones. H and W must be even.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 enable_lfu: bool = True):
        super().__init__()
        mid = out_channels // 2
        if enable_lfu and mid % 4:
            raise ValueError(f"enable_lfu needs half the global output channels ({mid}) "
                             "to be a multiple of 4")
        self.downsample = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.fu = FourierUnit(mid, mid)
        self.lfu = FourierUnit(mid, mid) if enable_lfu else None
        self.conv2 = nn.Conv2d(mid, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C_in, H, W) -> (B, C_out, H/stride, W/stride)."""
        x = self.conv1(self.downsample(x))
        out = x + self.fu(x)
        if self.lfu is not None:
            out = out + self._local_fourier(x)
        return self.conv2(out)

    def _local_fourier(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W); the quadrants of x[:, :C//4] are stacked as channels
        [TL, BL, TR, BR], transformed, and the (H/2, W/2) result tiled 2x2."""
        _, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"the local Fourier unit needs an even feature map size, got {h}x{w}")
        xs = torch.cat(torch.split(x[:, : c // 4], h // 2, dim=-2), dim=1)
        xs = torch.cat(torch.split(xs, w // 2, dim=-1), dim=1)
        return self.lfu(xs).repeat(1, 1, 2, 2)


def _conv_or_none(c_in: int, c_out: int, **kwargs) -> Optional[nn.Conv2d]:
    return nn.Conv2d(c_in, c_out, **kwargs) if c_in > 0 and c_out > 0 else None


class FFC(nn.Module):
    """Fast Fourier Convolution over (local, global) channel branches.

    ``local_out = convl2l(local) + convg2l(global)``, ``global_out = convl2g(local) + convg2g(global)``
    where the first three are bias-free spatial convs and ``convg2g`` a SpectralTransform. The split is
    ``int(channels * ratio)`` global channels, the rest local.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, ratio_gin: float,
                 ratio_gout: float, stride: int = 1, padding: int = 0, dilation: int = 1,
                 enable_lfu: bool = True, padding_type: str = "reflect"):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"FFC stride must be 1 or 2, got {stride}")
        in_cg = int(in_channels * ratio_gin)
        in_cl = in_channels - in_cg
        out_cg = int(out_channels * ratio_gout)
        out_cl = out_channels - out_cg
        conv = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                    bias=False, padding_mode=padding_type)
        self.convl2l = _conv_or_none(in_cl, out_cl, **conv)
        self.convl2g = _conv_or_none(in_cl, out_cg, **conv)
        self.convg2l = _conv_or_none(in_cg, out_cl, **conv)
        self.convg2g = (SpectralTransform(in_cg, out_cg, stride, enable_lfu)
                        if in_cg > 0 and out_cg > 0 else None)

    def forward(self, x: Union[Tensor, Branches]) -> Branches:
        """x: (B, C_in, H, W) or (local, global) -> (local, global), each (B, C_branch, H', W');
        a branch is None when it has no channels."""
        x_l, x_g = x if isinstance(x, tuple) else (x, None)
        out_l = _sum(_apply(self.convl2l, x_l), _apply(self.convg2l, x_g))
        out_g = _sum(_apply(self.convl2g, x_l), _apply(self.convg2g, x_g))
        return out_l, out_g


def _apply(module: Optional[nn.Module], x: Optional[Tensor]) -> Optional[Tensor]:
    return None if module is None or x is None else module(x)


def _sum(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    if a is None or b is None:
        return b if a is None else a
    return a + b


class FFC_BN_ACT(nn.Module):
    """FFC followed by norm + activation applied per branch (``bn_l``/``bn_g``); absent branches skip."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, ratio_gin: float = 0.0,
                 ratio_gout: float = 0.0, stride: int = 1, padding: int = 0, dilation: int = 1,
                 norm_layer=nn.BatchNorm2d, activation_layer=nn.Identity, padding_type: str = "reflect",
                 enable_lfu: bool = True):
        super().__init__()
        self.ffc = FFC(in_channels, out_channels, kernel_size, ratio_gin, ratio_gout, stride, padding,
                       dilation, enable_lfu, padding_type)
        out_cg = int(out_channels * ratio_gout)
        out_cl = out_channels - out_cg
        self.bn_l = norm_layer(out_cl) if out_cl > 0 else None
        self.bn_g = norm_layer(out_cg) if out_cg > 0 else None
        self.act_l = activation_layer(inplace=True) if out_cl > 0 else None
        self.act_g = activation_layer(inplace=True) if out_cg > 0 else None

    def forward(self, x: Union[Tensor, Branches]) -> Branches:
        """x: (B, C_in, H, W) or (local, global) -> (local, global)."""
        x_l, x_g = self.ffc(x)
        x_l = _apply(self.act_l, _apply(self.bn_l, x_l))
        x_g = _apply(self.act_g, _apply(self.bn_g, x_g))
        return x_l, x_g


class FFCResnetBlock(nn.Module):
    """Two 3x3 FFC-BN-act layers; the identity is added to each branch separately, no final activation."""

    def __init__(self, dim: int, padding_type: str, norm_layer, activation_layer=nn.ReLU,
                 dilation: int = 1, **conv_kwargs):
        super().__init__()
        layer = dict(kernel_size=3, padding=dilation, dilation=dilation, norm_layer=norm_layer,
                     activation_layer=activation_layer, padding_type=padding_type, **conv_kwargs)
        self.conv1 = FFC_BN_ACT(dim, dim, **layer)
        self.conv2 = FFC_BN_ACT(dim, dim, **layer)

    def forward(self, x: Union[Tensor, Branches]) -> Branches:
        """x: (local, global) with C_local + C_global = dim -> same shapes."""
        id_l, id_g = x if isinstance(x, tuple) else (x, None)
        x_l, x_g = self.conv2(self.conv1((id_l, id_g)))
        return _sum(id_l, x_l), _sum(id_g, x_g)


class ConcatTupleLayer(nn.Module):
    """(local, global) -> (B, C_local + C_global, H, W); just local when there is no global branch."""

    def forward(self, x: Branches) -> Tensor:
        x_l, x_g = x
        return x_l if x_g is None else torch.cat((x_l, x_g), dim=1)


def _check_conv_kwargs(name: str, kwargs: dict) -> dict:
    unknown = sorted(set(kwargs) - set(CONV_KWARGS))
    if unknown:
        raise ValueError(f"{name}: unsupported key(s) {unknown}; allowed: {list(CONV_KWARGS)}")
    for key in ("ratio_gin", "ratio_gout"):
        if not 0 <= kwargs.get(key, 0) <= 1:
            raise ValueError(f"{name}.{key} must lie in [0, 1], got {kwargs[key]}")
    return dict(kwargs)


def _out_activation(add_out_act) -> Optional[nn.Module]:
    if add_out_act is False or add_out_act is None:
        return None
    name = "tanh" if add_out_act is True else add_out_act
    if name not in OUT_ACTIVATIONS:
        raise ValueError(f"add_out_act={add_out_act!r} is not supported; allowed: True (tanh), "
                         f"False, {sorted(OUT_ACTIVATIONS)}")
    return OUT_ACTIVATIONS[name]()


class FFCResNetGenerator(nn.Module):
    """LaMa FFC-ResNet generator with the official constructor arguments and parameter names.

    Only the options DifFace uses are implemented: no learnable spatial transforms
    (``spatial_transform_layers`` must be None) and no output FFC block (``out_ffc`` must be False).
    ``add_out_act``: True means tanh (as in the official code), 'sigmoid', 'tanh' or False.
    """

    def __init__(self, input_nc: int, output_nc: int, ngf: int = 64, n_downsampling: int = 3,
                 n_blocks: int = 9, norm_layer=nn.BatchNorm2d, padding_type: str = "reflect",
                 activation_layer=nn.ReLU, up_norm_layer=nn.BatchNorm2d, up_activation=nn.ReLU(True),
                 init_conv_kwargs: Optional[dict] = None, downsample_conv_kwargs: Optional[dict] = None,
                 resnet_conv_kwargs: Optional[dict] = None,
                 spatial_transform_layers: Optional[Sequence[int]] = None,
                 spatial_transform_kwargs: Optional[dict] = None, add_out_act=True,
                 max_features: int = 1024, out_ffc: bool = False, out_ffc_kwargs: Optional[dict] = None):
        super().__init__()
        if spatial_transform_layers is not None:
            raise ValueError(f"spatial_transform_layers={spatial_transform_layers!r} is not supported; "
                             "only None (no learnable spatial transform)")
        if out_ffc:
            raise ValueError(f"out_ffc={out_ffc!r} is not supported; only False")
        if n_downsampling < 1:
            raise ValueError(f"n_downsampling must be >= 1, got {n_downsampling}")
        init_kw = _check_conv_kwargs("init_conv_kwargs", init_conv_kwargs or {})
        down_kw = _check_conv_kwargs("downsample_conv_kwargs", downsample_conv_kwargs or {})
        res_kw = _check_conv_kwargs("resnet_conv_kwargs", resnet_conv_kwargs or {})
        out_act = _out_activation(add_out_act)
        self.input_nc, self.n_downsampling = input_nc, n_downsampling

        def feats(n: float) -> int:
            return min(max_features, int(n))

        model = [nn.ReflectionPad2d(3),
                 FFC_BN_ACT(input_nc, ngf, 7, norm_layer=norm_layer, activation_layer=activation_layer,
                            **init_kw)]
        for i in range(n_downsampling):
            kw = dict(down_kw)
            if i == n_downsampling - 1:  # the bottleneck starts with resnet's local/global split
                kw["ratio_gout"] = res_kw.get("ratio_gin", 0)
            model.append(FFC_BN_ACT(feats(ngf * 2 ** i), feats(ngf * 2 ** (i + 1)), 3, stride=2,
                                    padding=1, norm_layer=norm_layer, activation_layer=activation_layer,
                                    **kw))
        dim = feats(ngf * 2 ** n_downsampling)
        model += [FFCResnetBlock(dim, padding_type, norm_layer, activation_layer, **res_kw)
                  for _ in range(n_blocks)]
        model.append(ConcatTupleLayer())
        for i in range(n_downsampling):
            mult = 2 ** (n_downsampling - i)
            model += [nn.ConvTranspose2d(feats(ngf * mult), feats(ngf * mult / 2), 3, stride=2,
                                         padding=1, output_padding=1),
                      up_norm_layer(feats(ngf * mult / 2)), copy.deepcopy(up_activation)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7)]
        if out_act is not None:
            model.append(out_act)
        self.model = nn.Sequential(*model)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, input_nc, H, W) -> (B, output_nc, H, W).

        For inpainting x is concat(RGB image in [0,1] with zeros in the hole, mask with 1 = hole);
        with ``add_out_act='sigmoid'`` the output is RGB in [0,1]. H and W must be multiples of
        2**n_downsampling.
        """
        if x.ndim != 4 or x.shape[1] != self.input_nc:
            raise ValueError(f"expected input of shape (B, {self.input_nc}, H, W), got {tuple(x.shape)}")
        step = 2 ** self.n_downsampling
        if x.shape[-2] % step or x.shape[-1] % step:
            raise ValueError(f"H and W must be multiples of {step} (2**n_downsampling), "
                             f"got {tuple(x.shape[-2:])}")
        return self.model(x)
