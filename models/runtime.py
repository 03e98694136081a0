"""How the networks run: memory format, compilation and backend flags for inference.

None of this changes what a network computes (channels_last and compilation give the same
values to float rounding; TF32 applies to CUDA matmuls/convolutions only). Precision itself
(fp32 / bf16 / fp16 autocast) is chosen in `models.difface`.
"""
from __future__ import annotations

from typing import Callable

import torch


def configure_backends(device: torch.device) -> None:
    """CUDA: TF32 matmuls and convolutions, cuDNN autotuning (fixed input sizes). No effect on CPU."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def prepare_network(net: torch.nn.Module, device: torch.device, channels_last: bool = True,
                    compile: bool = False) -> Callable:
    """`net` (frozen, eval mode) laid out for fast inference on `device`; returns what to call.

    channels_last: weights in NHWC order, so convolutions (oneDNN on CPU, cuDNN on GPU) and
    nearest upsampling run in their fast layout; 4-D inputs need no conversion.
    compile: `torch.compile`; on CUDA with CUDA graphs (`mode="reduce-overhead"`). The first
    calls at a new input shape compile (minutes on a CPU): worth it for long runs only.
    """
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if not compile:
        return net
    mode = "reduce-overhead" if device.type == "cuda" else None
    return torch.compile(net, mode=mode, dynamic=False)
