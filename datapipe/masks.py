"""Inpainting mask generators: random holes for training and for synthetic test sets.

A mask marks the **hole** (unknown pixels) with 1 and known pixels with 0. Generators return an
``HxW float32 numpy`` array with values in {0, 1} (the layout of the official LaMa / DifFace
generators and of OpenCV drawing); :func:`datapipe.mask_io.mask_to_tensor` turns one into the
``(1, H, W)`` tensor that meets images, and the rest of what meets images (hole detection, mask
files, checks, application) is in ``datapipe/mask_io.py``.

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
from typing import Dict

import cv2
import numpy as np


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
