"""Faces followed through the frames of a video, and their landmarks smoothed over time.

`FaceTracker` gives every detected face a track id: a face continues the track whose last face
(seen at most `max_gap` frames ago) overlaps it (box IoU at least `min_iou`) and whose five
landmarks lie close to its own (mean distance at most `max_shift` times that face's eye
distance); pairs are taken greedily, closest landmarks first. A face matching no track starts
a new one; ids count up from 0 in the order tracks start (faces of one frame in the detector's
order), so they depend on the frames alone.

`TrackSmoother` replaces a face's landmarks by their mean over a centred window of its track,
frames t-j .. t+j for the largest j <= `radius` with every one of those frames in the track:
the window is symmetric, so a face moving at constant speed keeps its landmarks exactly while
the detector's frame-to-frame jitter is averaged out (a still face stays still). It needs the
frames up to t + radius before it can answer for frame t.

Points are (x, y) in frame pixels, as `datapipe.faces.Face` gives them.
"""
from __future__ import annotations

from collections import defaultdict

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


class TrackSmoother:
    """Landmarks of each track by frame; `smoothed` averages them over a centred window."""

    def __init__(self, radius: int = 3):
        if radius < 0:
            raise ValueError(f"the smoothing radius must be >= 0 frames, got {radius}")
        self.radius = radius
        self.points: dict[int, dict[int, tuple[np.ndarray, np.ndarray | None]]] = defaultdict(dict)

    def add(self, frame: int, ids: list[int], faces: list[Face]) -> None:
        for track, face in zip(ids, faces):
            lm68 = None if face.landmarks68 is None else np.asarray(face.landmarks68, np.float64)
            self.points[track][frame] = (np.asarray(face.landmarks5, np.float64), lm68)

    def smoothed(self, frame: int, track: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(5,2) and (68,2) or None: the track's landmarks at `frame`, averaged over the window."""
        seen = self.points[track]
        window = [frame]
        for j in range(1, self.radius + 1):
            if frame - j not in seen or frame + j not in seen:
                break
            window += [frame - j, frame + j]
        lm5 = np.mean([seen[f][0] for f in window], axis=0)
        has68 = all(seen[f][1] is not None for f in window)
        lm68 = np.mean([seen[f][1] for f in window], axis=0) if has68 else seen[frame][1]
        return lm5.astype(np.float32), None if lm68 is None else lm68.astype(np.float32)

    def forget_before(self, frame: int) -> None:
        """Drop what no later answer needs (frames before `frame - radius`)."""
        for track in list(self.points):
            seen = self.points[track]
            for f in [f for f in seen if f < frame - self.radius]:
                del seen[f]
            if not seen:
                del self.points[track]
