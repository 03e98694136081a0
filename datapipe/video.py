"""Video files: probing, decoding to RGB frames, encoding the restored frames with the input's audio.

Frames are HxWx3 uint8 RGB numpy arrays, as in whole-photo mode, with the container's rotation
(a phone's display matrix) applied, so a portrait clip gives portrait frames. Decoding and
encoding use PyAV, whose wheels bring FFmpeg with its codecs: nothing is installed by hand.

Rules:
* a file that is not a video, has no video stream or holds no decodable frame raises
  :class:`VideoError`, whose message names the file and the reason;
* a stream that breaks off (a truncated or damaged file) ends at the last frame decoded, with a
  warning naming the file and the frame count; so does one that ends more than a frame before
  the length its header announces;
* a frame whose size differs from the first frame's (a stream that changes resolution) is
  resized to the first frame's size;
* the output (:class:`VideoWriter`) is H.264 (libx264; MPEG-4 part 2 where the FFmpeg build lacks
  it) in yuv420p with even sides (an odd side gets one more row or column, a copy of the last), at
  the input's timestamps, so the frame count and the frame rate (also a variable one) are kept;
* the input's first audio stream is copied packet for packet (trimmed to a --start/--end range);
  audio that MP4 cannot hold (e.g. PCM) is re-encoded to AAC;
* the output is written under a temporary name beside the target and renamed when complete:
  a stopped or failed run never leaves a half-written video under the output's name.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm")
VIDEO_CODECS = ("libx264", "mpeg4")  # the first this FFmpeg build can encode
DEFAULT_CRF = 18  # libx264 quality: visually near lossless


class VideoError(Exception):
    """A video file cannot be read or written; the message names the file and the reason."""


def is_video_file(path) -> bool:
    """True if the file name has one of :data:`VIDEO_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def list_videos(root, recursive: bool = False) -> list[Path]:
    """Video files under ``root`` (hidden files and folders skipped), sorted by relative path."""
    root = Path(root)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [] if not recursive else [d for d in dirs if not d.startswith(".")]
        rel = Path(folder).relative_to(root)
        found += [rel / n for n in files if not n.startswith(".") and is_video_file(n) and (Path(folder) / n).is_file()]
    return [root / rel for rel in sorted(found, key=lambda p: p.parts)]


def _av():
    try:
        import av
    except ImportError:
        raise VideoError("video files need the package 'av' (PyAV, pip install av)") from None
    return av


def _reason(e: Exception) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return text.split(": '")[0] if isinstance(text, str) else str(e)


@dataclass
class VideoInfo:
    """What the container says about a video: sizes as displayed (rotation applied), rate in
    frames per second, `frames` as declared or estimated from the duration (0 if unknown)."""

    path: Path
    width: int
    height: int
    rate: Fraction
    frames: int
    duration: float | None  # seconds
    codec: str
    rotation: int  # degrees counter-clockwise applied to the decoded frames
    audio: str | None  # the first audio stream's codec, None without audio

    def frame_range(self, start: float = 0.0, end: float | None = None, max_frames: int | None = None) -> int:
        """The number of frames a decode of [start, end) limited to `max_frames` is expected to give."""
        total = self.frames or (round(self.duration * float(self.rate)) if self.duration else 0)
        last = min(total, round(end * float(self.rate))) if end is not None else total
        count = max(0, last - round(start * float(self.rate)))
        return min(count, max_frames) if max_frames is not None else count


def _open(path: Path):
    av = _av()
    if not path.is_file():
        raise VideoError(f"cannot read video '{path}': " + ("it is a folder" if path.is_dir() else "no such file"))
    try:
        container = av.open(str(path), "r")
    except av.FFmpegError as e:
        raise VideoError(f"cannot read video '{path}': FFmpeg cannot open it ({_reason(e)}): not a video, or a "
                         f"truncated or damaged one") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"cannot read video '{path}': it holds no video stream")
    return container


def probe_video(path) -> VideoInfo:
    """Open the container and read its video stream's header; the rotation is read from the first frame."""
    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        duration = (float(stream.duration * stream.time_base) if stream.duration
                    else container.duration / 1e6 if container.duration else None)
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
        rotation = 0
        try:
            first = next(container.decode(stream), None)
        except _av().FFmpegError as e:
            raise VideoError(f"cannot read video '{path}': its first frame does not decode ({_reason(e)}; "
                             f"a truncated or damaged file?)") from None
        if first is None:
            raise VideoError(f"cannot read video '{path}': it holds no frame that decodes (a truncated or damaged "
                             f"file?)")
        rotation = _rotation(first)
        w, h = (first.height, first.width) if rotation % 180 else (first.width, first.height)
        return VideoInfo(path, w, h, Fraction(rate), int(stream.frames or 0), duration, stream.codec_context.name,
                         rotation, audio)


def _rotation(frame) -> int:
    """The frame's display rotation rounded to a quarter turn, degrees counter-clockwise."""
    return int(round(float(getattr(frame, "rotation", 0) or 0) / 90.0)) * 90 % 360


@dataclass
class DecodedFrame:
    index: int  # 0 for the first frame returned
    time: float  # seconds from the start of the stream
    image: np.ndarray  # HxWx3 uint8 RGB, rotation applied


def read_frames(path, start: float = 0.0, end: float | None = None,
                max_frames: int | None = None) -> Iterator[DecodedFrame]:
    """Decode the frames whose time lies in [start, end), at most `max_frames` of them.

    A stream that breaks off ends there with a warning; a range without frames raises VideoError.
    """
    av, path = _av(), Path(path)
    count, broke, shape, time = 0, False, None, 0.0
    info = probe_video(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = stream.time_base
        origin = stream.start_time * tb if stream.start_time is not None else 0
        if start > 0:
            container.seek(int((start + float(origin)) / tb), stream=stream, backward=True)
        try:
            for frame in container.decode(stream):
                rate = float(stream.average_rate or 25)
                time = float(frame.pts * tb - origin) if frame.pts is not None else count / rate
                if time < start - 1e-6:
                    continue
                if (end is not None and time >= end - 1e-6) or (max_frames is not None and count >= max_frames):
                    break
                image = frame.to_ndarray(format="rgb24")
                if turns := _rotation(frame) // 90:
                    image = np.ascontiguousarray(np.rot90(image, turns))
                shape = shape or image.shape
                if image.shape != shape:
                    image = cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
                yield DecodedFrame(count, time, image)
                count += 1
        except av.FFmpegError as e:
            if not count:
                raise VideoError(f"cannot read video '{path}': no frame decodes ({_reason(e)}; a truncated or "
                                 f"damaged file?)") from None
            warnings.warn(f"{path}: the video stream breaks off after {count} frame(s) (truncated or damaged "
                          f"file: {_reason(e)}); the frames decoded are restored")
            broke = True
    cut = end is not None or (max_frames is not None and count >= max_frames)
    if count and not (broke or cut) and info.duration and time + 1.5 / float(info.rate) < info.duration:
        warnings.warn(f"{path}: the video stream ends at {time:.2f} s, before the {info.duration:.2f} s its header "
                      f"announces (a truncated or damaged file?); the {count} frame(s) decoded are restored")
    if not count:
        where = f" between {start:g} s and {end:g} s" if end is not None else f" from {start:g} s" if start else ""
        raise VideoError(f"cannot read video '{path}': no frame{where}")


class VideoWriter:
    """Encode RGB frames to an MP4 at `path` with the audio of `audio_from` (a video file) copied.

    Use as a context manager: the file appears under its name only when the block ends without an
    exception; otherwise the temporary file is removed. `write(image, time)` takes HxWx3 uint8 RGB
    frames of one size and their times in seconds (increasing); `[start, end)` is the range of the
    input the frames come from, which trims the audio to it.
    """

    def __init__(self, path, rate: Fraction, audio_from=None, start: float = 0.0, end: float | None = None,
                 crf: int = DEFAULT_CRF):
        self.path = Path(path)
        self.rate, self.crf = Fraction(rate), crf
        self.audio_from, self.start, self.end = audio_from, start, end
        self.tmp = self.path.with_name(f".{self.path.name}.part")
        self._container = self._video = None
        self._audio_in = self._audio_out = self._packets = self._resampler = None
        self._pending = None
        self._last_pts, self.frames, self.codec = -1, 0, None
        self.audio = None  # what became of the input's audio: 'copied', 're-encoded to aac' or None

    def __enter__(self) -> "VideoWriter":
        av = _av()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._container = av.open(str(self.tmp), "w", format="mp4", options={"movflags": "+faststart"})
        except (av.FFmpegError, OSError) as e:
            raise VideoError(f"cannot write video '{self.path}': {_reason(e)}") from None
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self._finish()
        else:
            self._discard()

    # -------------------------------------------------------------- video
    def _open_video(self, width: int, height: int) -> None:
        av = _av()
        self.codec = next(c for c in VIDEO_CODECS if c in av.codecs_available)
        options = {"crf": str(self.crf), "preset": "medium"} if self.codec == "libx264" else {}
        stream = self._container.add_stream(self.codec, rate=self.rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width + width % 2, height + height % 2, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 90000)
        if self.codec != "libx264":
            stream.bit_rate = int(stream.width * stream.height * float(self.rate) * 0.6)
        self._video = stream
        self._open_audio()

    def write(self, image: np.ndarray, time: float) -> None:
        """Add one frame (HxWx3 uint8 RGB) shown at `time` seconds after the start of the range."""
        av = _av()
        try:
            self._write(av, image, time)
        except (av.FFmpegError, OSError) as e:
            raise VideoError(f"cannot write video '{self.path}': {_reason(e)}") from None

    def _write(self, av, image: np.ndarray, time: float) -> None:
        if self._video is None:
            self._open_video(image.shape[1], image.shape[0])
        h, w = self._video.height, self._video.width
        if image.shape[:2] != (h, w):
            image = np.pad(image, ((0, h - image.shape[0]), (0, w - image.shape[1]), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        pts = round(time * 90000)
        frame.pts = self._last_pts = max(pts, self._last_pts + 1)
        self._mux(self._video.encode(frame))
        self.frames += 1
        self._copy_audio(self.start + time)

    def _mux(self, packets) -> None:
        for packet in packets:
            self._container.mux(packet)

    # -------------------------------------------------------------- audio
    def _open_audio(self) -> None:
        av = _av()
        if self.audio_from is None:
            return
        try:
            source = av.open(str(self.audio_from), "r")
        except av.FFmpegError:
            return
        if not source.streams.audio:
            source.close()
            return
        self._audio_in = stream = source.streams.audio[0]
        if stream.codec_context.name in self._container.supported_codecs:
            self._audio_out = self._container.add_stream_from_template(stream)
            self.audio = "copied"
        else:  # MP4 cannot hold this codec (PCM, ...): AAC at the same rate and channels
            channels = stream.codec_context.channels
            layout = {1: "mono", 2: "stereo"}.get(channels, stream.codec_context.layout.name)
            self._audio_out = self._container.add_stream("aac", rate=stream.codec_context.sample_rate, layout=layout)
            self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=stream.codec_context.sample_rate)
            self.audio = "re-encoded to aac"
        if self.start > 0:
            source.seek(int(self.start / stream.time_base), stream=stream, backward=True)
        self._packets = source.demux(stream)

    def _copy_audio(self, until: float | None) -> None:
        """Copy (or re-encode) the input's audio packets that start before `until` seconds."""
        if self._packets is None:
            return
        av, tb = _av(), self._audio_in.time_base
        try:
            while True:
                packet = self._pending or next(self._packets, None)
                self._pending = None
                if packet is None:
                    self._close_audio()
                    return
                if packet.pts is None or packet.size == 0:
                    continue
                t = float(packet.pts * tb)
                if until is not None and t >= until:
                    self._pending = packet  # later
                    return
                if self.end is not None and t >= self.end:
                    self._close_audio()
                    return
                if self.start > 0 and t < self.start - 1e-6:
                    continue
                self._put_audio(packet, round(self.start / tb))
        except av.FFmpegError as e:
            warnings.warn(f"{self.audio_from}: the audio stream breaks off ({_reason(e)}); the audio read is kept")
            self._close_audio(flush=False)

    def _put_audio(self, packet, offset: int) -> None:
        if self._resampler is None:
            packet.pts -= offset
            packet.dts = None if packet.dts is None else packet.dts - offset
            packet.stream = self._audio_out
            self._container.mux(packet)
            return
        for frame in packet.decode():
            frame.pts = None
            for chunk in self._resampler.resample(frame):
                self._mux(self._audio_out.encode(chunk))

    def _close_audio(self, flush: bool = True) -> None:
        if self._packets is None:
            return
        self._packets = None
        if self._resampler is not None and flush:
            for chunk in self._resampler.resample(None):
                self._mux(self._audio_out.encode(chunk))
            self._mux(self._audio_out.encode(None))
        self._audio_in.container.close()

    # -------------------------------------------------------------- the end
    def _finish(self) -> None:
        av = _av()
        try:
            if self._video is None:
                raise VideoError(f"cannot write video '{self.path}': no frame to write")
            self._mux(self._video.encode(None))
            self._copy_audio(None if self.end is None else self.end)
            self._close_audio()
            self._container.close()
        except (av.FFmpegError, OSError) as e:
            self._discard()
            raise VideoError(f"cannot write video '{self.path}': {_reason(e)}") from None
        except BaseException:
            self._discard()
            raise
        os.replace(self.tmp, self.path)

    def _discard(self) -> None:
        for closing in (lambda: self._audio_in.container.close() if self._audio_in is not None else None,
                        lambda: self._container.close() if self._container is not None else None):
            try:
                closing()
            except Exception:  # noqa: BLE001 - the file is removed anyway
                pass
        self.tmp.unlink(missing_ok=True)
