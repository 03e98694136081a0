"""Face detection for whole photos: faces and their five (and, with dlib, 68) landmarks
(docs/method.md#whole-image-pipeline). Aligning the faces to a template and pasting restored
crops back is ``datapipe/face_align.py``; the photo-level steps around both, ``datapipe/photos.py``.

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
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

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
