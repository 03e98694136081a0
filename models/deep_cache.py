"""Partial UNet evaluations that reuse deep features (DeepCache, Ma et al., CVPR 2024).

Along a reverse chain the UNet's deep, low-resolution features change slowly from one step to
the next, while the shallow, high-resolution blocks (where most of the arithmetic of a 512 px
UNet is) carry the fine detail. A *full* evaluation runs the whole network and also returns
the deep feature at a branch depth d; a *partial* evaluation runs only the shallow part and
takes the deep feature from the last full evaluation.

Branch depth d counts resolution levels from the finest (1 <= d <= L, L = len(channel_mult)).
A partial evaluation at depth d runs
  * the stem and the encoder blocks at the d finest resolutions (S, S/2, ..., S/2^(d-1)),
    without the downsample that leaves level d-1,
  * the decoder blocks that take those blocks' skips, and the output head;
the deep feature is what the first of these decoder blocks receives from below: the output of
the middle block and of every deeper decoder block, i.e. of level d's last decoder block
(after its upsample), shape (B, C_d, S/2^(d-1), S/2^(d-1)). At d = L only the middle block is
skipped. A partial evaluation with the deep feature of a full evaluation of the same (x, t)
gives that full evaluation's output.

`CachedUNet(unet, depth)` wraps a `models.unet.UNetModel` without changing it: the network's
own forward is untouched, and the full evaluation here runs the same blocks in the same order
(so it returns the same numbers). Which evaluations are full is the caller's choice
(`models.difface.SamplingConfig.full_evaluations`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .unet import UNetModel, norm_silu, timestep_embedding


def unwrap_compiled(net) -> tuple[object, bool]:
    """(network, compiled): the module inside a `torch.compile` wrapper, else `net` itself."""
    if isinstance(net, torch._dynamo.OptimizedModule):
        return net._orig_mod, True
    return net, False


def shallow_input_blocks(unet: UNetModel, depth: int) -> int:
    """How many of `unet.input_blocks` a partial evaluation at branch `depth` runs (the stem, the
    ResBlocks of the `depth` finest levels and the downsamples between them); the same number of
    decoder blocks, the last ones, take their skips."""
    levels = len(unet.channel_mult)
    if not isinstance(depth, int) or not 1 <= depth <= levels:
        raise ValueError(f"cache depth must be an integer in [1, {levels}] for a UNet with {levels} "
                         f"resolution levels, got {depth!r}")
    return 1 + sum(unet.num_res_blocks[:depth]) + (depth - 1)


class CachedUNet(nn.Module):
    """A UNetModel run fully (returning the deep feature too) or partially (from a given one).

    `self(x, t)` -> (out, deep): the full evaluation, `out` equal to `unet(x, t)`.
    `self(x, t, deep)` -> out: the partial evaluation from a deep feature of an earlier full one.
    x: (B, C, H, W) float, model space; t: (B,) or scalar base steps; out: (B, out_channels, H, W)
    in x's dtype; deep: (B, C_d, H/2^(depth-1), W/2^(depth-1)) in the network's activation dtype.
    """

    def __init__(self, unet: UNetModel, depth: int):
        super().__init__()
        if not isinstance(unet, UNetModel):
            raise TypeError(f"deep-feature caching needs the UNetModel prior itself (or its torch.compile "
                            f"wrapper), got {type(unet).__name__}")
        self.unet, self.depth = unet, depth
        self.shallow = shallow_input_blocks(unet, depth)

    def full(self, x: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self(x, timesteps)

    def partial(self, x: torch.Tensor, timesteps: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        return self(x, timesteps, deep)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, deep: torch.Tensor | None = None):
        unet = self.unet
        timesteps = unet._check_input(x, torch.as_tensor(timesteps, device=x.device).reshape(-1))
        emb = timestep_embedding(timesteps, unet.model_channels).to(unet.time_embed[0].weight.dtype)
        emb = unet.time_embed(emb)
        n_in, n_out = len(unet.input_blocks), len(unet.output_blocks)
        skips, h = [], x
        for block in unet.input_blocks[:n_in if deep is None else self.shallow]:
            h = block(h, emb)
            skips.append(h)
        if deep is None:  # the deep part: middle block and the decoder blocks below the branch
            h = unet.middle_block(h, emb)
            for block in unet.output_blocks[:n_out - self.shallow]:
                h = block(torch.cat([h, skips.pop().to(h.dtype)], dim=1), emb)
            new_deep = h
        else:
            if deep.shape[0] != x.shape[0] or deep.shape[2:] != skips[-1].shape[2:]:
                raise ValueError(f"cached deep feature of shape {tuple(deep.shape)} does not fit an input of "
                                 f"shape {tuple(x.shape)} at depth {self.depth}")
            h = deep.to(skips[-1].dtype)  # the dtype the deep part would give now (autocast or not)
        for block in unet.output_blocks[n_out - self.shallow:]:
            h = block(torch.cat([h, skips.pop().to(h.dtype)], dim=1), emb)
        out = unet.out[2](norm_silu(unet.out[0], h)).to(x.dtype)
        return (out, new_deep) if deep is None else out


def cached_unet(prior, depth: int, compile_fn: Callable[[nn.Module], Callable] | None = None) -> Callable:
    """What to call for cached evaluations of `prior` (a UNetModel, or one wrapped by torch.compile).

    For a compiled prior the wrapper is compiled too, by `compile_fn(module)`, so that full and
    partial evaluations run compiled (two graphs); `compile_fn` defaults to the project's
    compile settings for the network's device (`models.runtime.prepare_network`).
    """
    unet, compiled = unwrap_compiled(prior)
    net = CachedUNet(unet, depth)
    if not compiled:
        return net
    if compile_fn is None:
        from .runtime import prepare_network
        device = next(unet.parameters()).device
        compile_fn = lambda module: prepare_network(module, device, channels_last=False, compile=True)  # noqa: E731
    return compile_fn(net)


def evaluation_macs(params: dict, image_size: int, depths=()) -> dict:
    """Multiply-accumulates of one evaluation (batch 1, `image_size` square) of the UNetModel with
    hyper-parameters `params`: {None: full evaluation, d: partial evaluation at depth d}.

    Counted by `torch.utils.flop_counter` (convolutions, linear layers and attention matmuls;
    MACs = FLOPs / 2; normalisations and activations are not counted) on fake tensors: no weights
    are allocated and nothing is computed, so the paper's UNet-512 takes a few seconds.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    def macs(fn) -> int:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() // 2

    with FakeTensorMode(), torch.inference_mode():
        unet = UNetModel(**dict(params)).eval()
        x, t = torch.zeros(1, unet.in_channels, image_size, image_size), torch.zeros(1, dtype=torch.long)
        result = {None: macs(lambda: unet(x, t))}
        for depth in depths:
            net = CachedUNet(unet, depth)
            _, deep = net(x, t)
            result[depth] = macs(lambda: net(x, t, deep))
    return result
