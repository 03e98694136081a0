#!/usr/bin/env python
"""Video throughput: decoding and encoding beside the restoration, against one after the other.

    python scripts/video_speed.py                      # demo model, CPU, 48 frames of 640x360
    python scripts/video_speed.py --cfg difface_ffhq512_fast --frames 12 --device cuda

The clip: a whole photo of tests/fixtures/faces (several faces), enlarged to cover the frame and
panned by a pixel per frame, encoded once to H.264 (no audio). `Restorer.restore_video` then
restores it with `overlap=False` (decode, detect, restore, encode in turn) and `overlap=True`
(decoding with face detection, and encoding, in two background threads), alternately, --repeats times each, in one process and on
identical work (the outputs are the same pixels; tests/test_video.py checks that). Also timed on
their own: decoding the clip, detecting its faces, and encoding the restored frames, which bound
what overlapping can save. Prints a Markdown table; the speed-up is the ratio of the two modes' median wall times.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import torch

import difface
from datapipe.video import VideoWriter, read_frames

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "tests" / "fixtures" / "faces" / "lq_whole" / "codeformer_whole_imgs" / "00.jpg"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="demo", help="inference preset or YAML (default: %(default)s)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--size", default="640x360", metavar="WxH", help="frame size (default: %(default)s)")
    p.add_argument("--upscale", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="runs of each mode (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--photo", type=Path, default=PHOTO, help="the photo the clip pans over")
    return p.parse_args(argv)


def make_clip(photo: Path, path: Path, frames: int, width: int, height: int, rate: int = 25) -> None:
    """`frames` frames of `photo`, enlarged to cover width + frames x height, panned a pixel per frame."""
    image = cv2.imread(str(photo))
    if image is None:
        raise SystemExit(f"error: cannot read {photo}")
    scale = max((width + frames) / image.shape[1], height / image.shape[0])
    big = cv2.resize(image[..., ::-1], None, fx=scale, fy=scale, interpolation=cv2.INTER_LANCZOS4)
    top = (big.shape[0] - height) // 2
    with VideoWriter(path, Fraction(rate)) as writer:
        for i in range(frames):
            writer.write(np.ascontiguousarray(big[top:top + height, i:i + width]), i / rate)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    restorer = difface.Restorer(args.cfg, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "pan.mp4"
        make_clip(args.photo, clip, args.frames, width, height)
        restorer.restore_video(clip, Path(tmp) / "warm.mp4", max_frames=2, upscale=args.upscale)  # warm-up
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for overlap in (False, True):
                start = time.perf_counter()
                result = restorer.restore_video(clip, Path(tmp) / f"out_{overlap}.mp4", upscale=args.upscale,
                                                overlap=overlap)
                times[overlap].append(time.perf_counter() - start)
        start = time.perf_counter()
        decoded = [f.image for f in read_frames(clip)]
        decode_s = time.perf_counter() - start
        start = time.perf_counter()
        with restorer.face_detector() as detector:
            for image in decoded:
                detector.detect_with_skipped(image)
        detect_s = time.perf_counter() - start
        restored = [f.to_ndarray(format="rgb24") for f in _decode(Path(tmp) / "out_True.mp4")]
        start = time.perf_counter()
        with VideoWriter(Path(tmp) / "encode.mp4", Fraction(25)) as writer:
            for i, image in enumerate(restored):
                writer.write(image, i / 25)
        encode_s = time.perf_counter() - start
    serial, overlapped = statistics.median(times[False]), statistics.median(times[True])
    n = len(decoded)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"device {restorer.device}; torch {torch.__version__}")
    print(f"clip: {n} frames of {width}x{height}, {sum(result.faces_per_frame)} faces restored, "
          f"output {result.out_size[0]}x{result.out_size[1]}; preset {restorer.cfg.name}\n")
    print("| | s (median of runs) | s / frame | runs |\n|---|---|---|---|")
    print(f"| decoding alone | {decode_s:.2f} | {decode_s / n:.3f} | 1 |")
    print(f"| detecting the faces alone | {detect_s:.2f} | {detect_s / n:.3f} | 1 |")
    print(f"| encoding the restored frames alone | {encode_s:.2f} | {encode_s / n:.3f} | 1 |")
    print(f"| restore_video, one step after the other | {serial:.2f} | {serial / n:.3f} | "
          f"{', '.join(f'{t:.2f}' for t in times[False])} |")
    print(f"| restore_video, decoding with detection and encoding overlapped | {overlapped:.2f} | {overlapped / n:.3f} | "
          f"{', '.join(f'{t:.2f}' for t in times[True])} |")
    side = decode_s + detect_s, encode_s  # the two threads' work
    print(f"\nspeed-up: {serial / overlapped:.2f}x (at most {serial / max(serial - sum(side), *side):.2f}x, were "
          "the threads' work fully hidden)")


def _decode(path: Path):
    import av
    with av.open(str(path)) as container:
        yield from container.decode(container.streams.video[0])


if __name__ == "__main__":
    main()
