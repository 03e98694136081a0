#!/usr/bin/env python
"""Flicker of restored faces in a video: video mode against frames restored on their own.

    python scripts/video_flicker.py                          # the bundled demo model on CPU
    python scripts/video_flicker.py --start-steps 30,200 --frames 16 --out docs/video

A synthetic clip: a held-out HQ face (tests/fixtures/faces/hq_aligned) moving by known
whole-pixel shifts over a fixed background, every frame degraded on its own (the blind
degradation with its own seeded numpy Generator per frame). It is restored
* in video mode (`difface.video.restore_frames` with its defaults: tracks, one noise stream per
  track, landmarks steadied by the measured motion, eta = 0),
* in video mode with the estimate averaged over 5 frames (`estimate_radius=2`),
* frame by frame (`temporal=False`: a noise stream per frame, the landmarks as detected, the
  preset's eta), and
* as separate photos (`Restorer.restore` on each frame under its own file name, as the image
  command does on extracted frames; whole photos are enlarged to a 512 px short side first, so
  their output is resized (area) to the video's output size before it is measured).
Every version runs with each of --seeds; the table gives the means.
Flicker is the mean absolute difference (8-bit levels) between consecutive restored frames inside
the face region after the known shift is undone; the HQ clip's value is the floor (0 for a pure
shift) and the LQ clip's (upscaled) what the degradation alone gives. PSNR (dB) of the face region
against the HQ frames (upscaled the same way, Lanczos) says whether the consistency costs fidelity.
Writes flicker.json and a strip of frames (strip.png) under --out and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import torch

import difface
from datapipe.degradations import BlindDegradation, BlindDegradationConfig
from difface.video import restore_frames

REPO = Path(__file__).resolve().parents[1]
FACES = REPO / "tests" / "fixtures" / "faces" / "hq_aligned"
DEGRADATION = BlindDegradationConfig(blur_kernel_size=11, blur_sigma=[0.5, 1.5], downsample_range=[1.5, 3.0],
                                     noise_range=[2.0, 10.0], jpeg_range=[50.0, 90.0], gray_prob=0.0,
                                     use_hflip=False, gt_gray=False)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="demo", help="inference preset")
    p.add_argument("--faces", default="ffhq_512/00002.jpg,celebahq_256/ref_female_030321.jpg",
                   help="HQ faces under tests/fixtures/faces/hq_aligned, one clip each")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--face-side", type=int, default=96, help="side of the pasted face square, frame pixels")
    p.add_argument("--start-steps", default="30,200", help="start steps N to measure")
    p.add_argument("--upscale", type=int, default=2)
    p.add_argument("--seed", type=int, default=12345, help="seed of the clips' background and degradations")
    p.add_argument("--seeds", default="1,2,3", help="restoration seeds; every version runs with each")
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-photos", action="store_true", help="leave out the separate-photos restoration")
    p.add_argument("--out", default="docs/video", help="folder for flicker.json and strip.png")
    p.add_argument("--strip-only", action="store_true",
                   help="only the strip of frames: the first clip at the largest N with the first seed")
    return p.parse_args(argv)


def shifts(frames: int) -> list[tuple[int, int]]:
    """Whole-pixel offsets of the face: a slow sway with a pause, uneven steps."""
    return [(round(8 * np.sin(2 * np.pi * t / frames)), round(3 * np.sin(4 * np.pi * t / frames)))
            for t in range(frames)]


def make_clip(face_path: Path, frames: int, side: int, seed: int):
    """(HQ frames, LQ frames, face boxes (x, y) in frame pixels); frames are HxWx3 uint8 RGB."""
    h, w = side + 48, side + 80
    rng = np.random.default_rng(seed)
    bg = cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (0, 0), 4)
    bg = cv2.normalize(bg, None, 40, 210, cv2.NORM_MINMAX)
    face = cv2.resize(cv2.imread(str(face_path))[..., ::-1], (side, side), interpolation=cv2.INTER_AREA)
    degrade = BlindDegradation(DEGRADATION)
    hq, lq, boxes = [], [], []
    for t, (dx, dy) in enumerate(shifts(frames)):
        x, y = 40 + dx, 24 + dy
        frame = bg.copy()
        frame[y:y + side, x:x + side] = face
        low, _, _ = degrade(frame.astype(np.float32) / 255, np.random.default_rng([seed, t]))
        hq.append(frame)
        lq.append(np.clip(np.rint(low * 255), 0, 255).astype(np.uint8))
        boxes.append((x, y))
    return hq, lq, boxes


# x0, x1, y0, y1 of the pasted face square: eyes, nose, mouth (inside the demo's crop)
INTERIOR = (0.28, 0.74, 0.36, 0.84)


def face_regions(frames: list, boxes, side: int, scale: int) -> np.ndarray:
    """(T, h, w, 3) float: the face interior of each frame (INTERIOR of the pasted square), at the
    frames' own scale; the known shift is undone by cutting each frame at its own box."""
    x0, x1, y0, y1 = (round(v * side * scale) for v in INTERIOR)
    return np.stack([f[y * scale + y0:y * scale + y1, x * scale + x0:x * scale + x1].astype(np.float64)
                     for f, (x, y) in zip(frames, boxes)])


def flicker(regions: np.ndarray) -> float:
    return float(np.abs(np.diff(regions, axis=0)).mean())


def psnr(regions: np.ndarray, reference: np.ndarray) -> float:
    mse = ((regions - reference) ** 2).mean(axis=(1, 2, 3))
    return float(np.mean(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))))


def upscale(frames: list, scale: int) -> list:
    return [cv2.resize(f, (f.shape[1] * scale, f.shape[0] * scale), interpolation=cv2.INTER_LANCZOS4) for f in frames]


MODES = {"video": dict(temporal=True), "video_estimate": dict(temporal=True, estimate_radius=2),
         "frames": dict(temporal=False)}


def restore_all(restorer, lq: list, name: str, n: int, scale: int, seed: int, photos: bool) -> dict:
    """Restored frames of each version and the seconds each took."""
    out = {}
    for mode, options in MODES.items():
        method = restorer.sampling(start_step=n, eta=0.0 if options["temporal"] else None)
        start = time.perf_counter()
        out[mode] = [f.image for f in restore_frames(restorer, lq, name, seed=seed, method=method, upscale=scale,
                                                     allow_downscale=True, **options)]
        out[mode + "_seconds"] = time.perf_counter() - start
    if photos:
        start = time.perf_counter()
        size = (lq[0].shape[1] * scale, lq[0].shape[0] * scale)
        out["photos"] = [cv2.resize(restorer.restore(f, name=f"{Path(name).stem}_{t:03d}.png", seed=seed,
                                                     start_step=n, upscale=scale, allow_downscale=True).image, size,
                                    interpolation=cv2.INTER_AREA) for t, f in enumerate(lq)]
        out["photos_seconds"] = time.perf_counter() - start
    return out


def strip(rows: list[tuple[str, list]], boxes, side: int, scale: int, columns: int, path: Path,
          tile: int = 112) -> None:
    """Face squares of the first `columns` frames (`tile` px), one row per version, labelled on the left."""
    tiles = []
    for label, frames in rows:
        cells = [cv2.resize(f[y * scale:(y + side) * scale, x * scale:(x + side) * scale], (tile, tile),
                            interpolation=cv2.INTER_AREA) for f, (x, y) in list(zip(frames, boxes))[:columns]]
        row = np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0)), constant_values=255) for c in cells], axis=1)
        text = np.full((row.shape[0], 150, 3), 255, np.uint8)
        cv2.putText(text, label, (6, row.shape[0] // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([text, row], axis=1))
    cv2.imwrite(str(path), np.concatenate(tiles, axis=0)[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])


def write_strip(hq: list, lq: list, restored: dict, boxes, args, path: Path) -> None:
    rows = [("HQ", upscale(hq, args.upscale)), ("LQ input", upscale(lq, args.upscale)),
            ("separate frames", restored["frames"]), ("video mode", restored["video"]),
            ("video, estimate R=2", restored["video_estimate"])]
    strip(rows, boxes, args.face_side, args.upscale, 6, path)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    restorer = difface.Restorer(args.cfg, device=args.device)
    steps = [int(s) for s in args.start_steps.split(",")]
    report = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                         f"{args.device}", "frames": args.frames, "face_side": args.face_side,
              "degradation": vars(DEGRADATION), "upscale": args.upscale, "model": restorer.cfg.name, "results": []}
    seeds = [int(v) for v in args.seeds.split(",")]
    if args.strip_only:
        hq, lq, boxes = make_clip(FACES / args.faces.split(",")[0], args.frames, args.face_side, args.seed)
        restored = restore_all(restorer, lq, f"{Path(args.faces.split(',')[0]).stem}.mp4", max(steps), args.upscale,
                               seeds[0], photos=False)
        write_strip(hq, lq, restored, boxes, args, out / "strip.png")
        return
    versions = ["photos", "frames", "video", "video_estimate"][1 if args.skip_photos else 0:]
    for k, face in enumerate(args.faces.split(",")):
        hq, lq, boxes = make_clip(FACES / face, args.frames, args.face_side, args.seed + k)
        name = f"{Path(face).stem}.mp4"
        reference = face_regions(upscale(hq, args.upscale), boxes, args.face_side, args.upscale)
        low = face_regions(upscale(lq, args.upscale), boxes, args.face_side, args.upscale)
        base = {"face": face, "hq_flicker": flicker(reference), "lq_flicker": flicker(low),
                "lq_psnr": psnr(low, reference)}
        for n in steps:
            row = dict(base, start_step=n, **{v: {"flicker": [], "psnr": [], "seconds_per_frame": []}
                                              for v in versions})
            for seed in seeds:
                restored = restore_all(restorer, lq, name, n, args.upscale, seed, not args.skip_photos)
                for v in versions:
                    regions = face_regions(restored[v], boxes, args.face_side, args.upscale)
                    row[v]["flicker"].append(flicker(regions))
                    row[v]["psnr"].append(psnr(regions, reference))
                    row[v]["seconds_per_frame"].append(restored[v + "_seconds"] / args.frames)
                if k == 0 and n == max(steps) and seed == seeds[0]:
                    write_strip(hq, lq, restored, boxes, args, out / "strip.png")
            for v in versions:
                row[v]["mean"] = {key: float(np.mean(row[v][key])) for key in ("flicker", "psnr", "seconds_per_frame")}
            report["results"].append(row)
            print(json.dumps({key: row[key] for key in ("face", "start_step", "lq_flicker")}
                             | {v: row[v]["mean"] for v in versions}), flush=True)
    (out / "flicker.json").write_text(json.dumps(report, indent=2))
    print("| clip | N | LQ input | " + " | ".join(versions) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in versions) + " |")
    for r in report["results"]:
        cells = [f"{r[v]['mean']['flicker']:.2f} / {r[v]['mean']['psnr']:.2f}" for v in versions]
        print(f"| {Path(r['face']).stem} | {r['start_step']} | {r['lq_flicker']:.2f} / {r['lq_psnr']:.2f} | "
              + " | ".join(cells) + " |")
    print(f"flicker / PSNR (dB), means over seeds {seeds}; HQ floor {report['results'][0]['hq_flicker']:.2f}")


if __name__ == "__main__":
    main()
