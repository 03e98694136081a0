"""Where and how the networks run: the device, the precision a device supports, memory format,
compilation and backend flags. One place each, for inference and training alike.

None of this changes what a network computes (channels_last and compilation give the same
values to float rounding; TF32 applies to CUDA matmuls/convolutions only). The autocast itself
(fp32 / bf16 / fp16) is applied in `models.difface`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
TRAIN_DEVICES = ("auto", "cpu", "cuda")  # the trainer (DDP, AMP) does not run on MPS
# torch.compile of the UNet in channels_last fails inside GroupNorm on torch 2.9 ("Expected
# X.is_contiguous(memory_format)"); it works on 2.14. Older versions compile the contiguous layout.
COMPILE_CHANNELS_LAST_FROM = "2.14"


class DeviceError(ValueError):
    """A device was asked for that this machine does not have."""


def pick_device(name: str, allowed: tuple[str, ...] = DEVICES) -> torch.device:
    """'auto' -> cuda, else mps, else cpu (among `allowed`); an unavailable or unknown device is
    a clear error. The one place a device name becomes a device (a CUDA index is the caller's:
    under torchrun, LOCAL_RANK)."""
    if name not in allowed:
        raise DeviceError(f"unknown device {name!r}; allowed: {', '.join(allowed)}")
    mps = "mps" in allowed and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device 'cuda' was asked for but no CUDA device is available")
    if name == "mps" and not mps:
        raise DeviceError("device 'mps' was asked for but MPS is not available")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> tuple[str, str | None]:
    """The network precision to use on `device`, and a note when it differs from `name`.

    Half precision on a CPU has no fast kernels (fp16 ran about 5x slower than fp32 on a 2-core
    AMD EPYC); bf16 is used on a CPU only where it has native bf16 instructions, and on CUDA only
    on GPUs with bf16 arithmetic (compute capability 8.0, Ampere, or newer: older ones such as
    the V100 or T4 only emulate it, slower than fp32).
    """
    if name == "fp16" and device.type == "cpu":
        return "fp32", "fp16 has no fast kernels on the CPU (about 5x slower); running in fp32"
    if name == "bf16" and device.type == "cpu":
        native = _cpu_has_bf16()
        if native is False:
            return "fp32", "this CPU has no native bf16 instructions (bf16 ran about 2x slower); running in fp32"
        if native is None:
            return name, "bf16 on a CPU without native bf16 instructions runs about 2x slower than fp32"
    if name == "bf16" and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
        return "fp32", "this GPU has no bf16 arithmetic (before compute capability 8.0); running in fp32"
    return name, None


def _cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether the CPU has native bf16 arithmetic (x86 AVX512-BF16/AMX, Arm BF16); None if unknown."""
    check = getattr(getattr(torch._C, "_cpu", None), "_is_avx512_bf16_supported", None)
    if check is not None:
        return bool(check())
    try:
        flags = set(Path(cpuinfo).read_text().replace(":", " ").split())
    except OSError:
        return None
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})




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
    nearest upsampling run in their fast layout; 4-D inputs need no conversion (with `compile`,
    from torch 2.14 only: see COMPILE_CHANNELS_LAST_FROM).
    compile: `torch.compile`; on CUDA with CUDA graphs (`mode="reduce-overhead"`). The first
    calls at a new input shape compile (minutes on a CPU): worth it for long runs only.
    """
    if channels_last and not (compile and torch.__version__ < COMPILE_CHANNELS_LAST_FROM):
        net = net.to(memory_format=torch.channels_last)
    if not compile:
        return net
    mode = "reduce-overhead" if device.type == "cuda" else None
    return torch.compile(net, mode=mode, dynamic=False)
