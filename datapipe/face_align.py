"""Face alignment and its inverse: five-point templates, similarity fits, aligned crops, and pasting
restored crops back into a photo (docs/method.md#whole-image-pipeline).

Images here are numpy arrays, HxWx3 uint8 **RGB**. Points are (x, y) in pixel-index coordinates:
pixel (i, j) has its centre at x=j, y=i, which is OpenCV's ``warpAffine`` convention. An affine
is a (2,3) float64 array mapping photo pixels to crop pixels (``align_face``'s output); the
paste-back inverts it. Landmarks come from ``datapipe/faces.py``, in the template's order.

Alignment is a 4-dof similarity (rotation, uniform scale, translation) fitted to the template:
``"lmeds"`` = OpenCV ``estimateAffinePartial2D`` with LMEDS, as the official code; ``"lstsq"`` =
Umeyama's closed-form least squares over all five points. Where dlib's 68 points exist and the
model's template is FFHQ's, ``align_face_ffhq`` applies the rule FFHQ itself was cropped with
(Karras et al., the FFHQ dataset's alignment: an oriented square from the eye centres and mouth
corners), which recovers FFHQ's own crops far more closely than the five-point fit.

Paste-back follows facexlib's ``paste_faces_to_input_image`` with one difference: there is no
face-parsing network here, so the blend mask is geometric only (eroded, blurred warp of the
crop's square), and the result is rounded instead of truncated to uint8.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import cv2
import numpy as np

log = logging.getLogger(__name__)

# Five-point FFHQ template for 512x512 crops (facexlib / official DifFace), (x, y).
FFHQ_TEMPLATE_512 = np.array(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
     [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float64)
# Official border colour BGR (135, 133, 132) -> RGB.
BORDER_VALUE_RGB = (132, 133, 135)


# ----------------------------------------------------------------------------- geometry
def transform_points(pts: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Apply a (2,3) affine to (N,2) points; float64."""
    pts = np.asarray(pts, dtype=np.float64)
    return pts @ affine[:, :2].T + affine[:, 2]


def inverse_affine(affine: np.ndarray) -> np.ndarray:
    """Inverse of a (2,3) affine (``cv2.invertAffineTransform``), float64."""
    return cv2.invertAffineTransform(np.asarray(affine, dtype=np.float64))


def estimate_similarity(src: np.ndarray, dst: np.ndarray, method: str = "lmeds") -> np.ndarray:
    """Similarity (2,3) float64 mapping (N,2) ``src`` onto (N,2) ``dst``, no reflection.

    "lmeds": cv2.estimateAffinePartial2D with LMEDS (official); falls back to "lstsq" if OpenCV
    finds no model. "lstsq": Umeyama (1991) least squares over all points.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if method == "lmeds":
        affine = cv2.estimateAffinePartial2D(src.astype(np.float32), dst.astype(np.float32),
                                             method=cv2.LMEDS)[0]
        if affine is not None:
            return affine.astype(np.float64)
        log.warning("LMEDS found no similarity for %s; using least squares", src.tolist())
    elif method != "lstsq":
        raise ValueError(f"unknown alignment method {method!r}; allowed: ['lmeds', 'lstsq']")
    return _umeyama(src, dst)


def _umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d0.T @ s0 / len(src))
    d = np.array([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rot = u @ np.diag(d) @ vt
    var_s = (s0 ** 2).sum() / len(src)
    scale = (sig * d).sum() / var_s if var_s > 0 else 1.0
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def align_face(img: np.ndarray, landmarks5: np.ndarray, face_size: int = 512,
               template: np.ndarray | None = None, template_size: float = 512,
               border_value: Sequence[int] = BORDER_VALUE_RGB,
               method: str = "lmeds") -> tuple[np.ndarray, np.ndarray]:
    """Warp the face with these landmarks onto the template (official step 3).

    Args:
        img: HxWx3 uint8 RGB. landmarks5: (5,2) (x, y) in ``img``.
        face_size: side of the square crop.
        template: (5,2) template points for a ``template_size`` square crop (default FFHQ-512);
            scaled by ``face_size / template_size``.
        border_value: RGB fill outside the image (official BGR (135,133,132)).
        method: "lmeds" or "lstsq", see ``estimate_similarity``.

    Returns:
        crop (face_size, face_size, 3) uint8 RGB, bilinear; affine (2,3) float64 mapping ``img``
        pixel coordinates to crop pixel coordinates.
    """
    tpl = FFHQ_TEMPLATE_512 if template is None else np.asarray(template, dtype=np.float64)
    tpl = tpl * (face_size / template_size)
    affine = estimate_similarity(landmarks5, tpl, method)
    crop = cv2.warpAffine(img, affine, (face_size, face_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(border_value))
    return crop, affine


def is_ffhq_template(template: np.ndarray, template_size: float, tolerance: float = 0.01) -> bool:
    """Whether a five-point template is FFHQ's (up to scale), within ``tolerance`` of the side."""
    tpl = np.asarray(template, dtype=np.float64) / template_size
    return bool(np.abs(tpl - FFHQ_TEMPLATE_512 / 512).max() <= tolerance)


def ffhq_quad_affine(landmarks68: np.ndarray, face_size: int) -> np.ndarray:
    """(2,3) float64 map from image pixels to a ``face_size`` crop framed as FFHQ was.

    The FFHQ rule (Karras et al.): from the eye centres (mean of points 36-41, 42-47) and the
    mouth corners (48, 54), the crop is the square centred at ``eye_avg + 0.1 eye_to_mouth``,
    oriented along ``eye_to_eye - rot90(eye_to_mouth)``, of half-side
    ``max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)``. Its corners map to the crop's outer pixel edges.
    """
    p = np.asarray(landmarks68, dtype=np.float64)
    eye_left, eye_right = p[36:42].mean(0), p[42:48].mean(0)
    eye_avg, eye_to_eye = (eye_left + eye_right) / 2, eye_right - eye_left
    eye_to_mouth = (p[48] + p[54]) / 2 - eye_avg
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    x *= max(2.0 * np.hypot(*eye_to_eye), 1.8 * np.hypot(*eye_to_mouth)) / np.hypot(*x)
    y = np.array([-x[1], x[0]])
    c = eye_avg + 0.1 * eye_to_mouth
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    edge = np.array([[0, 0], [0, 1], [1, 1], [1, 0]], np.float64) * face_size - 0.5
    return _umeyama(quad, edge)


def align_face_ffhq(img: np.ndarray, landmarks68: np.ndarray, face_size: int = 512,
                    border_value: Sequence[int] = BORDER_VALUE_RGB) -> tuple[np.ndarray, np.ndarray]:
    """Like ``align_face`` but framed by the FFHQ 68-point rule (``ffhq_quad_affine``)."""
    affine = ffhq_quad_affine(landmarks68, face_size)
    crop = cv2.warpAffine(img, affine, (face_size, face_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(border_value))
    return crop, affine


def warp_crop(img: np.ndarray, affine: np.ndarray, size: int,
              border_value: Sequence[int] = BORDER_VALUE_RGB) -> np.ndarray:
    """Warp HxWx3 uint8 ``img`` by the (2,3) ``affine`` into a ``size`` square, bilinear; a
    shrinking map first reduces the image by area averaging so that the crop does not alias."""
    scale = float(np.sqrt(abs(np.linalg.det(affine[:, :2]))))
    if scale < 0.9:
        h, w = img.shape[:2]
        fw, fh = max(1, round(w * scale)), max(1, round(h * scale))
        img = cv2.resize(img, (fw, fh), interpolation=cv2.INTER_AREA)
        f = np.array([fw / w, fh / h])
        affine = np.hstack([affine[:, :2] / f, (affine[:, :2] @ (0.5 / f - 0.5) + affine[:, 2])[:, None]])
    return cv2.warpAffine(img, affine, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(border_value))


def reframe_affine(image_wh: tuple[int, int], dst_template: np.ndarray,
                   src_template: np.ndarray = FFHQ_TEMPLATE_512, src_template_size: float = 512) -> np.ndarray:
    """(2,3) float64 similarity from an aligned crop of (width, height) ``image_wh`` framed by
    ``src_template`` (default FFHQ's) to a crop framed by ``dst_template`` ((5,2) points in the
    destination crop's pixels). Least squares over the five points."""
    src = np.asarray(src_template, np.float64) / src_template_size * np.asarray(image_wh, np.float64)
    return _umeyama(src, np.asarray(dst_template, np.float64))


# ----------------------------------------------------------------------------- paste-back
def paste_affine(affine: np.ndarray, upscale: float, offset: float | None = None) -> np.ndarray:
    """Crop -> upscaled-canvas (2,3) map: ``upscale * inverse_affine(affine)`` + ``offset``.

    offset None = official: 0.5*upscale if upscale > 1 else 0. The pixel-centre-exact value for
    a canvas made by cv2.resize (Lanczos) is (upscale - 1) / 2, i.e. the official one lands
    0.5 canvas px (for upscale 2) right and down of it.
    """
    if offset is None:
        offset = 0.5 * upscale if upscale > 1 else 0.0
    inv = inverse_affine(affine) * upscale
    inv[:, 2] += offset
    return inv


def paste_faces(canvas: np.ndarray, faces: Sequence[tuple[np.ndarray, np.ndarray]],
                upscale: float, *, draw_box: bool = False,
                offset: float | None = None) -> np.ndarray:
    """Blend restored crops into the upscaled background, one face after another.

    Args:
        canvas: (int(H*upscale), int(W*upscale), 3) uint8 RGB background.
        faces: (restored crop, affine) pairs; the crop is the aligned crop's size, uint8 RGB;
            ``affine`` is ``align_face``'s (2,3) input -> crop map.
        upscale: canvas size / input size.
        draw_box: draw each crop's warped border in green (official ``--draw_box``).
        offset: see ``paste_affine`` (None = official).

    Returns:
        canvas-sized HxWx3 uint8 RGB. The blend mask is geometric only (no face parsing).
    """
    out = canvas.astype(np.float32)
    borders = []
    for crop, affine in faces:
        inv = paste_affine(affine, upscale, offset)
        roi = _warped_roi(inv, crop.shape[:2], out.shape[:2])
        if roi is None:
            continue
        x0, y0, x1, y1 = roi
        inv[:, 2] -= (x0, y0)  # warp straight into the region of interest
        area = _blend_one(out[y0:y1, x0:x1], crop, inv, upscale)
        if draw_box:
            borders.append((roi, _border_mask(crop.shape[:2], inv, (x1 - x0, y1 - y0), area)))
    green = np.array([0, 255, 0], np.float32)
    for (x0, y0, x1, y1), mask in borders:
        region = out[y0:y1, x0:x1]
        region[:] = mask * green + (1 - mask) * region
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _warped_roi(inv: np.ndarray, crop_hw: tuple[int, int], canvas_hw: tuple[int, int]):
    """Canvas box (x0,y0,x1,y1) holding the warped crop plus a zero margin, or None if outside.

    The margin keeps every erosion/blur of ``_blend_one`` equal to the whole-canvas result: the
    bilinear edge of the warped crop reaches one crop pixel (``magnification`` canvas pixels)
    beyond the corner pixels' centres, and past it a few pixels must stay zero (OpenCV's
    erosion counts pixels outside the box as 1). With a fixed margin, a small model's crop
    pasted large (5x for the demo on a 512 px crop) kept an unblended hard edge.
    """
    h, w = crop_hw
    corners = transform_points(np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]]), inv)
    magnification = float(np.sqrt(abs(np.linalg.det(inv[:, :2]))))
    margin = 4 + math.ceil(magnification)
    x0 = max(0, math.floor(corners[:, 0].min()) - margin)
    y0 = max(0, math.floor(corners[:, 1].min()) - margin)
    x1 = min(canvas_hw[1], math.ceil(corners[:, 0].max()) + margin + 1)
    y1 = min(canvas_hw[0], math.ceil(corners[:, 1].max()) + margin + 1)
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def _blend_one(region: np.ndarray, crop: np.ndarray, inv: np.ndarray, upscale: float) -> float:
    """Blend one crop into ``region`` (float32 view, in place); returns the eroded mask area."""
    size = (region.shape[1], region.shape[0])
    face = cv2.warpAffine(crop, inv, size, flags=cv2.INTER_LINEAR).astype(np.float32)
    mask = cv2.warpAffine(np.ones(crop.shape[:2], np.float32), inv, size, flags=cv2.INTER_LINEAR)
    # Erode past the bilinear ramp at the crop's edge: 2 canvas px per crop px (official: 2 * upscale),
    # more when the crop is magnified beyond `upscale` (a small model's crop pasted into a large image).
    magnification = float(np.sqrt(abs(np.linalg.det(inv[:, :2]))))
    k = max(1, int(2 * max(upscale, magnification)))
    mask = cv2.erode(mask, np.ones((k, k), np.uint8))
    area = float(mask.sum())
    w_edge = int(area ** 0.5) // 20
    # official kernels are (2*w_edge)^2 and (2*w_edge+1)^2; w_edge = 0 only for crops < 20 px
    centre = cv2.erode(mask, np.ones((max(1, 2 * w_edge),) * 2, np.uint8))
    soft = cv2.GaussianBlur(centre, (2 * w_edge + 1,) * 2, 0)[..., None]
    region[:] = soft * (mask[..., None] * face) + (1 - soft) * region
    return area


def _border_mask(crop_hw, inv, size, area) -> np.ndarray:
    """Warped square border of thickness int(1400 / sqrt(area)) crop px, (h,w,1) float32."""
    h, w = crop_hw
    t = int(1400 / math.sqrt(area)) if area > 0 else 0
    border = np.ones((h, w), np.float32)
    border[t:h - t, t:w - t] = 0
    return cv2.warpAffine(border, inv, size, flags=cv2.INTER_LINEAR)[..., None]
