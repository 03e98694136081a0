"""Aligned face crops in, the model's own framing inside.

Aligned inputs follow the FFHQ crop convention (eyes and mouth where FFHQ's crops have them,
any square size). A model trained on FFHQ-framed faces sees the crop resized to its size S. A
model trained with another framing (the bundled demo: UTKFace's tight crops) gets the region of
its own template: the crop is warped by the similarity between the two templates (least
squares over the five points) to S x S, restored, and pasted back into the input with a soft
edge, so one `--aligned` crop works with every preset.

Images are (3, H, W) float tensors, RGB, [0, 1], as everywhere in the code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .face_align import BORDER_VALUE_RGB, is_ffhq_template, paste_faces, reframe_affine, warp_crop
from .image_io import tensor_to_uint8, uint8_to_tensor


def _resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) bicubic resize with antialiasing (the official pre/post-processing)."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    return F.interpolate(img, size=size, mode="bicubic", antialias=True, align_corners=False)


@dataclass
class ModelFraming:
    """How an FFHQ-framed aligned crop becomes a model input and how the output goes back.

    size: the model's S. template: (5, 2) model template in S x S pixels, or None when the
    model's framing is FFHQ's (plain resize).
    """

    size: int
    template: np.ndarray | None = None
    border_value: Sequence[int] = BORDER_VALUE_RGB

    @classmethod
    def of(cls, size: int, template, template_size: float, border_value=BORDER_VALUE_RGB,
           reframe: bool = True) -> "ModelFraming":
        """The framing of a model with this five-point `template` (pixels of a `template_size` crop)."""
        tpl = np.asarray(template, np.float64)
        if not reframe or is_ffhq_template(tpl, template_size):
            return cls(size, None, tuple(border_value))
        return cls(size, tpl * size / template_size, tuple(border_value))

    def affine(self, wh: tuple[int, int]) -> np.ndarray | None:
        """(2,3) map from an input crop of (width, height) `wh` to the model crop; None = resize."""
        return None if self.template is None else reframe_affine(wh, self.template)

    def native_side(self, wh: tuple[int, int]) -> float:
        """Side, in input pixels, of the region the model sees at S x S."""
        affine = self.affine(wh)
        if affine is None:
            return float(max(wh))
        return self.size / float(np.sqrt(abs(np.linalg.det(affine[:, :2]))))

    def downscale_warning(self, sizes: list[tuple[int, int] | None], limit: float, name: str) -> str | None:
        """One message for all inputs (sizes (w, h), None = unknown) whose face region is larger than
        `limit` x S, or None."""
        sides = [self.native_side(wh) for wh in sizes if wh]
        large = [s for s in sides if s > limit * self.size]
        if not large:
            return None
        return (f"{len(large)} of {len(sizes)} input(s) hold a face larger than {limit}x the {self.size} px that "
                f"'{name}' works at (up to {max(large):.0f} px): they are restored at {self.size} px and resized back, "
                f"so detail finer than that is lost" + (" (a demonstration model; the paper's: --cfg difface_ffhq512)"
                                                        if self.size < 256 else ""))

    def to_model(self, img: torch.Tensor) -> tuple[torch.Tensor, np.ndarray | None]:
        """(3, H, W) input -> ((3, S, S) model input, affine or None)."""
        affine = self.affine((img.shape[-1], img.shape[-2]))
        if affine is None:
            return _resize(img[None], (self.size, self.size))[0], None
        crop = warp_crop(tensor_to_uint8(img), affine, self.size, self.border_value)
        return uint8_to_tensor(crop), affine

    def from_model(self, out: torch.Tensor, img: torch.Tensor, affine: np.ndarray | None,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
        """(3, S, S) model output -> (3, H, W) at the input's size; pixels outside the model's
        region (re-framing) or outside the hole `mask` (1, H, W) (inpainting) are the input's."""
        h, w = img.shape[-2:]
        if affine is None:
            result = _resize(out[None], (h, w))[0].clamp(0, 1)
        else:
            pasted = paste_faces(tensor_to_uint8(img), [(tensor_to_uint8(out), affine)], 1, offset=0.0)
            result = uint8_to_tensor(pasted)
        if mask is not None:
            result = result * mask + img * (1 - mask)
        return result
