"""Whole photos: detect faces, align them, restore the crops, paste them onto an upscaled background.

The restoration itself is a callable handed in by the caller (``restore_fn``), so this module
knows nothing about networks. Images are HxWx3 uint8 RGB numpy arrays here (the detectors and
OpenCV warps work on those); crops go to ``restore_fn`` as (N, 3, S, S) float tensors in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .faces import Face, FaceDetector, align_face, enlarge_to_min_side, paste_faces, upscale_lanczos
from .image_io import tensor_to_uint8, uint8_to_tensor

MIN_SIDE = 512  # photos with a shorter side are first enlarged to it (official behaviour)
PASTE_OFFSET = 0.5  # exact pixel-centre correspondence for a background resized by `upscale`

RestoreFn = Callable[[torch.Tensor, Sequence[str]], list[torch.Tensor]]
BackgroundFn = Callable[[np.ndarray, int], np.ndarray]


class PhotoTooLarge(ValueError):
    """A photo exceeds the configured pixel budget."""


@dataclass
class PhotoResult:
    """Restorations of one photo: one output image per sample, plus what was found."""

    images: list[np.ndarray]
    faces: list[Face] = field(default_factory=list)
    skipped: list[Face] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)
    restored: list[list[np.ndarray]] = field(default_factory=list)  # [sample][face]
    enlarged_by: float = 1.0

    def manifest(self) -> dict:
        """Per-face boxes, landmarks and scores in the coordinates of the input photo."""
        scale = 1.0 / self.enlarged_by

        def describe(face: Face) -> dict:
            return {"box": [round(float(v) * scale, 2) for v in face.box],
                    "landmarks": [[round(float(x) * scale, 2), round(float(y) * scale, 2)]
                                  for x, y in face.landmarks5],
                    "score": round(float(face.score), 4)}

        return {"faces": [describe(f) for f in self.faces], "skipped_small": [describe(f) for f in self.skipped],
                "enlarged_by": round(self.enlarged_by, 4)}


def lanczos_background(img: np.ndarray, upscale: int) -> np.ndarray:
    return upscale_lanczos(img, upscale)


def restore_photo(img: np.ndarray, detector: FaceDetector, restore_fn: RestoreFn, key: str, *,
                  face_size: int, template: np.ndarray, template_size: float,
                  border_value: Sequence[int], upscale: int = 2,
                  background_fn: BackgroundFn = lanczos_background, draw_box: bool = False,
                  max_pixels: int = 40_000_000) -> PhotoResult:
    """Restore every face of a photo (HxWx3 uint8 RGB); a photo without a face is only upscaled.

    `restore_fn(crops, keys)` gets the aligned crops (N, 3, S, S) in [0, 1] with one seed key
    per face and returns one (N, 3, S, S) tensor per sample.
    """
    h, w = img.shape[:2]
    if h * w > max_pixels:
        raise PhotoTooLarge(f"photo is {w}x{h} = {h * w / 1e6:.1f} megapixels, above the limit of "
                            f"{max_pixels / 1e6:.1f} (raise it with --max-pixels)")
    img, factor = enlarge_to_min_side(img, MIN_SIDE)
    faces, skipped = detector.detect_with_skipped(img)
    background = background_fn(img, upscale)
    if not faces:
        return PhotoResult(images=[background], skipped=skipped, enlarged_by=factor)
    aligned = [align_face(img, f.landmarks5, face_size=face_size, template=template,
                          template_size=template_size, border_value=border_value) for f in faces]
    crops = torch.stack([uint8_to_tensor(crop) for crop, _ in aligned])
    samples = restore_fn(crops, [f"{key}#face{k}" for k in range(len(faces))])
    images, restored = [], []
    for sample in samples:
        faces_out = [tensor_to_uint8(face) for face in sample]
        restored.append(faces_out)
        pairs = [(face, affine) for face, (_, affine) in zip(faces_out, aligned)]
        images.append(paste_faces(background, pairs, upscale, draw_box=draw_box, offset=PASTE_OFFSET))
    return PhotoResult(images=images, faces=faces, skipped=skipped, crops=[c for c, _ in aligned],
                       restored=restored, enlarged_by=factor)
