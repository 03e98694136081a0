"""Inpainting masks: random generators, detection in masked images, mask files, checks.

A mask marks the **hole** (unknown pixels) with 1 and known pixels with 0. Two layouts:

* generators return an ``HxW float32 numpy`` array with values in {0, 1} (the layout of the
  official LaMa / DifFace generators and of OpenCV drawing);
* everything that meets images (:func:`detect_black_holes`, :func:`detect_white_scribbles`,
  :func:`read_mask`, :func:`apply_mask`) uses ``(1, H, W)`` (or ``(B, 1, H, W)``) float32 torch
  tensors in {0, 1}, beside ``(3, H, W)`` RGB [0, 1] images (DESIGN.md §3).
  :func:`mask_to_tensor` converts the first into the second.

Generators are dataclasses whose fields are their parameters, defaulting to the
official training settings (``iter_i`` ramp disabled, i.e. coefficient 1); calling one with
``(height, width, rng)`` draws a mask from the ``numpy.random.Generator`` it is given. The
official code used NumPy's global state, so its draws cannot be reproduced bit for bit; the
distributions and the order of the draws are the same. :data:`MASK_GENERATORS` maps the config
names to the classes. The official settings: docs/method.md#mask-generators.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, Sequence, Union

import cv2
import numpy as np
import torch

from .image_io import ImageReadError, is_image_file

PathLike = Union[str, Path]


def _check_call(height: int, width: int, rng) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"mask size must be positive, got {height}x{width}")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_percent(masking_percent: float) -> None:
    _require(0.0 < masking_percent < 1.0, f"masking_percent must lie in (0, 1), got {masking_percent}")


# --------------------------------------------------------------------------------------------
# Generators (HxW float32 numpy, 1 = hole)
# --------------------------------------------------------------------------------------------

@dataclass
class IrregularMaskGenerator:
    """Random brush strokes (LaMa ``RandomIrregularMaskGenerator``, draw method LINE).

    Number of strokes uniform in {min_times .. max_times + 1}: with the ramp coefficient 1 the
    official code passes ``min_times + 1 + (max_times - min_times)`` as the inclusive maximum
    ({1..6} for the defaults). Each stroke starts at a uniform pixel and has
    1 + randint(5) segments; segment angle ``0.01 + randint(max_angle)`` rad, mirrored to
    ``2*pi - angle`` for even stroke index; length ``10 + randint(max_len)``; brush width
    ``5 + randint(max_width)``; end point truncated to int and clipped to [0, W] x [0, H];
    drawn with ``cv2.line`` (value 1).
    """

    max_angle: int = 4
    max_len: int = 200
    max_width: int = 100
    min_times: int = 1
    max_times: int = 5

    def __post_init__(self) -> None:
        _require(min(self.max_angle, self.max_len, self.max_width) >= 1,
                 f"max_angle, max_len, max_width must be >= 1, "
                 f"got {self.max_angle}, {self.max_len}, {self.max_width}")
        _require(0 <= self.min_times <= self.max_times,
                 f"need 0 <= min_times <= max_times, got {self.min_times}, {self.max_times}")

    def __call__(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        _check_call(height, width, rng)
        mask = np.zeros((height, width), np.float32)
        for i in range(int(rng.integers(self.min_times, self.max_times + 2))):
            start_x, start_y = int(rng.integers(width)), int(rng.integers(height))
            for _ in range(1 + int(rng.integers(5))):
                angle = 0.01 + int(rng.integers(self.max_angle))
                if i % 2 == 0:
                    angle = 2 * 3.1415926 - angle  # the official constant, not math.pi
                length = 10 + int(rng.integers(self.max_len))
                brush_w = 5 + int(rng.integers(self.max_width))
                end_x = min(max(int(start_x + length * math.sin(angle)), 0), width)
                end_y = min(max(int(start_y + length * math.cos(angle)), 0), height)
                cv2.line(mask, (start_x, start_y), (end_x, end_y), 1.0, brush_w)
                start_x, start_y = end_x, end_y
        return mask


@dataclass
class BoxMaskGenerator:
    """Random rectangles (LaMa ``RandomRectangleMaskGenerator``).

    min_times..max_times boxes; each side uniform in [bbox_min_size, min(bbox_max_size,
    H - 2*margin - 1)] (width clipped by W likewise); the top-left corner uniform so that the
    box keeps at least ``margin`` px to every border.
    """

    margin: int = 10
    bbox_min_size: int = 30
    bbox_max_size: int = 150
    min_times: int = 1
    max_times: int = 4

    def __post_init__(self) -> None:
        _require(self.margin >= 0, f"margin must be >= 0, got {self.margin}")
        _require(1 <= self.bbox_min_size <= self.bbox_max_size,
                 f"need 1 <= bbox_min_size <= bbox_max_size, got {self.bbox_min_size}, {self.bbox_max_size}")
        _require(0 <= self.min_times <= self.max_times,
                 f"need 0 <= min_times <= max_times, got {self.min_times}, {self.max_times}")

    def __call__(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        _check_call(height, width, rng)
        # Official: randint(min, min(max + 1, H - 2m, W - 2m)), upper bound exclusive.
        upper = min(self.bbox_max_size + 1, height - 2 * self.margin, width - 2 * self.margin)
        if upper <= self.bbox_min_size:
            raise ValueError(f"a {height}x{width} mask is too small for boxes of at least "
                             f"{self.bbox_min_size} px with margin {self.margin}")
        mask = np.zeros((height, width), np.float32)
        for _ in range(int(rng.integers(self.min_times, self.max_times + 1))):
            box_w = int(rng.integers(self.bbox_min_size, upper))
            box_h = int(rng.integers(self.bbox_min_size, upper))
            x0 = int(rng.integers(self.margin, width - self.margin - box_w + 1))
            y0 = int(rng.integers(self.margin, height - self.margin - box_h + 1))
            mask[y0:y0 + box_h, x0:x0 + box_w] = 1
        return mask


@dataclass
class OutpaintingMaskGenerator:
    """Strips along the borders (LaMa ``OutpaintingMaskGenerator``).

    Four padding fractions are drawn first, ``randint(int(min*S), int(max*S)) / S`` (upper
    bound exclusive; S = H for the left/right strips, W for top/bottom, as the official code
    does - identical for square images; for S = 256: 10..75 px). Then for the sides in the
    order left, top, right, bottom, each is masked with its probability; if none was, one side
    is picked with probabilities proportional to the four probabilities.
    """

    min_padding_percent: float = 0.04
    max_padding_percent: float = 0.30
    left_prob: float = 0.5
    top_prob: float = 0.5
    right_prob: float = 0.5
    bottom_prob: float = 0.5

    def __post_init__(self) -> None:
        _require(0.0 <= self.min_padding_percent < self.max_padding_percent <= 1.0,
                 f"need 0 <= min_padding_percent < max_padding_percent <= 1, got "
                 f"{self.min_padding_percent}, {self.max_padding_percent}")
        probs = self.side_probs
        _require(min(probs) >= 0 and max(probs) <= 1 and sum(probs) > 0,
                 f"side probabilities must lie in [0, 1] and not all be 0, got {probs}")

    @property
    def side_probs(self) -> list[float]:
        """[left, top, right, bottom]."""
        return [self.left_prob, self.top_prob, self.right_prob, self.bottom_prob]

    def _padding(self, size: int, rng: np.random.Generator) -> float:
        low, high = int(self.min_padding_percent * size), int(self.max_padding_percent * size)
        if high <= low:
            raise ValueError(f"size {size} is too small for padding fractions "
                             f"[{self.min_padding_percent}, {self.max_padding_percent})")
        return int(rng.integers(low, high)) / size

    def __call__(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        _check_call(height, width, rng)
        pads = [self._padding(height, rng), self._padding(width, rng),
                self._padding(height, rng), self._padding(width, rng)]
        # (row_from, row_to), (col_from, col_to) as fractions, as in the official code.
        strips = [((0, 1), (0, pads[0])), ((0, pads[1]), (0, 1)),
                  ((0, 1), (1 - pads[2], 1)), ((1 - pads[3], 1), (0, 1))]
        chosen = [i for i, p in enumerate(self.side_probs) if rng.random() < p]
        if not chosen:
            probs = np.asarray(self.side_probs) / sum(self.side_probs)
            chosen = [int(rng.choice(4, p=probs))]
        mask = np.zeros((height, width), np.float32)
        for i in chosen:
            (r0, r1), (c0, c1) = strips[i]
            mask[int(r0 * height):int(r1 * height), int(c0 * width):int(c1 * width)] = 1
        return mask


@dataclass
class ExpandMaskGenerator:
    """Keep a centred rectangle of round(masking_percent * H) x round(masking_percent * W)
    (a square for square images), mask the rest. Deterministic: ``rng`` is not used."""

    masking_percent: float = 0.5

    def __post_init__(self) -> None:
        _check_percent(self.masking_percent)

    def __call__(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        _check_call(height, width, rng)
        keep_h, keep_w = round(self.masking_percent * height), round(self.masking_percent * width)
        top, left = (height - keep_h) // 2, (width - keep_w) // 2
        mask = np.ones((height, width), np.float32)
        mask[top:top + keep_h, left:left + keep_w] = 0
        return mask


@dataclass
class HalfMaskGenerator:
    """Mask the bottom part (rows from int(masking_percent * H) on) or the right part (columns
    from int(masking_percent * W) on), each with probability 0.5 (one ``rng.random()``)."""

    masking_percent: float = 0.5

    def __post_init__(self) -> None:
        _check_percent(self.masking_percent)

    def __call__(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        _check_call(height, width, rng)
        mask = np.zeros((height, width), np.float32)
        if rng.random() < 0.5:
            mask[int(self.masking_percent * height):, :] = 1
        else:
            mask[:, int(self.masking_percent * width):] = 1
        return mask


def _default_weights() -> Dict[str, float]:
    return {"irregular": 1.0, "box": 1.0, "outpainting": 1.0}


@dataclass
class MixedMaskGenerator:
    """Pick a kind with probability proportional to ``weights`` (one ``rng.choice``), then draw
    a mask of that kind with the given generator. Default = official LaMa training mix
    (irregular / box / outpainting, 1/3 each). OmegaConf merges a YAML ``weights`` into the
    default dict: give a kind weight 0 to leave it out."""

    weights: Dict[str, float] = field(default_factory=_default_weights)
    irregular: IrregularMaskGenerator = field(default_factory=IrregularMaskGenerator)
    box: BoxMaskGenerator = field(default_factory=BoxMaskGenerator)
    outpainting: OutpaintingMaskGenerator = field(default_factory=OutpaintingMaskGenerator)
    expand: ExpandMaskGenerator = field(default_factory=ExpandMaskGenerator)
    half: HalfMaskGenerator = field(default_factory=HalfMaskGenerator)

    def __post_init__(self) -> None:
        kinds = [f.name for f in fields(self) if f.name != "weights"]
        unknown = sorted(set(self.weights) - set(kinds))
        _require(not unknown, f"unknown mask kinds {unknown} in weights; allowed: {kinds}")
        _require(all(w >= 0 for w in self.weights.values()) and sum(self.weights.values()) > 0,
                 f"weights must be >= 0 with a positive sum, got {dict(self.weights)}")

    def choose(self, rng: np.random.Generator) -> str:
        """Draw a kind name (one ``rng.choice`` over the kinds with positive weight)."""
        kinds = [k for k, w in self.weights.items() if w > 0]
        probs = np.asarray([self.weights[k] for k in kinds], np.float64)
        return kinds[int(rng.choice(len(kinds), p=probs / probs.sum()))]

    def __call__(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        _check_call(height, width, rng)
        return getattr(self, self.choose(rng))(height, width, rng)


MASK_GENERATORS = {
    "irregular": IrregularMaskGenerator,
    "box": BoxMaskGenerator,
    "outpainting": OutpaintingMaskGenerator,
    "expand": ExpandMaskGenerator,
    "half": HalfMaskGenerator,
    "mixed": MixedMaskGenerator,
}


def build_mask_generator(name: str, **params):
    """``MASK_GENERATORS[name](**params)``; unknown names and parameters raise ValueError."""
    if name not in MASK_GENERATORS:
        raise ValueError(f"unknown mask generator '{name}'; allowed: {sorted(MASK_GENERATORS)}")
    cls = MASK_GENERATORS[name]
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"unknown parameters {unknown} for mask generator '{name}'; allowed: {allowed}")
    return cls(**params)


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
