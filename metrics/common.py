"""What every metric shares: the error for missing weights, the result type, input checks.

Image convention of this package: a metric sees images the way the benchmark tools of the
field do, as ``numpy.uint8`` arrays of shape ``(H, W, 3)``, RGB, values ``[0, 255]``.
Conversions from the code-wide tensor convention happen in ``scripts/evaluate.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from datapipe import image_io


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (missing weight file, unsupported option).

    The message says which file is needed and where to put it; a metric never falls back
    to random or substitute weights silently.
    """


@dataclass(frozen=True)
class Measurement:
    """One per-image result: the number and a short note (e.g. how the face box was found)."""
    value: float
    note: str = ""


def check_image(img: np.ndarray, what: str = "image") -> np.ndarray:
    """Check that ``img`` is a ``(H, W, 3)`` uint8 RGB array; return it unchanged."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        desc = f"{type(img).__name__} {getattr(img, 'dtype', '')} {getattr(img, 'shape', '')}"
        raise ValueError(f"{what} must be a (H, W, 3) uint8 RGB numpy array, got {desc}")
    return img


def check_pair(restored: np.ndarray, gt: np.ndarray) -> None:
    """Check both images and that their sizes agree (resize before calling a metric)."""
    check_image(restored, "restored")
    check_image(gt, "gt")
    if restored.shape != gt.shape:
        raise ValueError(f"restored {restored.shape} and gt {gt.shape} differ in size; "
                         "resize the restored image to the gt size first")


def hub_checkpoint(filename: str) -> Path:
    """Where torchvision / torch.hub keep ``filename``: ``<torch.hub.get_dir()>/checkpoints/``.

    ``torch.hub.get_dir()`` is ``$TORCH_HOME/hub`` (default ``~/.cache/torch/hub``).
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def require_file(path: Path, what: str, source: str) -> Path:
    """Return ``path`` if it is a file, else raise ``MetricUnavailable`` saying how to get it."""
    path = Path(path)
    if not path.is_file():
        raise MetricUnavailable(
            f"{what} needs the weight file '{path.name}', not found at {path}. "
            f"Download it from {source} and put it there (or set TORCH_HOME so that "
            f"<TORCH_HOME>/hub/checkpoints/{path.name} exists). Nothing is downloaded automatically.")
    return path


def uint8_to_tensor(img: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB -> ``(1, 3, H, W)`` float32 in ``[0, 1]`` on ``device``."""
    return image_io.uint8_to_tensor(check_image(img))[None].to(device)


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (``datapipe.image_io`` rules)."""
    return image_io.list_images(folder)


def read_rgb_uint8(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB (8-bit samples exact, 16-bit rounded),
    with the project's reader (grey, alpha, 16-bit, EXIF, clear errors)."""
    return np.ascontiguousarray(image_io.read_image_uint8_bgr(path)[:, :, ::-1])
