"""Masks that meet images: holes detected in a masked image, mask files (read, write, find), the
checks a user's mask must pass, and the estimator's masked input.

A mask marks the **hole** (unknown pixels) with 1 and known pixels with 0. Everything here uses
``(1, H, W)`` (or ``(B, 1, H, W)``) float32 torch tensors in {0, 1}, beside ``(3, H, W)`` RGB
[0, 1] images (the convention of ``datapipe/image_io.py``); :func:`mask_to_tensor` converts the
``HxW`` numpy masks of the generators (``datapipe/masks.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from .image_io import ImageReadError, PathLike, is_image_file


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """HxW numpy mask -> (1, H, W) float32 tensor (values kept)."""
    if mask.ndim != 2:
        raise ValueError(f"expected an HxW mask array, got shape {mask.shape}")
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]


# --------------------------------------------------------------------------------------------
# Detection in masked images ((3, H, W) RGB [0, 1] -> (1, H, W) {0, 1})
# --------------------------------------------------------------------------------------------

def _check_image(img: torch.Tensor) -> None:
    if not isinstance(img, torch.Tensor) or img.ndim not in (3, 4) or img.shape[-3] != 3:
        shape = tuple(img.shape) if hasattr(img, "shape") else type(img).__name__
        raise ValueError(f"expected a (3, H, W) or (B, 3, H, W) image tensor, got {shape}")


def detect_black_holes(img: torch.Tensor) -> torch.Tensor:
    """Official DifFace hole detection: hole where R + G + B == 0 exactly
    (docs/method.md#hole-detection).

    Args:
        img: (3, H, W) or (B, 3, H, W) float tensor, RGB, [0, 1] (before any normalisation).
    Returns:
        (1, H, W) or (B, 1, H, W) float32 mask, 1 = hole. Genuinely black pixels become holes
        too, and JPEG-compressed holes are not found: prefer a mask file.
    """
    _check_image(img)
    return (img.sum(dim=-3, keepdim=True) == 0).to(torch.float32)


def _white_mask(img: torch.Tensor, threshold: float, min_area: int, dilate: int) -> np.ndarray:
    white = (img.detach().cpu().float().amin(dim=0) >= threshold - 1e-6).numpy().astype(np.uint8)
    if min_area > 1 and white.any():
        count, labels, stats, _ = cv2.connectedComponentsWithStats(white, connectivity=8)
        keep = np.zeros(count, np.uint8)
        keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
        white = keep[labels]
    if dilate > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1))
        white = cv2.dilate(white, kernel)
    return white.astype(np.float32)


def detect_white_scribbles(img: torch.Tensor, threshold: float = 250 / 255, min_area: int = 64,
                           dilate: int = 0) -> torch.Tensor:
    """Holes painted as white strokes over the face (CodeFormer ``masked_faces`` style).

    Rule: a pixel is a hole when **all three channels are >= threshold** (default 250/255);
    connected white regions (8-connectivity) smaller than ``min_area`` px are dropped
    (isolated saturated highlights); the result is optionally dilated by ``dilate`` px (an
    elliptic kernel) to catch anti-aliased or JPEG-blurred stroke borders. In the CodeFormer
    examples the strokes are exact (255, 255, 255) with hard edges and form one large region,
    while the photos hold only 1-px specks >= 250 (a shirt collar), hence the defaults.
    Real white areas of a photo (white background, overexposed shirt) are taken as holes too:
    prefer a mask file when there is one.

    Args:
        img: (3, H, W) or (B, 3, H, W) float tensor, RGB, [0, 1].
    Returns:
        (1, H, W) or (B, 1, H, W) float32 mask on the image's device, 1 = hole.
    """
    _check_image(img)
    if img.ndim == 4:
        return torch.stack([detect_white_scribbles(x, threshold, min_area, dilate) for x in img])
    mask = mask_to_tensor(_white_mask(img, threshold, int(min_area), int(dilate)))
    return mask.to(img.device)


# --------------------------------------------------------------------------------------------
# Mask files, checks, application
# --------------------------------------------------------------------------------------------

class MaskError(ValueError):
    """A mask is unusable for its image; the message names the file (or image) and the reason."""

    def __init__(self, name: str, reason: str):
        self.name = str(name)
        self.reason = reason
        super().__init__(f"mask of '{name}': {reason}")


def _decode_mask(path: Path) -> np.ndarray:
    """Any mask file -> HxW float32 'whiteness' in [0, 1] (colour mean times alpha)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageReadError(path, err.strerror or str(err)) from None
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if arr is None or arr.size == 0:
        raise ImageReadError(path, "empty or not a readable image file")
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(arr.dtype, 1.0)
    arr = arr.astype(np.float32) / np.float32(scale)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    colour_channels = 1 if arr.shape[2] <= 2 else 3
    value = arr[:, :, :colour_channels].mean(axis=2)
    if arr.shape[2] in (2, 4):  # an alpha channel: transparent = known
        value = value * arr[:, :, -1]
    return value


def read_mask(path: PathLike, size: Sequence[int] | None = None) -> torch.Tensor:
    """Read a mask file: white = hole, black = known.

    Any bit depth (8/16-bit, float TIFF), grey or colour (the mean of the colour channels),
    with alpha (composited over black: transparent pixels are known). Binarised with
    ``value > 0.5``, then resized with NEAREST to ``size = (H, W)`` if given. No EXIF
    orientation is applied (masks are taken pixel for pixel).

    Returns:
        (1, H, W) float32 tensor in {0, 1}, 1 = hole.
    Raises:
        ImageReadError: missing, empty or undecodable file.
    """
    path = Path(path)
    mask = (_decode_mask(path) > 0.5).astype(np.float32)
    if size is not None:
        height, width = int(size[0]), int(size[1])
        if mask.shape != (height, width):
            mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return mask_to_tensor(mask)


def write_mask(path: PathLike, mask: torch.Tensor | np.ndarray) -> Path:
    """Write a mask as a single-channel 8-bit PNG, 255 = hole, 0 = known (parents created).

    Args:
        mask: (1, H, W) tensor or HxW numpy array, values in {0, 1} (> 0.5 = hole).
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"mask files are written as PNG, got '{path}'")
    arr = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    arr = arr[0] if arr.ndim == 3 and arr.shape[0] == 1 else arr
    if arr.ndim != 2:
        raise ValueError(f"expected a (1, H, W) or HxW mask, got shape {tuple(mask.shape)}")
    ok, encoded = cv2.imencode(".png", np.where(arr > 0.5, 255, 0).astype(np.uint8))
    if not ok:
        raise OSError(f"cannot encode mask '{path}'")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded.tobytes())
    return path


def find_mask(image_path: PathLike, mask_dir: PathLike) -> Path:
    """The mask file of an image: the one file in ``mask_dir`` with the image's stem and an
    image extension (``face.jpg`` -> ``face.png``). Raises MaskError if none or several."""
    image_path, mask_dir = Path(image_path), Path(mask_dir)
    stem = image_path.stem
    found = sorted(p for p in mask_dir.glob("*") if p.stem == stem and is_image_file(p) and p.is_file())
    if not found:
        raise MaskError(image_path, f"no mask file named '{stem}.<ext>' in '{mask_dir}'")
    if len(found) > 1:
        raise MaskError(image_path, f"several mask files match: {[p.name for p in found]}")
    return found[0]


def check_mask(mask: torch.Tensor | np.ndarray, image_shape: Sequence[int], name: str) -> float:
    """Check that ``mask`` is usable for an image of ``image_shape`` (last two entries H, W).

    Args:
        mask: (1, H, W) tensor or HxW numpy array, values in {0, 1}, 1 = hole.
        name: the file (or image) named in the error.
    Returns:
        The hole fraction, in (0, 1).
    Raises:
        MaskError: size differs from the image's, values other than 0/1, no hole, or all hole.
    """
    arr = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    height, width = int(image_shape[-2]), int(image_shape[-1])
    if arr.ndim != 2 or arr.shape != (height, width):
        raise MaskError(name, f"mask shape {tuple(mask.shape)} does not match the image size "
                              f"{height}x{width}")
    if not np.isin(arr, (0, 1)).all():
        raise MaskError(name, "mask values must be 0 (known) or 1 (hole)")
    fraction = float(arr.mean())
    if fraction == 0.0:
        raise MaskError(name, "the mask covers nothing (no hole pixels): nothing to inpaint")
    if fraction == 1.0:
        raise MaskError(name, "the mask covers the whole image: no known pixels to inpaint from")
    return fraction


def apply_mask(img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The estimator input: ``img * (1 - mask)``, hole pixels set exactly to 0.

    Args:
        img: (3, H, W) or (B, 3, H, W) float tensor, RGB, [0, 1].
        mask: (1, H, W) or (B, 1, H, W) float tensor in {0, 1}, 1 = hole.
    Returns:
        Tensor of ``img``'s shape.
    """
    _check_image(img)
    if mask.ndim != img.ndim or mask.shape[-3] != 1 or mask.shape[-2:] != img.shape[-2:]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not fit image shape {tuple(img.shape)}")
    return img * (1 - mask.to(img.dtype))
