"""Reading, writing and converting images: the one place where image conventions meet.

Inside the code an image is a ``torch.float32`` tensor, RGB, values in ``[0, 1]``, shape
``(3, H, W)`` (or ``(B, 3, H, W)`` for a batch). Everything else - BGR, uint8, uint16, grey,
alpha, EXIF orientation, file formats - is converted here and nowhere else.

Reading rules (docs/method.md#image-reading, with the official bugs fixed):

* 8-bit images are divided by 255, 16-bit images by 65535 (the official code divided by 255).
* Grey images are replicated to three channels.
* An alpha channel is dropped (no compositing), with a warning naming the file when some pixel
  is not fully opaque (checked at 8-bit precision); a fully opaque alpha channel goes unmentioned.
* The EXIF orientation tag is applied (JPEG, PNG, TIFF, WebP), as image viewers do.
* Missing, unreadable, empty, truncated and non-image files raise :class:`ImageReadError`
  whose message names the file and the reason.
* A truncated file is found from its bytes (:mod:`datapipe.image_bytes`) and never decoded:
  a 1.6 KB JPEG claiming 6000x6000 px would otherwise decode to 36 megapixels of grey.
* With ``max_pixels``, the size is read from the file header and a larger image (e.g. a
  decompression bomb: a small PNG of 16000x16000 px) is refused before it is decoded.
* A GIF gives its first frame; an animated one with a warning saying how many frames it has.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Union

import cv2
import numpy as np
import torch
from PIL import Image

from .image_bytes import header_size, image_size, sniff_format, truncation  # noqa: F401 (image_size: re-exported)

PathLike = Union[str, os.PathLike]

WRITE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
IMAGE_EXTENSIONS = WRITE_EXTENSIONS + (".gif",)  # read (first frame), never written
GREY_TOLERANCE = 3 / 255  # largest channel spread of an image that counts as grey (JPEG rounding)

# Decode with OpenCV keeping 16-bit samples; OpenCV applies the EXIF orientation and drops
# alpha for these flags (IMREAD_UNCHANGED would skip the orientation).
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


class ImageReadError(Exception):
    """A file could not be read as an image; the message names the file and the reason."""

    def __init__(self, path: PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image '{path}': {reason}")


class ImageWriteError(Exception):
    """An image could not be encoded or written; the message names the file and the reason."""

    def __init__(self, path: PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot write image '{path}': {reason}")


def is_image_file(path: PathLike) -> bool:
    """True if the file name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def _read_bytes(path: Path) -> bytes:
    """Whole file content; OS problems become :class:`ImageReadError` with a plain reason."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory, not a file") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied") from None
    except OSError as err:
        raise ImageReadError(path, f"OS error: {err.strerror or err}") from None
    if not data:
        raise ImageReadError(path, "file is empty (0 bytes)")
    return data


def _alpha_in_use(data: bytes, img: np.ndarray) -> bool:
    """Whether some pixel is not fully opaque: the decoded alpha channel of ``img`` (HxWx2 or
    HxWx4) if OpenCV kept one, else the file's alpha or palette transparency as PIL reads it
    (8-bit precision). False when there is no alpha or PIL does not know the format."""
    if img.shape[2] in (2, 4):
        alpha = img[:, :, -1]
        return bool(alpha.min() < (1.0 if alpha.dtype == np.float32 else np.iinfo(alpha.dtype).max))
    try:
        with Image.open(io.BytesIO(data)) as im:
            if "A" in im.getbands():
                return im.getchannel("A").getextrema()[0] < 255
            if "transparency" in im.info:
                return im.convert("RGBA").getchannel("A").getextrema()[0] < 255
    except Exception:  # PIL may not know a format OpenCV decodes; then we cannot tell.
        pass
    return False


def _check_pixels(path: Path, data: bytes, max_pixels: float | None) -> None:
    size = header_size(data) if max_pixels else None
    if size is not None and size[0] * size[1] > max_pixels:
        w, h = size
        shape = f"{w}x{h} = " if h > 1 else ""
        raise ImageReadError(path, f"image is {shape}{w * h / 1e6:.1f} megapixels, above the limit of "
                                   f"{max_pixels / 1e6:.1f} (raise it with --max-pixels); not decoded")


def _decode_gif(path: Path, data: bytes) -> np.ndarray:
    """First frame of a GIF as HxWx3 uint8 BGR; an animation is reported."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            frames = getattr(im, "n_frames", 1)
            rgb = np.asarray(im.convert("RGB"))
    except Exception as err:
        raise ImageReadError(path, f"corrupt or truncated GIF data ({type(err).__name__})") from None
    if frames > 1:
        warnings.warn(f"image '{path}' is an animated GIF with {frames} frames; only the first is used",
                      stacklevel=3)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _decode(path: PathLike, max_pixels: float | None = None) -> np.ndarray:
    """Decode a file to HxWx3 BGR in its native sample type (uint8, uint16 or float32).

    EXIF orientation applied, grey replicated, alpha dropped with a warning. With
    ``max_pixels``, larger images are refused from their header, before decoding.
    """
    path = Path(path)
    data = _read_bytes(path)
    fmt = sniff_format(data)
    if reason := truncation(data, fmt):
        raise ImageReadError(path, f"{reason}; not decoded")
    _check_pixels(path, data, max_pixels)
    if fmt == "GIF":
        return _decode_gif(path, data)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), _DECODE_FLAGS)
    if img is None or img.size == 0:
        if fmt is None:
            raise ImageReadError(path, "not an image file (unrecognised content)")
        raise ImageReadError(path, f"corrupt or truncated {fmt} data")
    if img.dtype not in (np.uint8, np.uint16, np.float32):
        raise ImageReadError(path, f"unsupported sample type {img.dtype} (use 8- or 16-bit images)")
    if img.ndim == 2:
        img = img[:, :, None]
    if _alpha_in_use(data, img):
        warnings.warn(f"image '{path}' has transparent pixels; the alpha channel is dropped (no compositing)",
                      stacklevel=3)
    img = img[:, :, :1] if img.shape[2] == 2 else img[:, :, :3]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img)


def _to_unit_float(img: np.ndarray) -> np.ndarray:
    """uint8 / uint16 / float32 array -> float32 in [0, 1] (same layout)."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    return np.clip(np.nan_to_num(img.astype(np.float32)), 0.0, 1.0)


def read_image(path: PathLike, max_pixels: float | None = None) -> torch.Tensor:
    """Read an image file; with ``max_pixels``, a larger one is refused from its header.

    Returns:
        (3, H, W) float32 tensor, RGB, values in [0, 1] (8-bit / 255, 16-bit / 65535;
        float TIFFs are taken as they are, clipped to [0, 1]).
    Raises:
        ImageReadError: missing, unreadable, empty, truncated, too large or non-image file.
    """
    img = _to_unit_float(_decode(path, max_pixels))
    return torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1)))


def read_image_uint8_bgr(path: PathLike) -> np.ndarray:
    """Read an image file for OpenCV pipelines (e.g. face detection in whole-image mode).

    Returns:
        HxWx3 uint8 numpy array, **BGR**; 16-bit images are rounded to 8 bits.
    Raises:
        ImageReadError: as :func:`read_image`.
    """
    img = _decode(path)
    if img.dtype == np.uint8:
        return img
    unit = _to_unit_float(img)
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------

def is_grey(img: torch.Tensor) -> bool:
    """True when a (3, H, W) RGB image has equal channels (up to :data:`GREY_TOLERANCE`)."""
    _check_chw(img)
    return bool((img.amax(0) - img.amin(0)).max() <= GREY_TOLERANCE)


def to_grey(img: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB -> the same shape with every channel the Rec. 601 luma of the pixel."""
    luma = 0.299 * img[..., 0:1, :, :] + 0.587 * img[..., 1:2, :, :] + 0.114 * img[..., 2:3, :, :]
    return luma.expand_as(img).contiguous()


def _check_uint8_hwc(arr: np.ndarray) -> None:
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        desc = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise ValueError(f"expected an HxWx3 uint8 array, got {desc}")


def _check_chw(img: torch.Tensor) -> None:
    if not isinstance(img, torch.Tensor) or img.ndim != 3 or img.shape[0] != 3:
        shape = tuple(img.shape) if hasattr(img, "shape") else type(img).__name__
        raise ValueError(f"expected a (3, H, W) image tensor, got {shape}")


def tensor_to_uint8(img: torch.Tensor, bgr: bool = False) -> np.ndarray:
    """(3, H, W) float tensor, RGB, [0, 1] -> HxWx3 uint8 numpy array (RGB, or BGR if ``bgr``).

    Values are clamped to [0, 1], multiplied by 255 and rounded half to even (as ``np.rint``);
    NaN becomes 0.
    """
    _check_chw(img)
    arr = img.detach().to("cpu", torch.float32).numpy().transpose(1, 2, 0)
    arr = np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0)
    out = np.rint(arr * np.float32(255.0)).astype(np.uint8)
    return np.ascontiguousarray(out[:, :, ::-1] if bgr else out)


def uint8_to_tensor(arr: np.ndarray, bgr: bool = False) -> torch.Tensor:
    """HxWx3 uint8 numpy array (RGB, or BGR if ``bgr``) -> (3, H, W) float32 tensor, RGB, [0, 1]."""
    _check_uint8_hwc(arr)
    return hwc_to_tensor(arr.astype(np.float32) / 255.0, bgr=bgr)


def hwc_to_tensor(arr: np.ndarray, bgr: bool = False) -> torch.Tensor:
    """HxWx3 float numpy array in [0, 1] (RGB, or BGR if ``bgr``) -> (3, H, W) float32 tensor, RGB.

    No clamping or rounding: the values are kept as they are.
    """
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 array, got shape {arr.shape}")
    rgb = arr[:, :, ::-1] if bgr else arr
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32))


def tensor_to_hwc(img: torch.Tensor, bgr: bool = False) -> np.ndarray:
    """(3, H, W) float tensor, RGB -> HxWx3 float32 numpy array (RGB, or BGR if ``bgr``), values kept."""
    _check_chw(img)
    arr = img.detach().to("cpu", torch.float32).numpy().transpose(1, 2, 0)
    return np.ascontiguousarray(arr[:, :, ::-1] if bgr else arr)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def write_image(path: PathLike, img: torch.Tensor | np.ndarray, jpeg_quality: int = 95) -> Path:
    """Write an image; the format follows the extension (see :data:`WRITE_EXTENSIONS`).

    Args:
        path: destination; parent folders are created. An existing file is overwritten
            (whether that is allowed is the caller's decision).
        img: (3, H, W) float tensor, RGB, [0, 1] (clamped, then rounded to 8 bits as in
            :func:`tensor_to_uint8`), or an HxWx3 uint8 numpy array, RGB.
        jpeg_quality: 0..100, used for .jpg / .jpeg only.
    Returns:
        The path written.
    Raises:
        ValueError: unknown extension or wrong image shape / type.
        ImageWriteError: encoding or writing failed.
    """
    path = Path(path)
    if path.suffix.lower() not in WRITE_EXTENSIONS:
        raise ValueError(f"unknown image extension '{path.suffix}' for '{path}'; "
                         f"allowed: {', '.join(WRITE_EXTENSIONS)}")
    if isinstance(img, torch.Tensor):
        bgr = tensor_to_uint8(img, bgr=True)
    else:
        _check_uint8_hwc(img)
        bgr = np.ascontiguousarray(img[:, :, ::-1])
    params = []
    if path.suffix.lower() in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    try:
        ok, encoded = cv2.imencode(path.suffix.lower(), bgr, params)
    except cv2.error as err:
        raise ImageWriteError(path, f"encoding failed: {err}") from None
    if not ok:
        raise ImageWriteError(path, "encoding failed")
    # Written under a temporary name and renamed: an interrupted run never leaves a truncated
    # file under the final name, which a re-run would take for a finished output.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(encoded.tobytes())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ImageWriteError(path, err.strerror or str(err)) from None
    return path


# --------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------

def list_images(root: PathLike, recursive: bool = False) -> list[Path]:
    """Image files under ``root``, sorted by relative path (compared folder by folder).

    Only files with an extension in :data:`IMAGE_EXTENSIONS` (any case); hidden files and,
    when recursive, hidden folders (names starting with '.') are skipped. Symbolic links to
    folders are not followed. Returned paths are ``root / relative_path``.

    Raises:
        NotADirectoryError: ``root`` is not an existing folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"image folder '{root}' does not exist or is not a folder")
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [] if not recursive else [d for d in dirs if not d.startswith(".")]
        rel = Path(folder).relative_to(root)
        for name in files:
            if not name.startswith(".") and is_image_file(name) and (Path(folder) / name).is_file():
                found.append(rel / name)
    return [root / rel for rel in sorted(found, key=lambda p: p.parts)]
