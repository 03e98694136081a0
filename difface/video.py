"""Videos through the Restorer: every face of every frame restored as in whole-photo mode, over time.

    r = difface.Restorer("demo", device="cpu")
    res = r.restore_video("clip.mp4", "out/clip.mp4")   # H.264, frame size x upscale, audio copied
    res.frames, res.faces_per_frame, res.seconds_per_frame

What differs from restoring the frames as separate photos is what makes a restored face hold
still (docs/video.md):
* faces are tracked through the frames (`datapipe.tracks.FaceTracker`), and every face of a
  track draws the same noise in every frame: its generator comes from (seed, f"{name}#track{id}"),
  so the sampler's path only moves where the input moves;
* each face's landmarks follow the face's measured motion from frame to frame and are pulled
  only by `detection_weight` towards each new detection (`datapipe.tracks.MotionFilter`), so the
  crop moves with the face and not with the detector's jitter: the same noise then meets the same
  part of the face in every frame;
* optionally (`estimate_radius` > 0) the estimator's outputs of a track are averaged over a centred
  window of frames before the diffusion, which also evens out what the degradation changes from
  frame to frame (at the cost of blurring fast changes of expression).
* the sampler runs with eta = 0 (a deterministic DDIM path) unless `eta` is given.
`temporal=False` restores the frames independently instead (a generator per frame and face, the
landmarks as detected), as restoring the extracted frames as separate photos would.

The output frame is the input frame times `upscale` (Lanczos background, faces pasted back);
whole photos are first enlarged to a 512 px short side, video frames are not. Frames are
prepared (detected, tracked, aligned) until `batch_size` faces or frames wait, then their faces
are restored together; every face has its own generator, so the pixels do not depend on the
batch size.
"""
from __future__ import annotations

import queue
import threading
import time
import warnings
from collections import deque
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from datapipe.face_align import align_face, align_face_ffhq, is_ffhq_template
from datapipe.image_io import is_grey, tensor_to_uint8, to_grey, uint8_to_tensor
from datapipe.limits import MAX_DOWNSCALE
from datapipe.photos import PendingPhoto, PhotoResult, finish_photo
from datapipe.tracks import FaceTracker, MotionFilter, TrackWindow
from datapipe.video import DecodedFrame, VideoError, VideoWriter, probe_video, read_frames
from models.difface import DifFace

VIDEO_ETA = 0.0  # a deterministic sampler path unless eta is given: the track's noise is all its randomness
DEFAULT_DETECTION_WEIGHT = 0.2  # landmarks follow the measured motion, pulled 20% towards each detection
DEFAULT_ESTIMATE_RADIUS = 0  # the estimator's outputs of each frame as they are


@dataclass
class RestoredFrame:
    """One restored frame: `image` (H*upscale) x (W*upscale) x 3 uint8 RGB, shown at `time` seconds."""

    index: int
    time: float
    image: np.ndarray
    tracks: list[int]           # the track id of each restored face
    photo: PhotoResult          # faces restored, kept (too large) and skipped (too small)
    seconds: float              # detection, alignment, restoration and paste-back of this frame


@dataclass
class VideoResult:
    """What `Restorer.restore_video` did; `info()` is the manifest's entry."""

    name: str
    output: Path
    size: tuple[int, int]        # input frame (width, height) as displayed
    out_size: tuple[int, int]
    rate: float
    frames: int = 0
    faces_per_frame: list[int] = field(default_factory=list)
    tracks: int = 0
    seconds: float = 0.0
    rotation: int = 0
    audio: str | None = None     # 'copied', 're-encoded to aac', or None
    codec: str | None = None

    @property
    def seconds_per_frame(self) -> float:
        return self.seconds / max(1, self.frames)

    def info(self) -> dict:
        return {"kind": "video", "size": list(self.size), "out_size": list(self.out_size), "fps": round(self.rate, 4),
                "frames": self.frames, "faces_per_frame": self.faces_per_frame, "tracks": self.tracks,
                "seconds_per_frame": round(self.seconds_per_frame, 3), "rotation": self.rotation,
                "audio": self.audio, "codec": self.codec}


class _Frame:
    """A frame on its way through detection, alignment, estimation and sampling."""

    def __init__(self, index: int, time: float, image: np.ndarray, faces, skipped, ids, seconds: float):
        self.index, self.time, self.image = index, time, image
        self.faces, self.skipped, self.ids, self.seconds = faces, skipped, ids, seconds
        self.steady: list = faces          # the faces with the landmarks the crops are aligned to
        self.pending: PendingPhoto | None = None
        self.tracks: list[int] = []         # the track of each face restored (pending.keys' order)
        self.estimates: torch.Tensor | None = None  # (F, 3, S, S) the estimator's output per face


@dataclass
class _Settings:
    name: str
    method: DifFace
    seed: int
    upscale: int
    allow_downscale: bool
    draw_box: bool
    temporal: bool


def _lookahead(items: Iterable, radius: int) -> Iterator:
    """Each item once `radius` later ones have been drawn from `items` (or `items` has ended)."""
    window: deque = deque()
    for item in items:
        window.append(item)
        if len(window) > radius:
            yield window.popleft()
    yield from window


def restore_frames(restorer, frames: Iterable[np.ndarray | DecodedFrame], name: str, *, seed: int | None = None,
                   method=None, upscale: int = 2, only_center_face: bool = False, allow_downscale: bool = False,
                   draw_box: bool = False, detection_weight: float = DEFAULT_DETECTION_WEIGHT,
                   estimate_radius: int = DEFAULT_ESTIMATE_RADIUS, temporal: bool = True,
                   rate: float = 25.0, overlap: bool = True) -> Iterator[RestoredFrame]:
    """Restore the faces of consecutive frames (HxWx3 uint8 RGB arrays, or `DecodedFrame`s), in order.

    `name` names the random streams (the command line passes the video's relative path);
    `detection_weight` in (0, 1]: how far the landmarks move towards each detection (1: as detected);
    `estimate_radius`: the estimator's outputs of a track averaged over up to 2 * estimate_radius + 1
    frames (0: each frame's own); `rate` gives array frames their times. `temporal=False`: each
    frame on its own (see the module docstring). `overlap`: frames are drawn from `frames` (decoded)
    and their faces detected and tracked by a background thread, while the faces of earlier frames
    are restored (dlib, PyAV and torch release the interpreter lock); the pixels are the same without.
    """
    method = method or restorer.sampling(eta=VIDEO_ETA if temporal else None)
    if method.auto is not None:  # a start step per face and frame would change from frame to frame
        warnings.warn(f"{name}: start step 'auto' applies to images; the video is restored at the fixed N = "
                      f"{method.start_step}")
        method = method.with_start_step(method.start_step)
    run = _Settings(name, method, restorer.cfg.seed if seed is None else int(seed), upscale, allow_downscale,
                    draw_box, temporal)
    tracker = FaceTracker()
    motion = MotionFilter(detection_weight) if temporal and detection_weight < 1 else None
    estimates = TrackWindow(estimate_radius if temporal else 0)

    def decoded():
        for n, frame in enumerate(frames):
            yield frame if isinstance(frame, DecodedFrame) else DecodedFrame(n, n / rate, frame)

    detected = (_detect(restorer, f, tracker, motion, only_center_face) for f in decoded())
    detected = _prefetched(detected) if overlap else detected
    try:
        ready: list[_Frame] = []
        for frame in _lookahead((_align(restorer, f, estimates, run) for f in detected), estimates.radius):
            frame.estimates = (torch.stack([torch.stack(estimates.centred(frame.index, t)).mean(0)
                                            for t in frame.tracks]) if frame.tracks else None)
            estimates.forget_before(frame.index)
            ready.append(frame)
            if sum(len(f.tracks) for f in ready) >= restorer.cfg.batch_size or len(ready) >= restorer.cfg.batch_size:
                yield from _finish(restorer, ready, run)
        yield from _finish(restorer, ready, run)
    finally:
        detected.close()  # stops the thread now, also when the caller stops early or fails


def _detect(restorer, frame: DecodedFrame, tracker, motion, only_center_face: bool) -> _Frame:
    start = time.perf_counter()
    image = frame.image
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"frame {frame.index}: expected an HxWx3 uint8 RGB array, got {image.dtype} {image.shape}")
    with restorer.face_detector() as detector:
        found, skipped = detector.detect_with_skipped(image)
    if only_center_face and found:
        centre = np.array([image.shape[1] - 1, image.shape[0] - 1]) / 2
        found = [min(found, key=lambda f: float(np.linalg.norm(f.box.reshape(2, 2).mean(0) - centre)))]
    ids = tracker.update(found)
    frame = _Frame(frame.index, frame.time, image, found, skipped, ids, 0.0)
    frame.steady = motion.update(image, ids, found) if motion is not None else found
    frame.seconds = time.perf_counter() - start
    return frame


def _align(restorer, frame: _Frame, estimates, run: _Settings) -> _Frame:
    """Crops of the frame's faces at their filtered landmarks, their estimates and the upscaled background."""
    start = time.perf_counter()
    cfg = restorer.cfg
    template = np.asarray(cfg.face.template, dtype=np.float32)
    ffhq = is_ffhq_template(template, cfg.face.template_size)
    faces, kept, crops, affines, keys, sizes = [], [], [], [], [], {}
    for k, (face, steady, track) in enumerate(zip(frame.faces, frame.steady, frame.ids)):
        lm5, lm68 = steady.landmarks5, steady.landmarks68
        if ffhq and lm68 is not None:
            crop, affine = align_face_ffhq(frame.image, lm68, cfg.image_size, list(cfg.face.border_value))
        else:
            crop, affine = align_face(frame.image, lm5, face_size=cfg.image_size, template=template,
                                      template_size=cfg.face.template_size, border_value=list(cfg.face.border_value))
        sizes[id(face)] = cfg.image_size / np.sqrt(abs(np.linalg.det(affine[:, :2])))
        if sizes[id(face)] > MAX_DOWNSCALE * cfg.image_size and not run.allow_downscale:
            kept.append(face)
            continue
        faces.append(face)
        crops.append(crop)
        affines.append(affine)
        frame.tracks.append(track)
        keys.append(f"{run.name}#track{track}" if run.temporal else f"{run.name}#frame{frame.index}#face{k}")
    background = restorer.background(run.upscale)(frame.image, run.upscale)
    result = PhotoResult(images=[background], faces=faces, skipped=frame.skipped, kept=kept, sizes=sizes,
                         crops=crops)
    tensor = torch.stack([uint8_to_tensor(c) for c in crops]) if crops else None
    frame.pending = PendingPhoto(result, tensor, keys, affines, run.upscale, run.draw_box)
    if crops:
        with torch.no_grad():
            own = run.method.estimate_input(tensor.to(restorer.device)).float().cpu()
        for track, estimate in zip(frame.tracks, own):
            estimates.add(frame.index, track, estimate)
    frame.seconds += time.perf_counter() - start
    return frame


def _finish(restorer, ready: list[_Frame], run: _Settings) -> Iterator[RestoredFrame]:
    """Sample the faces of the frames that wait, together, from their (averaged) estimates, and paste
    them back (grey frames stay grey)."""
    if not ready:
        return
    start = time.perf_counter()
    keys = [k for f in ready for k in f.pending.keys]
    restored = None
    if keys:
        crops = torch.cat([f.pending.crops for f in ready if f.tracks])
        estimates = torch.cat([f.estimates for f in ready if f.tracks])
        restored = restorer.restore_crops(run.method, crops, keys, run.seed, 1, given=estimates)[0][0]
    share = (time.perf_counter() - start) / max(1, len(keys))
    done, first = [], 0
    for frame in ready:
        began, count = time.perf_counter(), len(frame.tracks)
        photo = finish_photo(frame.pending, [restored[first:first + count]] if count else [])
        first += count
        image = photo.images[0]
        if is_grey(uint8_to_tensor(frame.image)):
            image = tensor_to_uint8(to_grey(uint8_to_tensor(image)))
        seconds = frame.seconds + share * count + time.perf_counter() - began
        done.append(RestoredFrame(frame.index, frame.time, image, frame.tracks, photo, seconds))
    ready.clear()
    yield from done


Progress = Callable[[int, int], None]  # (frames done, frames expected; 0 when unknown)
_END = object()
QUEUE_FRAMES = 8  # decoded frames waiting for the restoration, restored frames waiting for the encoder


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put `item` on `q`, waiting while it is full, unless `stop` is set first; whether it was put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            pass
    return False


def _prefetched(items: Iterator, depth: int | None = None) -> Iterator:
    """The items of `items`, drawn by a background thread up to `depth` (QUEUE_FRAMES) ahead. The
    thread's exception is raised here; closing this generator stops the thread and closes `items`."""
    q: queue.Queue = queue.Queue(maxsize=depth or QUEUE_FRAMES)
    stop = threading.Event()

    def draw() -> None:
        try:
            for item in items:
                if not _put(q, (item, None), stop):
                    return
            _put(q, (_END, None), stop)
        except BaseException as e:  # handed to the consumer
            _put(q, (_END, e), stop)
        finally:
            getattr(items, "close", lambda: None)()

    thread = threading.Thread(target=draw, name="difface-decode", daemon=True)
    thread.start()
    try:
        while True:
            item, error = q.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join()


@contextmanager
def _encoder(writer: VideoWriter, depth: int | None = None):
    """A `write(image, time)` that hands the frames to a thread encoding them with `writer`, so that
    encoding overlaps the restoration of the next frames. Leaving the block waits for the last frame;
    an encoding error is raised at the next write or there. On an exception the queued frames are
    dropped (the writer then discards its file)."""
    q: queue.Queue = queue.Queue(maxsize=depth or QUEUE_FRAMES)
    stop, failed = threading.Event(), []

    def encode() -> None:
        try:
            while (item := q.get()) is not _END and not stop.is_set():
                writer.write(*item)
        except BaseException as e:  # raised in the restoring thread
            failed.append(e)
            stop.set()

    def write(image: np.ndarray, time: float) -> None:
        if failed or not _put(q, (image, time), stop):
            raise failed[0]

    thread = threading.Thread(target=encode, name="difface-encode", daemon=True)
    thread.start()
    try:
        yield write
    except BaseException:
        stop.set()
        with suppress(queue.Full):  # wakes the thread if it waits for a frame
            q.put_nowait(_END)
        thread.join()
        raise
    if _put(q, _END, stop):
        thread.join()
    if failed:
        raise failed[0]


def restore_video(restorer, path, out_path, *, name: str | None = None, start: float = 0.0,
                  end: float | None = None, max_frames: int | None = None, progress: Progress | None = None,
                  seed: int | None = None, start_step: int | None = None, steps: int | None = None,
                  sampler: str | None = None, eta: float | None = None, upscale: int = 2,
                  only_center_face: bool = False, allow_downscale: bool = False, draw_box: bool = False,
                  detection_weight: float = DEFAULT_DETECTION_WEIGHT,
                  estimate_radius: int = DEFAULT_ESTIMATE_RADIUS, temporal: bool = True,
                  overlap: bool = True) -> VideoResult:
    """Restore a video file into `out_path` (an MP4; see `datapipe.video` for the format rules).

    With `overlap` two background threads decode the frames and detect their faces, and encode the
    restored frames, while the faces are restored (the pixels are the same without).

    Raises `VideoError` for a file that is not a readable video or whose output would be too large
    (`Restorer.restore_video`: `difface.InputError`); the output appears only when complete.
    """
    path, out_path = Path(path), Path(out_path)
    name = name or path.name
    method = restorer.sampling(start_step, steps, sampler, VIDEO_ETA if eta is None and temporal else eta)
    info = probe_video(path)
    w, h = info.width * upscale, info.height * upscale
    if w * h > restorer.max_output_pixels:
        raise VideoError(f"{name}: the restored frames would be {w}x{h} = {w * h / 1e6:.1f} megapixels (input "
                         f"{info.width}x{info.height} at upscale {upscale}), above the output limit of "
                         f"{restorer.max_output_pixels / 1e6:.1f} (--max-output-pixels)")
    if info.width * info.height > restorer.max_pixels:
        raise VideoError(f"{name}: frames of {info.width}x{info.height} are above the input limit of "
                         f"{restorer.max_pixels / 1e6:.1f} megapixels (--max-pixels)")
    result = VideoResult(name, out_path, (info.width, info.height), (w + w % 2, h + h % 2), float(info.rate),
                         rotation=info.rotation)
    expected = info.frame_range(start, end, max_frames)
    with VideoWriter(out_path, info.rate, audio_from=path, start=start,
                     end=_range_end(info, start, end, max_frames)) as writer, _encoding(writer, overlap) as write, \
            closing(restore_frames(restorer, read_frames(path, start, end, max_frames), name, seed=seed, method=method,
                                   upscale=upscale, only_center_face=only_center_face, allow_downscale=allow_downscale,
                                   draw_box=draw_box, detection_weight=detection_weight,
                                   estimate_radius=estimate_radius, temporal=temporal, overlap=overlap)) as restored:
        for frame in restored:
            write(frame.image, frame.time - start)
            result.frames += 1
            result.faces_per_frame.append(len(frame.photo.faces))
            result.tracks = max([result.tracks] + [t + 1 for t in frame.tracks])
            result.seconds += frame.seconds
            if progress is not None:
                progress(result.frames, max(expected, result.frames))
    result.codec, result.audio = writer.codec, writer.audio
    return result


@contextmanager
def _encoding(writer: VideoWriter, overlap: bool):
    if overlap:
        with _encoder(writer) as write:
            yield write
    else:
        yield writer.write


def _range_end(info, start: float, end: float | None, max_frames: int | None) -> float | None:
    """The end of the input range in seconds where --end or --max-frames cut the clip (the audio stops there)."""
    ends = [e for e in (end, None if max_frames is None else start + max_frames / float(info.rate)) if e is not None]
    return min(ends) if ends else None
