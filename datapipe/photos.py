"""Whole photos: detect faces, align them, restore the crops, paste them onto an upscaled background.

`prepare_photo` detects and aligns the faces and upscales the background; the caller restores the
crops (`difface.Restorer`, possibly with other photos' faces in one batch) and `finish_photo` pastes
them back, so this module knows nothing about networks. Images are HxWx3 uint8 RGB numpy arrays
here (the detectors and OpenCV warps work on those); crops are (N, 3, S, S) float tensors in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np
import torch

from .face_align import align_face, align_face_ffhq, is_ffhq_template, paste_faces
from .faces import Face, FaceDetector
from .image_io import tensor_to_uint8, uint8_to_tensor
from .limits import MAX_DOWNSCALE

MIN_SIDE = 512  # photos with a shorter side are first enlarged to it (official behaviour)
MIN_PHOTO_SIDE = 32  # smaller images cannot hold a face worth restoring
PASTE_OFFSET = 0.5  # exact pixel-centre correspondence for a background resized by `upscale`

BackgroundFn = Callable[[np.ndarray, int], np.ndarray]


class PhotoTooLarge(ValueError):
    """A photo exceeds the configured pixel budget."""


@dataclass
class PhotoResult:
    """Restorations of one photo: one output image per sample, plus what was found."""

    images: list[np.ndarray]
    faces: list[Face] = field(default_factory=list)
    skipped: list[Face] = field(default_factory=list)
    kept: list[Face] = field(default_factory=list)  # too large for the model: left as they were
    sizes: dict[int, float] = field(default_factory=dict)  # id(face) -> crop side in input pixels
    crops: list[np.ndarray] = field(default_factory=list)
    restored: list[list[np.ndarray]] = field(default_factory=list)  # [sample][face]
    enlarged_by: float = 1.0

    def manifest(self) -> dict:
        """Per-face boxes, landmarks and scores in the coordinates of the input photo."""
        scale = 1.0 / self.enlarged_by

        def describe(face: Face) -> dict:
            record = {"box": [round(float(v) * scale, 2) for v in face.box],
                      "landmarks": [[round(float(x) * scale, 2), round(float(y) * scale, 2)]
                                    for x, y in face.landmarks5],
                      "score": round(float(face.score), 4)}
            if id(face) in self.sizes:
                record["crop_side"] = round(self.sizes[id(face)], 1)
            return record

        return {"faces": [describe(f) for f in self.faces], "skipped_small": [describe(f) for f in self.skipped],
                "kept_large": [describe(f) for f in self.kept], "enlarged_by": round(self.enlarged_by, 4)}


    def describe(self, face_size: int) -> str:
        """One log line: faces restored, left as they were (too large), too small."""
        parts = [f"{len(self.faces)} face(s) restored"]
        if self.kept:
            sides = ", ".join(f"{self.sizes[id(f)]:.0f}" for f in self.kept)
            parts.append(f"{len(self.kept)} left as they were (crops of {sides} px, larger than {MAX_DOWNSCALE}x "
                         f"the model's {face_size} px; --allow-downscale restores them anyway)")
        if self.skipped:
            parts.append(f"{len(self.skipped)} smaller than --min-face-size skipped")
        if not (self.faces or self.kept):
            parts.append(("no face large enough to restore" if self.skipped else "no face found")
                         + ", the upscaled photo is written")
        return "; ".join(parts)


def enlarge_to_min_side(img: np.ndarray, min_side: int = 512) -> tuple[np.ndarray, float]:
    """Bilinearly enlarge HxWxC ``img`` so its short side is ``min_side`` (official step 1).

    Returns (image, factor); an image already large enough comes back as is with factor 1.0.
    """
    h, w = img.shape[:2]
    if min(h, w) >= min_side:
        return img, 1.0
    f = min_side / min(h, w)
    size = (min_side, round(h * f)) if w <= h else (round(w * f), min_side)
    return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR), f


def upscale_lanczos(img: np.ndarray, scale: float) -> np.ndarray:
    """Default background: HxWxC uint8 -> (int(H*scale))x(int(W*scale))xC, cv2 Lanczos-4."""
    h, w = img.shape[:2]
    return cv2.resize(img, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_LANCZOS4)


def output_size(width: int, height: int, upscale: int) -> tuple[int, int]:
    """(width, height) of the restored photo: short side enlarged to MIN_SIDE, then times `upscale`
    (the sizes `enlarge_to_min_side` and the Lanczos background give), known from the header alone."""
    if min(width, height) < MIN_SIDE:
        f = MIN_SIDE / min(width, height)
        width, height = (MIN_SIDE, round(height * f)) if width <= height else (round(width * f), MIN_SIDE)
    return int(width * upscale), int(height * upscale)


def check_output_size(width: int, height: int, upscale: int, max_pixels: float) -> None:
    """Raise PhotoTooLarge when the restored photo would exceed `max_pixels`, naming the sizes and
    the largest upscale that fits."""
    def pixels(scale: int) -> int:
        w, h = output_size(width, height, scale)
        return w * h

    if pixels(upscale) <= max_pixels:
        return
    w, h = output_size(width, height, upscale)
    fits = next((s for s in range(upscale - 1, 0, -1) if pixels(s) <= max_pixels), None)
    hint = "x".join(map(str, output_size(width, height, fits))) if fits else None
    raise PhotoTooLarge(f"the restored photo would be {w}x{h} = {w * h / 1e6:.1f} megapixels (input {width}x{height} "
                        f"at upscale {upscale}), above the output limit of {max_pixels / 1e6:.1f} "
                        f"(--max-output-pixels); " + (f"upscale {fits} gives {hint}" if fits else "no upscale fits"))


def side_by_side(photo: np.ndarray, restored: np.ndarray) -> np.ndarray:
    """The input photo resized (Lanczos) to the restored one's size, then both side by side (uint8 RGB)."""
    h, w = restored.shape[:2]
    return np.concatenate([cv2.resize(photo, (w, h), interpolation=cv2.INTER_LANCZOS4), restored], axis=1)


def lanczos_background(img: np.ndarray, upscale: int) -> np.ndarray:
    return upscale_lanczos(img, upscale)


@dataclass
class PendingPhoto:
    """A photo whose faces are detected and aligned but not restored yet (see `prepare_photo`)."""

    result: PhotoResult
    crops: torch.Tensor | None  # (N, 3, S, S) [0, 1], None without a face to restore
    keys: list[str]  # one seed key per face
    affines: list[np.ndarray]
    upscale: int
    draw_box: bool

    @property
    def num_faces(self) -> int:
        return len(self.keys)


def prepare_photo(img: np.ndarray, detector: FaceDetector, key: str, *,
                  face_size: int, template: np.ndarray, template_size: float,
                  border_value: Sequence[int], upscale: int = 2,
                  background_fn: BackgroundFn = lanczos_background, draw_box: bool = False,
                  max_pixels: int = 40_000_000, allow_downscale: bool = False,
                  only_center_face: bool = False) -> PendingPhoto:
    """Detect and align the faces of a photo (HxWx3 uint8 RGB) and upscale its background.

    A face whose crop covers more than MAX_DOWNSCALE * S input pixels would lose detail at the
    model's size S: it is left as it is in the upscaled background (`kept`) unless
    `allow_downscale`. FFHQ-template models get crops by FFHQ's own 68-point rule where the
    detector gives 68 points. Raises PhotoTooLarge above `max_pixels`.
    """
    h, w = img.shape[:2]
    if h * w > max_pixels:
        raise PhotoTooLarge(f"photo is {w}x{h} = {h * w / 1e6:.1f} megapixels, above the limit of "
                            f"{max_pixels / 1e6:.1f} (raise it with --max-pixels)")
    img, factor = enlarge_to_min_side(img, MIN_SIDE)
    found, skipped = detector.detect_with_skipped(img, scale=factor)  # min_face_size in input pixels
    if only_center_face and found:
        centre = np.array([img.shape[1] - 1, img.shape[0] - 1]) / 2
        found = [min(found, key=lambda f: float(np.linalg.norm(f.box.reshape(2, 2).mean(0) - centre)))]
    background = background_fn(img, upscale)
    ffhq = is_ffhq_template(template, template_size)
    faces, kept, aligned, sizes = [], [], [], {}
    for face in found:
        if ffhq and face.landmarks68 is not None:
            crop, affine = align_face_ffhq(img, face.landmarks68, face_size, border_value)
        else:
            crop, affine = align_face(img, face.landmarks5, face_size=face_size, template=template,
                                      template_size=template_size, border_value=border_value)
        sizes[id(face)] = face_size / np.sqrt(abs(np.linalg.det(affine[:, :2]))) / factor
        if sizes[id(face)] > MAX_DOWNSCALE * face_size and not allow_downscale:
            kept.append(face)
        else:
            faces.append(face)
            aligned.append((crop, affine))
    result = PhotoResult(images=[background], faces=faces, skipped=skipped, kept=kept, sizes=sizes,
                         enlarged_by=factor, crops=[c for c, _ in aligned])
    crops = torch.stack([uint8_to_tensor(crop) for crop, _ in aligned]) if aligned else None
    return PendingPhoto(result, crops, [f"{key}#face{k}" for k in range(len(faces))], [a for _, a in aligned],
                        upscale, draw_box)


def finish_photo(pending: PendingPhoto, samples: Sequence[torch.Tensor]) -> PhotoResult:
    """Paste the restored faces (one (N, 3, S, S) tensor per sample, N = pending.num_faces) into
    the upscaled background: one output image per sample. Without faces, the background alone."""
    result = pending.result
    if not pending.num_faces:
        return result
    background = result.images[0]
    result.images = []
    for sample in samples:
        faces_out = [tensor_to_uint8(face) for face in sample]
        result.restored.append(faces_out)
        pairs = list(zip(faces_out, pending.affines))
        result.images.append(paste_faces(background, pairs, pending.upscale, draw_box=pending.draw_box,
                                         offset=PASTE_OFFSET))
    return result
