"""Videos through the Restorer: every face of every frame restored as in whole-photo mode, over time.

    r = difface.Restorer("demo", device="cpu")
    res = r.restore_video("clip.mp4", "out/clip.mp4")   # H.264, frame size x upscale, audio copied
    res.frames, res.faces_per_frame, res.seconds_per_frame

What differs from restoring the frames as separate photos is what makes a restored face hold
still (docs/video.md):
* faces are tracked through the frames (`datapipe.tracks.FaceTracker`), and every face of a
  track draws the same noise in every frame: its generator comes from (seed, f"{name}#track{id}"),
  so the sampler's path only moves where the input moves;
* each face's landmarks are averaged over a centred window of its track before alignment
  (`datapipe.tracks.TrackSmoother`), so detector jitter does not shake the crop.
`temporal=False` restores the frames independently instead (a generator per frame and face, the
landmarks as detected), as restoring the extracted frames as separate photos would.

The output frame is the input frame times `upscale` (Lanczos background, faces pasted back);
whole photos are first enlarged to a 512 px short side, video frames are not. Frames are
prepared (detected, tracked, aligned) until `batch_size` faces or frames wait, then their faces
are restored together; every face has its own generator, so the pixels do not depend on the
batch size.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from datapipe.face_align import align_face, align_face_ffhq, is_ffhq_template
from datapipe.image_io import is_grey, tensor_to_uint8, to_grey, uint8_to_tensor
from datapipe.limits import MAX_DOWNSCALE
from datapipe.photos import PendingPhoto, PhotoResult, finish_photo
from datapipe.tracks import FaceTracker, TrackSmoother
from datapipe.video import DecodedFrame, VideoError, VideoWriter, probe_video, read_frames

DEFAULT_RADIUS = 3  # landmarks averaged over up to 7 frames


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
    """A frame between detection and restoration."""

    def __init__(self, index: int, time: float, image: np.ndarray, faces, skipped, ids, seconds: float):
        self.index, self.time, self.image = index, time, image
        self.faces, self.skipped, self.ids, self.seconds = faces, skipped, ids, seconds


def restore_frames(restorer, frames: Iterable[np.ndarray | DecodedFrame], name: str, *, seed: int | None = None,
                   method=None, upscale: int = 2, only_center_face: bool = False, allow_downscale: bool = False,
                   draw_box: bool = False, radius: int = DEFAULT_RADIUS, temporal: bool = True,
                   rate: float = 25.0) -> Iterator[RestoredFrame]:
    """Restore the faces of consecutive frames (HxWx3 uint8 RGB arrays, or `DecodedFrame`s), in order.

    `name` names the random streams (the command line passes the video's relative path);
    `radius`: landmarks averaged over up to 2 * radius + 1 frames (0: as detected); `rate` gives
    array frames their times. `temporal=False`: each frame on its own (see the module docstring).
    """
    method = method or restorer.method
    seed = restorer.cfg.seed if seed is None else int(seed)
    tracker, smoother = FaceTracker(), TrackSmoother(radius if temporal else 0)
    waiting: deque[_Frame] = deque()   # detected, waiting for the frames after them
    ready: list = []                   # (frame, PhotoInput) aligned, waiting for a batch
    batch = restorer.cfg.batch_size
    for n, frame in enumerate(frames):
        if not isinstance(frame, DecodedFrame):
            frame = DecodedFrame(n, n / rate, frame)
        waiting.append(_detect(restorer, frame, tracker, smoother, only_center_face))
        while waiting and waiting[0].index + smoother.radius <= frame.index:
            ready.append(_align(restorer, waiting.popleft(), smoother, name, upscale, allow_downscale, draw_box,
                                temporal))
            smoother.forget_before(ready[-1][0].index)
            if sum(p.num_faces for _, p in ready) >= batch or len(ready) >= batch:
                yield from _finish(restorer, ready, method, seed)
    while waiting:
        ready.append(_align(restorer, waiting.popleft(), smoother, name, upscale, allow_downscale, draw_box, temporal))
    yield from _finish(restorer, ready, method, seed)


def _detect(restorer, frame: DecodedFrame, tracker, smoother, only_center_face: bool) -> _Frame:
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
    smoother.add(frame.index, ids, found)
    return _Frame(frame.index, frame.time, image, found, skipped, ids, time.perf_counter() - start)


def _align(restorer, frame: _Frame, smoother, name: str, upscale: int, allow_downscale: bool, draw_box: bool,
           temporal: bool):
    """Crops of the frame's faces at their smoothed landmarks and the upscaled background."""
    start = time.perf_counter()
    cfg = restorer.cfg
    template = np.asarray(cfg.face.template, dtype=np.float32)
    ffhq = is_ffhq_template(template, cfg.face.template_size)
    faces, kept, crops, affines, keys, tracks, sizes = [], [], [], [], [], [], {}
    for k, (face, track) in enumerate(zip(frame.faces, frame.ids)):
        lm5, lm68 = smoother.smoothed(frame.index, track)
        if ffhq and lm68 is not None:
            crop, affine = align_face_ffhq(frame.image, lm68, cfg.image_size, list(cfg.face.border_value))
        else:
            crop, affine = align_face(frame.image, lm5, face_size=cfg.image_size, template=template,
                                      template_size=cfg.face.template_size, border_value=list(cfg.face.border_value))
        sizes[id(face)] = cfg.image_size / np.sqrt(abs(np.linalg.det(affine[:, :2])))
        if sizes[id(face)] > MAX_DOWNSCALE * cfg.image_size and not allow_downscale:
            kept.append(face)
            continue
        faces.append(face)
        crops.append(crop)
        affines.append(affine)
        tracks.append(track)
        keys.append(f"{name}#track{track}" if temporal else f"{name}#frame{frame.index}#face{k}")
    background = restorer.background(upscale)(frame.image, upscale)
    result = PhotoResult(images=[background], faces=faces, skipped=frame.skipped, kept=kept, sizes=sizes,
                         crops=crops)
    tensor = torch.stack([uint8_to_tensor(c) for c in crops]) if crops else None
    pending = PendingPhoto(result, tensor, keys, affines, upscale, draw_box)
    frame.seconds += time.perf_counter() - start
    frame.tracks = tracks
    return frame, pending


def _finish(restorer, ready: list, method, seed: int) -> Iterator[RestoredFrame]:
    """Restore the faces of the frames that wait, together, and paste them back (grey frames stay grey)."""
    if not ready:
        return
    start = time.perf_counter()
    crops = [p.crops for _, p in ready if p.num_faces]
    keys = [k for _, p in ready for k in p.keys]
    restored = restorer.restore_crops(method, torch.cat(crops), keys, seed, 1)[0][0] if crops else None
    share = (time.perf_counter() - start) / max(1, len(keys))
    done, first = [], 0
    for frame, pending in ready:
        began, count = time.perf_counter(), pending.num_faces
        photo = finish_photo(pending, [restored[first:first + count]] if count else [])
        first += count
        image = photo.images[0]
        if is_grey(uint8_to_tensor(frame.image)):
            image = tensor_to_uint8(to_grey(uint8_to_tensor(image)))
        seconds = frame.seconds + share * count + time.perf_counter() - began
        done.append(RestoredFrame(frame.index, frame.time, image, frame.tracks, photo, seconds))
    ready.clear()
    yield from done


Progress = Callable[[int, int], None]  # (frames done, frames expected; 0 when unknown)


def restore_video(restorer, path, out_path, *, name: str | None = None, start: float = 0.0,
                  end: float | None = None, max_frames: int | None = None, progress: Progress | None = None,
                  seed: int | None = None, start_step: int | None = None, steps: int | None = None,
                  sampler: str | None = None, eta: float | None = None, upscale: int = 2,
                  only_center_face: bool = False, allow_downscale: bool = False, draw_box: bool = False,
                  radius: int = DEFAULT_RADIUS, temporal: bool = True) -> VideoResult:
    """Restore a video file into `out_path` (an MP4; see `datapipe.video` for the format rules).

    Raises `VideoError` for a file that is not a readable video or whose output would be too large
    (`Restorer.restore_video`: `difface.InputError`); the output appears only when complete.
    """
    path, out_path = Path(path), Path(out_path)
    name = name or path.name
    method = restorer.sampling(start_step, steps, sampler, eta)
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
                     end=_range_end(info, start, end, max_frames)) as writer:
        frames = read_frames(path, start, end, max_frames)
        for frame in restore_frames(restorer, frames, name, seed=seed, method=method, upscale=upscale,
                                    only_center_face=only_center_face, allow_downscale=allow_downscale,
                                    draw_box=draw_box, radius=radius, temporal=temporal):
            writer.write(frame.image, frame.time - start)
            result.frames += 1
            result.faces_per_frame.append(len(frame.photo.faces))
            result.tracks = max([result.tracks] + [t + 1 for t in frame.tracks])
            result.seconds += frame.seconds
            if progress is not None:
                progress(result.frames, max(expected, result.frames))
    result.codec, result.audio = writer.codec, writer.audio
    return result


def _range_end(info, start: float, end: float | None, max_frames: int | None) -> float | None:
    """The end of the input range in seconds where --end or --max-frames cut the clip (the audio stops there)."""
    ends = [e for e in (end, None if max_frames is None else start + max_frames / float(info.rate)) if e is not None]
    return min(ends) if ends else None
