"""What `difface.Restorer` takes in between steps and returns: prepared inputs and results."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from datapipe.photos import PendingPhoto, PhotoResult


@dataclass
class FaceResult:
    """One face of a whole photo: where it was found (input-photo pixels) and its crops."""

    box: list[float]                # x0, y0, x1, y1
    landmarks: list[list[float]]    # five (x, y) points
    score: float
    crop: np.ndarray                # S x S x 3 uint8 RGB: the aligned input crop
    restored: list[np.ndarray]      # per sample, S x S x 3 uint8 RGB
    start_step: int | None = None   # the face's N with `start_step: auto`
    kept_sample: int | None = None  # with `select: fidelity`, which of the samples was kept


@dataclass
class Result:
    """The restoration of one image. Images are H x W x 3 uint8 RGB numpy arrays, as written to files
    (grey inputs give grey outputs)."""

    samples: list[np.ndarray]
    name: str
    input: np.ndarray                # the input as read (whole photos: at the input's own size)
    estimate: np.ndarray | None = None  # aligned faces: the estimator's output f(y) at the input size
    faces: list[FaceResult] = field(default_factory=list)  # whole photos
    photo: PhotoResult | None = None  # whole photos: everything found (kept, skipped, sizes)
    info: dict = field(default_factory=dict)  # what the manifest records for this image

    @property
    def image(self) -> np.ndarray:
        """The first (or only) sample."""
        return self.samples[0]


@dataclass
class AlignedInput:
    """An aligned crop ready for a batch: the image (3, H, W) [0, 1], its key, mask and model input."""

    name: str
    image: torch.Tensor
    grey: bool
    mask: torch.Tensor | None = None
    model_input: torch.Tensor | None = None
    affine: np.ndarray | None = None
    info: dict = field(default_factory=dict)


@dataclass
class PhotoInput:
    """A photo prepared by `Restorer.prepare_photo`: faces found and aligned, not restored yet."""

    name: str
    photo: np.ndarray   # H x W x 3 uint8 RGB as read
    grey: bool
    pending: PendingPhoto
    info: dict

    @property
    def num_faces(self) -> int:
        return self.pending.num_faces
