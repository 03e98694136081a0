"""The command line's video side: options, planning the video inputs, and running them.

A video input (VIDEO_EXTENSIONS, alone with -i or found in the input folder beside images) gives
`OUT/<stem>.mp4` (sub-folders mirrored with --recursive; two inputs of one stem keep their
extension in the name, as images do). Each video is a job of its own in the run's manifest: frames,
faces per frame, tracks and seconds per frame. The restoring is `difface.video`'s.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .cli_help import at_least


def add_video_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("videos (.mp4 .mov .mkv .avi .webm inputs: OUT/<stem>.mp4, H.264, audio copied)",
                             "each face is tracked with one noise stream per track; eta is 0 unless --eta is given")
    g.add_argument("--start", type=float, default=0.0, metavar="S", help="restore from this time (seconds)")
    g.add_argument("--end", type=float, default=None, metavar="S", help="restore up to this time (seconds)")
    g.add_argument("--max-frames", type=at_least(1), default=None, metavar="N",
                   help="restore at most N frames of each video (a quick look)")
    g.add_argument("--detection-weight", type=_weight, default=0.2, metavar="W",
                   help="each face's landmarks follow its measured motion and move this part of the way towards "
                        "each new detection (1 = as detected in every frame)")
    g.add_argument("--temporal-estimate", type=at_least(0), default=0, metavar="R",
                   help="average each face's estimate f(y) over R frames before and after it before the diffusion "
                        "(evens out what the degradation changes from frame to frame; blurs fast changes)")


def _weight(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {value}")
    return value


def check_video_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.start < 0:
        p.error(f"--start must be >= 0 seconds, got {args.start}")
    if args.end is not None and args.end <= args.start:
        p.error(f"--end ({args.end}) must come after --start ({args.start})")


def plan_inputs(src: Path, out: Path, args: argparse.Namespace, plan_images) -> list:
    """The image jobs (`plan_images()`: datapipe.jobs.plan_jobs with the run's settings) and a job
    per video input; raises PlanError for unusable paths, as plan_jobs does."""
    from datapipe.image_io import list_images
    from datapipe.jobs import Job, PlanError, check_not_inputs, check_side_folders, unique_stems
    from datapipe.video import is_video_file, list_videos
    if src.is_file() and is_video_file(src):
        if args.aligned:
            raise PlanError(f"{src} is a video: its frames are whole pictures, drop --aligned")
        root, videos = src.parent, [src]
    elif src.is_dir() and not args.aligned and src.resolve() != out.resolve():
        root = src
        videos = [v for v in list_videos(src, args.recursive) if out.resolve() not in v.resolve().parents]
    else:
        return plan_images()
    images = plan_images() if src.is_dir() and (list_images(src, args.recursive) or not videos) else []
    jobs = [Job(source=v, key=v.relative_to(root).as_posix(), stem=stem, outputs=[out / f"{stem}.mp4"])
            for v, stem in zip(videos, unique_stems(root, videos))]
    check_side_folders(jobs, out, [(name, "") for name in ("restored_image", "cmp", "cropped_faces", "restored_faces")])
    check_not_inputs(jobs, videos)
    return images + jobs


def split_videos(jobs: list) -> tuple[list, list]:
    """(the image jobs, the video jobs)."""
    from datapipe.video import is_video_file
    kinds = [is_video_file(job.source) for job in jobs]
    return [j for j, v in zip(jobs, kinds) if not v], [j for j, v in zip(jobs, kinds) if v]


def run_videos(restorer, jobs: list, args: argparse.Namespace) -> None:
    """Restore each planned video with a progress bar over its frames; a bad file fails alone."""
    from tqdm import tqdm

    from .restorer import InputError, warn_relay

    def log(msg: str) -> None:
        tqdm.write(msg, file=sys.stderr)

    if jobs and restorer.cfg.num_samples > 1:
        log(f"warning: videos are restored with one sample (--num-samples {restorer.cfg.num_samples} applies "
            f"to images)")
    for job in jobs:
        with tqdm(total=0, desc=job.key, unit="frame", file=sys.stderr) as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            start = time.perf_counter()
            try:
                result, warned = warn_relay(
                    restorer.restore_video, job.source, job.outputs[0], name=job.key, start=args.start, end=args.end,
                    max_frames=args.max_frames, progress=progress, upscale=args.upscale,
                    only_center_face=args.only_center_face, allow_downscale=args.allow_downscale,
                    draw_box=args.draw_box, eta=args.eta, detection_weight=args.detection_weight,
                    estimate_radius=args.temporal_estimate)
            except InputError as e:
                job.record.update(status="failed", error=str(e))
                log(f"error: {e}")
                continue
        for message in warned:
            log(f"warning: {message}")
        faces = sum(result.faces_per_frame)
        job.record.update(status="done" if faces else "no face", seconds=round(time.perf_counter() - start, 3),
                          **result.info())
        log(f"{job.source}: {result.frames} frames, {faces} faces restored in {result.tracks} track(s)"
            + ("" if faces else " (no face found: the frames are upscaled)")
            + f", audio {result.audio or 'none'}; {result.seconds_per_frame:.2f} s per frame -> {job.outputs[0]}")
