"""Face metrics built on dlib and the model files of the ``face-recognition-models`` package.

* ``id_dlib``: Euclidean distance between dlib's 128-d face descriptors (ResNet-34 metric
  network, ``dlib_face_recognition_resnet_model_v1.dat``, aligned with the 5-point shape
  predictor) of the restored image and its ground truth. dlib treats distances below 0.6 as
  "same person". This is *not* ArcFace and is never reported as IDS (see ``metrics/arcface.py``).
* ``lmd_dlib68``: mean L2 distance (pixels at the GT resolution) between dlib's 68 landmarks
  of the restored image and of the ground truth.

Both use one face box for the pair: dlib's HOG detector on the ground truth (largest face);
when it finds none, the whole image (the right fallback for aligned crops), which is
reported in the per-image note.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from datapipe import faces

from .common import Measurement, MetricUnavailable, check_pair

SHAPE_5 = "shape_predictor_5_face_landmarks.dat"
SHAPE_68 = "shape_predictor_68_face_landmarks.dat"
FACE_REC = "dlib_face_recognition_resnet_model_v1.dat"


def _dlib():
    try:
        import dlib
    except ImportError as e:
        raise MetricUnavailable("dlib face metrics need the package dlib (pip install dlib-bin)") from e
    return dlib


def dlib_model_path(filename: str) -> Path:
    """Path of ``filename`` of the installed ``face-recognition-models`` package, or
    MetricUnavailable saying what to install."""
    try:
        return faces.dlib_model_path(filename)
    except (ImportError, FileNotFoundError) as e:
        raise MetricUnavailable(f"dlib face metrics need {filename}: {e}") from None


@functools.lru_cache(maxsize=None)
def _detector():
    return _dlib().get_frontal_face_detector()


@functools.lru_cache(maxsize=None)
def _shape_predictor(filename: str):
    return _dlib().shape_predictor(str(dlib_model_path(filename)))


@functools.lru_cache(maxsize=None)
def _face_recognizer():
    return _dlib().face_recognition_model_v1(str(dlib_model_path(FACE_REC)))


def face_box(img: np.ndarray):
    """Largest HOG-detected face of ``img`` (``(H, W, 3)`` uint8 RGB) or the whole image.

    Returns:
        ``(dlib.rectangle, source)`` with ``source`` in ``{'detected', 'full_image'}``.
    """
    faces = _detector()(np.ascontiguousarray(img), 0)
    if len(faces):
        return max(faces, key=lambda r: r.area()), "detected"
    h, w = img.shape[:2]
    return _dlib().rectangle(0, 0, w - 1, h - 1), "full_image"


def landmarks(img: np.ndarray, box, filename: str = SHAPE_68) -> np.ndarray:
    """``(K, 2)`` float64 ``(x, y)`` landmarks of the face in ``box`` (K = 68 or 5)."""
    shape = _shape_predictor(filename)(np.ascontiguousarray(img), box)
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def face_descriptor(img: np.ndarray, box) -> np.ndarray:
    """dlib's 128-d descriptor of the face in ``box`` (5-point alignment, no jitter)."""
    img = np.ascontiguousarray(img)
    shape = _shape_predictor(SHAPE_5)(img, box)
    return np.array(_face_recognizer().compute_face_descriptor(img, shape, 0), dtype=np.float64)


class DlibIdentity:
    """``id_dlib``: L2 distance of dlib face descriptors (lower = more alike; < 0.6 same person)."""
    name = "id_dlib"
    weights = f"dlib {FACE_REC} + {SHAPE_5} (face-recognition-models), HOG detector on GT"
    higher_is_better = False
    kind = "pair"

    def __init__(self, device: str = "cpu"):
        _face_recognizer(), _shape_predictor(SHAPE_5)  # load once, fail early
        del device  # dlib runs on the CPU

    def measure(self, restored: np.ndarray, gt: np.ndarray) -> Measurement:
        """Args: ``(H, W, 3)`` uint8 RGB images of equal size."""
        check_pair(restored, gt)
        box, source = face_box(gt)
        dist = np.linalg.norm(face_descriptor(restored, box) - face_descriptor(gt, box))
        return Measurement(float(dist), f"box={source}")

    def __call__(self, restored: np.ndarray, gt: np.ndarray) -> float:
        return self.measure(restored, gt).value


class DlibLandmarkDistance:
    """``lmd_dlib68``: mean L2 distance of the 68 dlib landmarks, pixels at GT resolution."""
    name = "lmd_dlib68"
    weights = f"dlib {SHAPE_68} (face-recognition-models), HOG detector on GT"
    higher_is_better = False
    kind = "pair"

    def __init__(self, device: str = "cpu"):
        _shape_predictor(SHAPE_68)
        del device

    def measure(self, restored: np.ndarray, gt: np.ndarray) -> Measurement:
        """Args: ``(H, W, 3)`` uint8 RGB images of equal size."""
        check_pair(restored, gt)
        box, source = face_box(gt)
        d = np.linalg.norm(landmarks(restored, box) - landmarks(gt, box), axis=1)
        return Measurement(float(d.mean()), f"box={source}")

    def __call__(self, restored: np.ndarray, gt: np.ndarray) -> float:
        return self.measure(restored, gt).value
