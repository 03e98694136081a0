"""Faces followed through the frames of a video, and their landmarks smoothed over time.

`FaceTracker` gives every detected face a track id: a face continues the track whose last face
(seen at most `max_gap` frames ago) overlaps it (box IoU at least `min_iou`) and whose five
landmarks lie close to its own (mean distance at most `max_shift` times that face's eye
distance); pairs are taken greedily, closest landmarks first. A face matching no track starts
a new one; ids count up from 0 in the order tracks start (faces of one frame in the detector's
order), so they depend on the frames alone.

`MotionFilter` steadies each track's landmarks: they follow the face's motion measured between
consecutive frames (`face_motion`, template matching) and move only part of the way towards each
new detection, so the detector's frame-to-frame jitter is averaged out while a moving face is
followed without lag (a still face stays still).

`TrackWindow` holds a value per track and frame (e.g. the estimator's output for the face) and
gives the centred window of frame t: frames t-j .. t+j for the largest j <= `radius` with every
one of those frames in the track. It needs the frames up to t + radius before it can answer for
frame t.

Points are (x, y) in frame pixels, as `datapipe.faces.Face` gives them.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import cv2
import numpy as np

from .faces import Face


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (4,) x0, y0, x1, y1 boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, float(w)) * max(0.0, float(h))
    union = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])) - inter
    return inter / union if union > 0 else 0.0


def landmark_distance(a: Face, b: Face) -> float:
    """Mean distance between the five landmarks of two faces, in units of `b`'s eye distance."""
    shift = np.linalg.norm(np.asarray(a.landmarks5, np.float64) - np.asarray(b.landmarks5, np.float64), axis=1)
    return float(shift.mean()) / max(b.eye_distance, 1.0)


class FaceTracker:
    """Track ids for the faces of consecutive frames; call `update` once per frame, in order."""

    def __init__(self, min_iou: float = 0.3, max_shift: float = 1.0, max_gap: int = 5):
        self.min_iou, self.max_shift, self.max_gap = min_iou, max_shift, max_gap
        self.frame = -1
        self.last: dict[int, tuple[int, Face]] = {}  # track id -> (frame last seen, face)
        self.count = 0  # tracks started so far

    def update(self, faces: list[Face]) -> list[int]:
        """The track id of each face of the next frame."""
        self.frame += 1
        self.last = {k: v for k, v in self.last.items() if self.frame - v[0] <= self.max_gap + 1}
        pairs = []
        for track, (_, old) in self.last.items():
            for i, face in enumerate(faces):
                iou, dist = box_iou(face.box, old.box), landmark_distance(face, old)
                if iou >= self.min_iou and dist <= self.max_shift:
                    pairs.append((dist, -iou, track, i))
        ids: list[int | None] = [None] * len(faces)
        taken = set()
        for _, _, track, i in sorted(pairs):
            if ids[i] is None and track not in taken:
                ids[i] = track
                taken.add(track)
        for i, face in enumerate(faces):
            if ids[i] is None:
                ids[i], self.count = self.count, self.count + 1
            self.last[ids[i]] = (self.frame, face)
        return ids


class TrackWindow:
    """Values (landmarks, estimates, ...) of each track by frame, and their centred windows."""

    def __init__(self, radius: int = 3):
        if radius < 0:
            raise ValueError(f"the window radius must be >= 0 frames, got {radius}")
        self.radius = radius
        self.values: dict[int, dict[int, object]] = defaultdict(dict)

    def add(self, frame: int, track: int, value) -> None:
        self.values[track][frame] = value

    def centred(self, frame: int, track: int) -> list:
        """The track's values at frames t, t-1, t+1, ..., t-j, t+j for the largest j <= radius
        with every one of those frames in the track (the value at t itself must be there)."""
        seen = self.values[track]
        window = [seen[frame]]
        for j in range(1, self.radius + 1):
            if frame - j not in seen or frame + j not in seen:
                break
            window += [seen[frame - j], seen[frame + j]]
        return window

    def forget_before(self, frame: int) -> None:
        """Drop what no later window needs (frames before `frame - radius`)."""
        for track in list(self.values):
            seen = self.values[track]
            for f in [f for f in seen if f < frame - self.radius]:
                del seen[f]
            if not seen:
                del self.values[track]


def face_motion(prev: np.ndarray, cur: np.ndarray, box: np.ndarray, reach: float = 0.25) -> tuple[np.ndarray, float]:
    """(dx, dy) by which the content of `box` (x0, y0, x1, y1) moved from the grey frame `prev` to
    `cur` (HxW float32), and how well it matched (normalised correlation, -1..1; 0 when the box is
    too small or too near the border to say). The central 80% of the box of each frame is searched
    for in the other within `reach` times its side (template matching, the peak refined to sub-pixel
    by a parabola); the two answers are averaged, so identical frames give exactly no motion."""
    forward, match = _match(prev, cur, box, reach)
    backward, match_back = _match(cur, prev, box, reach)
    return (forward - backward) / 2, min(match, match_back)


def _match(prev: np.ndarray, cur: np.ndarray, box: np.ndarray, reach: float) -> tuple[np.ndarray, float]:
    h, w = cur.shape
    x0, y0, x1, y1 = (float(v) for v in box)
    mx, my = 0.1 * (x1 - x0), 0.1 * (y1 - y0)
    r = max(2, round(reach * min(x1 - x0, y1 - y0)))
    x0, x1 = max(r, round(x0 + mx)), min(w - r, round(x1 - mx))
    y0, y1 = max(r, round(y0 + my)), min(h - r, round(y1 - my))
    if x1 - x0 < 12 or y1 - y0 < 12:
        return np.zeros(2), 0.0
    score = cv2.matchTemplate(cur[y0 - r:y1 + r, x0 - r:x1 + r], prev[y0:y1, x0:x1], cv2.TM_CCOEFF_NORMED)
    _, best, _, (px, py) = cv2.minMaxLoc(score)

    def vertex(left: float, centre: float, right: float) -> float:
        bend = left - 2 * centre + right
        return 0.0 if bend >= 0 else float(np.clip(0.5 * (left - right) / bend, -0.5, 0.5))

    dx = vertex(*score[py, px - 1:px + 2]) if 0 < px < score.shape[1] - 1 else 0.0
    dy = vertex(*score[py - 1:py + 2, px]) if 0 < py < score.shape[0] - 1 else 0.0
    return np.array([px + dx - r, py + dy - r]), float(best)


class MotionFilter:
    """Landmarks that follow each track's measured motion and are pulled towards its detections.

    A detector's landmarks on a degraded frame jitter by a pixel or more; the motion of a face
    between two consecutive frames (`face_motion` over its box) is measured far more precisely
    (about 0.1 px on the degraded clip of docs/video.md). Per track: predicted = last landmarks +
    that motion; kept = predicted + `weight` * (detected - predicted), so the landmarks move with
    the face and the detector's jitter is averaged out (about `weight` / (2 - `weight`) of its
    variance remains), and a still face stays still. A new track starts as the running mean of its
    detections (gain 1/n in its n-th frame) until the gain falls to `weight`. A motion that matches
    poorly (correlation below `min_match`: a turn of the head, a cut) restarts from the detection,
    as does a track not seen in the previous frame.
    """

    def __init__(self, weight: float = 0.2, min_match: float = 0.5):
        if not 0 < weight <= 1:
            raise ValueError(f"the detection weight must lie in (0, 1], got {weight}")
        self.weight, self.min_match = weight, min_match
        self.grey: np.ndarray | None = None
        self.last: dict[int, Face] = {}
        self.seen: dict[int, int] = {}  # frames in a row each track has been followed

    def update(self, image: np.ndarray, ids: list[int], faces: list[Face]) -> list[Face]:
        """Faces with filtered landmarks for the next frame (HxWx3 uint8 RGB) and its tracked faces."""
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
        kept, last, seen = [], {}, {}
        for track, face in zip(ids, faces):
            old, out, seen[track] = self.last.get(track), face, 1
            if old is not None and self.grey is not None and self.grey.shape == grey.shape:
                shift, match = face_motion(self.grey, grey, old.box)
                if match >= self.min_match:
                    seen[track] = self.seen[track] + 1
                    gain = max(self.weight, 1.0 / seen[track])  # a running mean until the weight is reached
                    out = replace(face, landmarks5=_blend(old.landmarks5, shift, face.landmarks5, gain),
                                  landmarks68=None if old.landmarks68 is None or face.landmarks68 is None
                                  else _blend(old.landmarks68, shift, face.landmarks68, gain))
            kept.append(out)
            last[track] = replace(out, box=face.box)
        self.grey, self.last, self.seen = grey, last, seen
        return kept


def _blend(old: np.ndarray, shift: np.ndarray, detected: np.ndarray, gain: float) -> np.ndarray:
    predicted = np.asarray(old, np.float64) + shift
    return (predicted + gain * (np.asarray(detected, np.float64) - predicted)).astype(np.float32)
