"""Whole-image face handling: detect -> five landmarks -> align -> paste back
(docs/method.md#whole-image-pipeline).

Images here are numpy arrays, HxWx3 uint8 **RGB** (conversions from files live in
``datapipe/image_io.py``). Points are (x, y) in pixel-index coordinates: pixel (i, j) has its
centre at x=j, y=i, which is OpenCV's ``warpAffine`` convention.

Five landmarks, in this order (the order of the FFHQ template): the eye on the image's left
(the subject's right eye), the eye on the image's right, nose tip, mouth corner on the image's
left, mouth corner on the image's right.

Detectors (``FaceDetector(method=...)``), all offline except as noted:
* ``"hog"`` (default): dlib's HOG + linear SVM frontal detector, then dlib's 68-point shape
  predictor from the ``face-recognition-models`` package; five points from the 68: eye
  centres = mean of points 36-41 / 42-47, nose tip = point 30, mouth corners = points 48 / 54.
  Averaged over 20 FFHQ-aligned shared faces these points lie within 3 px (eyes) and 5 px
  (nose, mouth) of the FFHQ-512 template, so the template fits them (tests pin this).
* ``"cnn"``: dlib's MMOD CNN detector (same models package), same landmarks; slow on CPU.
* ``"retinaface"``: RetinaFace-R50 from the optional ``facexlib`` package (the detector of the
  official code; facexlib fetches its own weights on first use).

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

import importlib.util
import logging
import math
from dataclasses import dataclass
from pathlib import Path
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
DEFAULT_SCORE_THRESHOLD = {"hog": -0.3, "cnn": 0.0, "retinaface": 0.8}


@dataclass
class Face:
    """One detected face, in the detector's input-image pixels.

    box: (4,) float32 x0, y0, x1, y1. landmarks5: (5,2) float32 (x, y), order in the module
    docstring. score: detector confidence (scale depends on the method). landmarks68: (68,2)
    float32 for the dlib methods, else None.
    """
    box: np.ndarray
    landmarks5: np.ndarray
    score: float
    landmarks68: np.ndarray | None = None

    @property
    def size(self) -> float:
        """Shorter side of the box, in pixels."""
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))

    @property
    def eye_distance(self) -> float:
        """Distance between the two eye centres, in pixels."""
        return float(np.linalg.norm(self.landmarks5[1] - self.landmarks5[0]))


def landmarks5_from_68(pts68: np.ndarray) -> np.ndarray:
    """(68,2) dlib/iBUG landmarks -> (5,2) float32 in the template's order."""
    p = np.asarray(pts68, dtype=np.float64)
    five = [p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]]
    return np.stack(five).astype(np.float32)


def dlib_model_path(name: str) -> Path:
    """Locate a model file of the ``face-recognition-models`` package without importing it
    (its ``__init__`` needs ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("dlib model files come from the package 'face-recognition-models' "
                          "(pip install face-recognition-models), which is not installed")
    for root in spec.submodule_search_locations:
        path = Path(root) / "models" / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"{name} not found in face_recognition_models "
                            f"({list(spec.submodule_search_locations)})")


def _check_rgb_uint8(img: np.ndarray) -> None:
    if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3
            and img.shape[2] == 3 and img.shape[0] > 0 and img.shape[1] > 0):
        desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {desc} "
                         "(convert grey/RGBA/16-bit images with datapipe.image_io first)")


class _DlibBackend:
    """dlib HOG or MMOD-CNN detector + 68-point shape predictor; models loaded once."""

    def __init__(self, cnn: bool, upsample: int, landmark_model=None, cnn_model=None):
        import dlib
        self.cnn, self.upsample = cnn, upsample
        if cnn:
            path = cnn_model or dlib_model_path("mmod_human_face_detector.dat")
            self.detector = dlib.cnn_face_detection_model_v1(str(path))
        else:
            self.detector = dlib.get_frontal_face_detector()
        path = landmark_model or dlib_model_path("shape_predictor_68_face_landmarks.dat")
        self.predictor = dlib.shape_predictor(str(path))

    def __call__(self, img: np.ndarray, threshold: float):
        """img HxWx3 uint8 RGB -> list of (box (4,), score, lm5 (5,2), lm68 (68,2))."""
        if self.cnn:
            found = [(d.rect, d.confidence) for d in self.detector(img, self.upsample)]
        else:
            rects, scores, _ = self.detector.run(img, self.upsample, threshold)
            found = list(zip(rects, scores))
        out = []
        for rect, score in found:
            if score < threshold:
                continue
            shape = self.predictor(img, rect)
            pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
            box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.float32)
            out.append((box, float(score), landmarks5_from_68(pts), pts))
        return out


class _RetinaFaceBackend:
    """RetinaFace-R50 through the optional ``facexlib`` package (lazy import)."""

    def __init__(self, device: str = "cpu", model_name: str = "retinaface_resnet50"):
        try:
            from facexlib.detection import init_detection_model
        except ImportError as err:
            raise ImportError("detector 'retinaface' needs the optional package 'facexlib' "
                              "(pip install facexlib); 'hog' and 'cnn' need only dlib") from err
        self.net = init_detection_model(model_name, half=False, device=device)

    def __call__(self, img: np.ndarray, threshold: float):
        import torch
        with torch.no_grad():
            dets = self.net.detect_faces(np.ascontiguousarray(img[..., ::-1]), threshold)
        return [(d[:4].astype(np.float32), float(d[4]), d[5:15].reshape(5, 2).astype(np.float32),
                 None) for d in dets]


class FaceDetector:
    """Detect faces and their five landmarks; build once, call ``detect`` per image.

    Args:
        method: "hog" (default), "cnn" or "retinaface" (needs ``facexlib``).
        upsample: dlib's pyramid upsampling count (1 finds faces down to ~40 px of the working
            image, 0 to ~80 px); ignored by retinaface.
        score_threshold: keep detections scoring at least this; None -> per method
            (hog -0.3: on the shared photos true faces scored >= -0.27, false ones <= -0.35;
            dlib's own default is 0; cnn 0.0; retinaface 0.8 as the official code).
        min_face_size: faces whose box is smaller than this (shorter side, input pixels) or whose
            eye distance is below ``min_face_size / 4`` are skipped and reported.
        work_min_side: the image is enlarged (bilinear) so its short side is at least this,
            like the official detector (640); None or 0 -> never enlarge.
        work_max_side: then shrunk (area) so its long side is at most this, for speed;
            None -> never shrink.
        landmark_model, cnn_model: explicit dlib model files (default: face-recognition-models).
        device: torch device for retinaface.
    """

    def __init__(self, method: str = "hog", *, upsample: int = 1,
                 score_threshold: float | None = None, min_face_size: float = 16.0,
                 work_min_side: int | None = 640, work_max_side: int | None = 2560,
                 landmark_model: str | Path | None = None, cnn_model: str | Path | None = None,
                 device: str = "cpu"):
        if method not in DEFAULT_SCORE_THRESHOLD:
            raise ValueError(f"unknown face detector {method!r}; allowed: "
                             f"{sorted(DEFAULT_SCORE_THRESHOLD)}")
        if upsample < 0 or min_face_size < 0:
            raise ValueError(f"upsample ({upsample}) and min_face_size ({min_face_size}) "
                             "must be >= 0")
        self.method = method
        self.score_threshold = (DEFAULT_SCORE_THRESHOLD[method] if score_threshold is None
                                else float(score_threshold))
        self.min_face_size = float(min_face_size)
        self.work_min_side, self.work_max_side = work_min_side, work_max_side
        if method == "retinaface":
            self._backend = _RetinaFaceBackend(device)
        else:
            self._backend = _DlibBackend(method == "cnn", upsample, landmark_model, cnn_model)

    def detect(self, img: np.ndarray) -> list[Face]:
        """img HxWx3 uint8 RGB -> faces kept, best score first (coordinates in ``img``)."""
        return self.detect_with_skipped(img)[0]

    def detect_with_skipped(self, img: np.ndarray, scale: float = 1.0) -> tuple[list[Face], list[Face]]:
        """Like ``detect`` but also returns the faces skipped for being too small.

        ``scale``: ``img`` is the user's photo enlarged by this factor (whole-photo mode enlarges
        small photos first); ``min_face_size`` stays in pixels of the photo as the user gave it.
        """
        _check_rgb_uint8(img)
        work, sx, sy = self._working_image(img)
        kept, skipped = [], []
        limit = self.min_face_size * scale
        for box, score, lm5, lm68 in self._backend(work, self.score_threshold):
            face = Face(_unscale(box.reshape(2, 2), sx, sy).reshape(4), _unscale(lm5, sx, sy),
                        score, None if lm68 is None else _unscale(lm68, sx, sy))
            small = face.size < limit or face.eye_distance < limit / 4
            (skipped if small else kept).append(face)
        for face in skipped:
            log.info("skipped a face of %.1f px (eye distance %.1f px) below min_face_size %.1f",
                     face.size / scale, face.eye_distance / scale, self.min_face_size)
        kept.sort(key=lambda f: -f.score)
        return kept, skipped

    def _working_image(self, img: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Resize for detection; returns (image, sx, sy) with sx = work width / input width."""
        h, w = img.shape[:2]
        f = 1.0
        if self.work_min_side:
            f = max(f, self.work_min_side / min(h, w))
        if self.work_max_side:
            f = min(f, self.work_max_side / max(h, w))
        if f == 1.0:
            return np.ascontiguousarray(img), 1.0, 1.0
        size = (max(1, round(w * f)), max(1, round(h * f)))
        interp = cv2.INTER_LINEAR if f > 1 else cv2.INTER_AREA
        return cv2.resize(img, size, interpolation=interp), size[0] / w, size[1] / h


def _unscale(pts: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Working-image points (N,2) -> input-image points, pixel-centre aligned like cv2.resize."""
    pts = np.asarray(pts, dtype=np.float64)
    scale = np.array([sx, sy])
    return ((pts + 0.5) / scale - 0.5).astype(np.float32)


# ----------------------------------------------------------------------------- resizing
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
