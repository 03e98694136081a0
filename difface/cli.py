"""The command line: `difface -i INPUT -o OUT_DIR [options]` (or `python inference.py ...`).

The default model is the paper's (`difface_ffhq512`), its weights fetched on first use into the
weights folder (`--weights-dir`, else $DIFFACE_WEIGHTS, else ~/.cache/difface).
Aligned face crops (`--aligned`, FFHQ framing): every image gives `OUT/<stem>.png` (several
samples: `<stem>_s<k>.png`) of the input's size. Whole photos (default): faces are detected,
aligned, restored and pasted back onto an upscaled background, `OUT/restored_image/<stem>.png`.
A JSON manifest records the run. Bad files are reported by name and skipped; the exit code is
1 when any file failed, 2 for a usage error. torch is imported only once the arguments are valid.
Under `torchrun` each process takes a share of the inputs (`datapipe.shards`) and rank 0 writes
the one manifest.

This module parses arguments, plans the files (`datapipe.jobs`) and writes them; the restoring is
`difface.Restorer`'s.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import platform
import sys
import time
import warnings
from pathlib import Path

from datapipe.limits import MAX_DOWNSCALE

from .cli_help import HelpFormatter, at_least, positive, preset_table, start_step_arg
from .cli_video import add_video_arguments, check_video_args, plan_inputs, run_videos, split_videos

DEFAULT_CFG = "difface_ffhq512"  # the paper's model; the bundled demonstration: --cfg demo
INPAINT_CFG = "inpaint_ffhq256"


# --------------------------------------------------------------------------------------------
# Command line (no torch here: --help and argument errors answer at once)
# --------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Blind face restoration with DifFace (diffused error contraction).",
        formatter_class=HelpFormatter, epilog=preset_table())
    p.add_argument("-i", "--input", required=True, help="an image or video file, or a folder of them")
    p.add_argument("-o", "--output", required=True, help="output folder (created if needed)")
    p.add_argument("--aligned", action="store_true",
                   help="inputs are aligned face crops in the FFHQ convention (eyes and mouth where FFHQ's "
                        "crops have them, any square size); without it, whole photos")
    p.add_argument("--recursive", action="store_true", help="also read sub-folders, mirrored in the output")
    p.add_argument("--cfg", default=None,
                   help=f"a preset (below) or a YAML file (default: {DEFAULT_CFG}, the paper's model; "
                        f"{INPAINT_CFG} with --task inpainting)")
    p.add_argument("--task", choices=("restoration", "inpainting"), default=None,
                   help="restoration, or inpainting of masked aligned faces (default: the config's task)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. sampling.eta=1.0")
    g = p.add_argument_group("sampling (default: the preset's value, see below)")
    g.add_argument("--start-step", type=start_step_arg, metavar="N|auto",
                   help="base step (of 1000) the estimate is diffused to; 0 = the estimator alone; auto = chosen "
                        "for each face by the preset's start-step head (docs/auto_start.md)")
    g.add_argument("--steps", type=at_least(1), help="number of network evaluations from N down to 0")
    g.add_argument("--textbook-start", action="store_true",
                   help="first network call at N itself (the official code starts one grid point lower)")
    g.add_argument("--eta", type=float, help="noise scale of ddim and dpmpp_2m_sde (0 = deterministic; 1 = DDPM-like)")
    g.add_argument("--sampler", metavar="NAME",
                   help="reverse-process sampler: ddim, ddpm, dpmpp_2m (few steps: with --steps K), "
                        "dpmpp_2m_sde (the registry of models/samplers.py)")
    g.add_argument("--num-samples", type=at_least(1), help="restorations per input, from different noise")
    g.add_argument("--select", choices=["all", "fidelity"],
                   help="with --num-samples K: write every sample (all), or per face the one whose coarse content "
                        "is nearest the estimate (fidelity; docs/auto_start.md#best-of-several-samples)")
    g.add_argument("--seed", type=int, help="random seed (each image gets its own stream)")
    r = p.add_argument_group("running")
    r.add_argument("--batch-size", type=at_least(1), help="faces restored together")
    r.add_argument("--device", metavar="NAME", help="auto, cpu, cuda or mps")
    r.add_argument("--dtype", metavar="NAME",
                   help="network precision fp32, fp16 or bf16 (falls back to fp32 where it would be slow)")
    r.add_argument("--weights-dir", default=None,
                   help="where weight files are looked up and downloaded to (else $DIFFACE_WEIGHTS, else "
                        "$XDG_CACHE_HOME/difface or ~/.cache/difface; the repository's weights/ is also searched)")
    r.add_argument("--compile", action="store_const", const=True, default=None,
                   help="torch.compile the networks (long warm-up; for many faces, mainly on CUDA)")
    r.add_argument("--no-download", dest="download", action="store_false", help="never download missing weights")
    r.add_argument("--max-pixels", type=positive, default=100_000_000,
                   help="larger images are refused from their header, before decoding")
    r.add_argument("--max-output-pixels", type=positive, default=100_000_000,
                   help="whole photos whose restored image would be larger are refused (the largest -s that fits "
                        "is named); a restored photo takes about 20 bytes of memory per output pixel")
    r.add_argument("--rank-timeout", type=positive, default=120.0,
                   help="under torchrun: seconds rank 0 waits for a silent rank before marking its files failed")
    w = p.add_argument_group("whole photos (without --aligned)")
    w.add_argument("--detector", default="hog", choices=("hog", "cnn", "retinaface"),
                   help="face detector: dlib HOG or CNN (offline), or RetinaFace (needs facexlib)")
    w.add_argument("--det-threshold", type=float, default=None,
                   help="detector score threshold (hog -0.3, cnn 0.0, retinaface 0.8)")
    w.add_argument("--min-face-size", type=float, default=16.0,
                   help="faces smaller than this (pixels of the input photo) are skipped")
    w.add_argument("--only-center-face", action="store_true", help="restore only the face nearest the centre")
    w.add_argument("--allow-downscale", action="store_true",
                   help=f"also restore faces larger than {MAX_DOWNSCALE}x the model size (they lose detail); "
                        "by default they are left as they are and reported")
    w.add_argument("-s", "--upscale", type=at_least(1), default=2, help="output size factor of the whole photo")
    w.add_argument("--bg-upsampler", default="lanczos", choices=("lanczos", "realesrgan"),
                   help="background upsampling")
    w.add_argument("--bg-weights", default=None,
                   help="Real-ESRGAN weights: a file or RealESRGAN_x2plus / RealESRGAN_x4plus")
    w.add_argument("--bg-tile", type=at_least(0), default=400, help="Real-ESRGAN tile size in pixels (0 = no tiling)")
    w.add_argument("--draw-box", action="store_true", help="outline each restored face in green")
    w.add_argument("--save-faces", action="store_true",
                   help="also write the aligned LQ crops and restored crops of every face")
    m = p.add_argument_group("inpainting masks (with --task inpainting)")
    m.add_argument("--mask", default=None, metavar="DIR",
                   help="folder of mask files matched by name (white = hole); default: holes found in the image")
    m.add_argument("--mask-style", choices=("black", "white"), default="black",
                   help="holes in the image itself: exactly black pixels (official) or white scribbles")
    o = p.add_argument_group("outputs")
    o.add_argument("--ext", choices=("auto", "png", "jpg"), default="png",
                   help="output format; auto = jpg for JPEG inputs, png otherwise")
    o.add_argument("--save-cmp", action="store_true", help="also write input | restored side by side to OUT/cmp/")
    o.add_argument("--save-estimate", action="store_true",
                   help="also write the estimator output f(y) to OUT/estimates/ (aligned faces)")
    o.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    o.add_argument("--dry-run", action="store_true",
                   help="print the resolved config and the planned files; run nothing")
    add_video_arguments(p)
    args = p.parse_args(argv)
    check_video_args(p, args)
    stray = [o for o in args.overrides if "=" not in o]
    if stray:
        shown = " ".join(stray[:3]) + (f" (and {len(stray) - 3} more)" if len(stray) > 3 else "")
        p.error(f"unexpected argument(s) {shown}: -i takes one file or folder (for the files of a shell glob, "
                "pass their folder); config overrides are key=value")
    if args.save_estimate and not args.aligned:
        p.error("--save-estimate works with --aligned (whole photos: --save-faces writes each face's crops)")
    return args


def resolve_config(args: argparse.Namespace):
    """The config with the CLI's explicit options applied as overrides."""
    from .pipeline import load_config

    flags = {"sampling.start_step": args.start_step, "sampling.steps": args.steps,
             "sampling.eta": args.eta, "sampling.sampler": args.sampler,
             "num_samples": args.num_samples, "select": args.select, "seed": args.seed, "batch_size": args.batch_size,
             "device": args.device, "dtype": args.dtype, "compile": args.compile,
             "sampling.official_start": False if args.textbook_start else None, "task": args.task}
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    name = args.cfg or (INPAINT_CFG if args.task == "inpainting" else DEFAULT_CFG)
    return load_config(name, overrides)


# --------------------------------------------------------------------------------------------
# Running: read each planned file, hand it to the Restorer, write what it returns
# --------------------------------------------------------------------------------------------

def log(msg: str) -> None:
    from tqdm import tqdm
    tqdm.write(msg, file=sys.stderr)


def fail(job, error: str) -> None:
    job.record.update(status="failed", error=error)
    log(f"error: {error}")


def relayed(fn, *args, **kwargs):
    """Call `fn`, logging the warnings it raises (unreadable metadata, alpha dropped, ...)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return fn(*args, **kwargs)
        finally:
            for w in caught:
                log(f"warning: {w.message}")


def write_all(job, images: list, estimate=None, cmp=None, overwrite: bool = False) -> bool:
    """Write a job's outputs (HxWx3 uint8 RGB arrays); files that exist are kept unless `overwrite`
    (a rerun that adds --save-cmp writes the comparisons only). False (job failed) when a write fails."""
    from datapipe.image_io import ImageWriteError, write_image
    planned = list(zip(job.outputs, images)) + [(job.estimate, estimate), (job.cmp, cmp)]
    try:
        for path, image in planned:
            if path is not None and image is not None and (overwrite or not path.exists()):
                write_image(path, image)
        return True
    except ImageWriteError as e:
        fail(job, str(e))
        return False


def run_aligned(restorer, jobs, bar, args) -> None:
    """Aligned crops, `batch_size` at a time (see `Restorer.restore_aligned`)."""
    import numpy as np

    from datapipe.image_io import image_size
    from datapipe.mask_io import MaskError, find_mask

    from .restorer import InputError
    cfg = restorer.cfg
    sizes = [image_size(job.source) for job in jobs]
    sizes = [wh if wh and wh[0] * wh[1] <= args.max_pixels else None for wh in sizes]  # too large: refused
    if note := restorer.framing.downscale_warning(sizes, MAX_DOWNSCALE, cfg.name):
        log(f"warning: {note}")
    for i in range(0, len(jobs), cfg.batch_size):
        batch = []
        for job in jobs[i:i + cfg.batch_size]:
            try:
                mask = find_mask(job.source, Path(args.mask)) if args.mask and cfg.task == "inpainting" else None
                item = relayed(restorer.prepare_aligned, job.source, job.key, mask, args.mask_style)
            except (InputError, MaskError) as e:
                job.record.update(_size_of(job.source))
                fail(job, str(e))
                continue
            job.record.update(item.info)
            batch.append((job, item))
        if batch:
            start = time.perf_counter()
            results = restorer.restore_aligned([item for _, item in batch])
            seconds = (time.perf_counter() - start) / len(batch)
            for (job, _), res in zip(batch, results):
                cmp = np.concatenate([res.input, *res.samples], axis=1) if job.cmp else None
                if write_all(job, res.samples, res.estimate if job.estimate else None, cmp, args.overwrite):
                    job.record.update(status="done", seconds=round(seconds, 3), **res.info)
        bar.update(len(jobs[i:i + cfg.batch_size]))


def _size_of(path: Path) -> dict:
    """The manifest's size entry of an input that failed, where its header tells it."""
    from datapipe.image_io import image_size
    wh = image_size(path)
    return {"size": list(wh)} if wh else {}


def run_photos(restorer, jobs, bar, args) -> None:
    """Whole photos: detect, align, restore, paste back; a photo without a face is only upscaled.

    The faces of consecutive photos share a batch: photos are prepared (detected, aligned) until
    `batch_size` faces or photos wait, then their faces are restored together and each photo is
    finished and written. Every face has its own generator, so the files equal photo-by-photo runs.
    """
    import numpy as np

    from datapipe.photos import side_by_side

    from .restorer import InputError, final_image
    cfg = restorer.cfg
    out = Path(args.output)
    waiting = []  # (job, seconds so far, PhotoInput)

    def flush() -> None:
        start = time.perf_counter()
        results = restorer.finish_photos([p for *_, p in waiting])
        share = (time.perf_counter() - start) / max(1, sum(p.num_faces for *_, p in waiting))
        for (job, seconds, photo_input), res in zip(waiting, results):
            began = time.perf_counter()
            cmp = None
            if job.cmp is not None:  # input | every sample
                cmp = np.concatenate([final_image(side_by_side(res.input, res.image), photo_input.grey)]
                                     + res.samples[1:], axis=1)
            if write_all(job, res.samples, cmp=cmp, overwrite=args.overwrite):
                if args.save_faces:
                    save_faces(out, job, res.photo, len(res.samples))
                seconds += share * photo_input.num_faces + time.perf_counter() - began
                found = res.photo.faces or res.photo.kept
                job.record.update(status="done" if found else "no face", seconds=round(seconds, 3), **res.info)
                log(f"{job.source}: {res.photo.describe(cfg.image_size)}")
            bar.update(1)
        waiting.clear()

    for job in jobs:
        start = time.perf_counter()
        try:
            photo_input = relayed(restorer.prepare_photo, job.source, job.key, upscale=args.upscale,
                                  only_center_face=args.only_center_face, allow_downscale=args.allow_downscale,
                                  draw_box=args.draw_box)
        except InputError as e:
            job.record.update(_size_of(job.source))
            fail(job, str(e))
            bar.update(1)
            continue
        job.record.update(photo_input.info)
        waiting.append((job, time.perf_counter() - start, photo_input))
        if sum(p.num_faces for *_, p in waiting) >= cfg.batch_size or len(waiting) >= cfg.batch_size:
            flush()
    flush()


def save_faces(out: Path, job, result, num_samples: int) -> None:
    """LQ crops to OUT/cropped_faces, restored crops to OUT/restored_faces, as <stem>_<k>.png."""
    from datapipe.image_io import write_image
    from datapipe.jobs import sample_names, with_ext
    for k, crop in enumerate(result.crops):
        write_image(out / "cropped_faces" / with_ext(job.stem.with_name(f"{job.stem.name}_{k:02d}"), ".png"), crop)
        for s, path in enumerate(sample_names(job.stem, num_samples, f"_{k:02d}")):
            write_image(out / "restored_faces" / path, result.restored[s][k])


def build_restorer(cfg, args):
    """The Restorer of a run, on this process's device (cuda:LOCAL_RANK under torchrun)."""
    from datapipe.shards import Rank

    from models.runtime import pick_device
    from .restorer import Restorer
    device = Rank.from_env().device(pick_device(cfg.device))
    return Restorer(cfg, device, weights_dir=args.weights_dir, download=args.download, detector=args.detector,
                    det_threshold=args.det_threshold, min_face_size=args.min_face_size,
                    bg_upsampler=args.bg_upsampler, bg_weights=args.bg_weights, bg_tile=args.bg_tile,
                    max_pixels=args.max_pixels, max_output_pixels=args.max_output_pixels)


def run(cfg, jobs, args) -> dict:
    """Build the model once, stream the inputs, return the run summary."""
    from tqdm import tqdm

    from datapipe.jobs import summarise
    restorer = build_restorer(cfg, args)
    for note in restorer.notes:
        log(f"warning: {note}")
    log(restorer.describe())
    timesteps, auto = restorer.method.timesteps, restorer.method.auto
    log(f"N chosen for each face (auto), {auto.min_step} to {auto.max_step}" if auto else
        f"{len(timesteps)} network evaluations per face, first at step {timesteps[0]}"
        if timesteps else "N = 0: the estimator's output alone, no diffusion steps")
    out = Path(args.output)
    todo = []
    for job in jobs:
        job.record.update(**job.paths(out), seed=cfg.seed, aligned=args.aligned)
        if not args.overwrite and job.finished:
            job.record["status"] = "skipped"
        else:
            todo.append(job)
    if skipped := len(jobs) - len(todo):
        log(f"skipped {skipped} input(s) whose outputs exist (--overwrite replaces them)")
    photos, videos = split_videos(todo)
    with tqdm(total=len(photos), desc="faces" if args.aligned else "photos", file=sys.stderr,
              disable=not photos) as bar:
        if args.aligned:
            run_aligned(restorer, todo, bar, args)
        else:
            run_photos(restorer, photos, bar, args)
    run_videos(restorer, videos, args)
    return summarise(jobs)


def write_manifest(out: Path, cfg, jobs, summary: dict) -> Path:
    """A JSON record of the run: resolved config, versions, and one entry per input."""
    import torch
    from omegaconf import OmegaConf
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"manifest_{time.strftime('%Y%m%d-%H%M%S')}.json"
    manifest = {"config": OmegaConf.to_container(cfg, resolve=True), "summary": summary,
                "versions": {"python": platform.python_version(), "torch": torch.__version__},
                "images": [j.record for j in jobs]}
    path.write_text(json.dumps(manifest, indent=2))
    return path


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster's scheduler, `kill`): stops the run like Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


def main(argv=None) -> int:
    args = parse_args(argv)

    from datapipe.jobs import PlanError, check_writable, plan_jobs, summarise
    from datapipe.shards import Rank, run_sharded
    from models.checkpoint import WeightsError
    from models.runtime import DeviceError

    from .pipeline import ConfigError, outputs_per_input
    if args.detector == "retinaface" and importlib.util.find_spec("facexlib") is None and not args.aligned:
        print("error: --detector retinaface needs the facexlib package (pip install facexlib); hog and cnn work "
              "offline as they are", file=sys.stderr)
        return 2
    try:
        cfg = resolve_config(args)
        if not args.aligned and cfg.task == "inpainting":
            raise PlanError("inpainting works on aligned faces: pass --aligned")
        src, out = Path(args.input).expanduser(), Path(args.output).expanduser()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            jobs = plan_inputs(src, out, args, lambda: plan_jobs(
                src, out, args.recursive, outputs_per_input(cfg.num_samples, cfg.select), args.save_estimate,
                subdir="" if args.aligned else "restored_image", ext=args.ext, save_cmp=args.save_cmp))
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        if not args.dry_run:
            check_writable(out)
    except (PlanError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print_plan(cfg, jobs, args)
        return 0
    single = not Rank.from_env().distributed  # under torchrun, datapipe.shards handles SIGTERM
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if single else None
    try:
        summary = run_sharded(lambda share: run(cfg, share, args), jobs, out, summarise, args.rank_timeout)
    except (WeightsError, ConfigError, DeviceError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        cause = "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C"
        for job in jobs:
            job.record.setdefault("status", "not run")
        summary = summarise(jobs)
        summary["stopped"] = f"{cause}: the run was stopped; run the same command again to continue"
        manifest = write_manifest(out, cfg, jobs, summary)
        print(f"\nstopped by {cause}: done {summary['done']} of {len(jobs)}; no file is left half-written. Run the "
              f"same command again to continue (finished files are skipped); manifest: {manifest}", file=sys.stderr)
        return 143 if cause == "SIGTERM" else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if summary is None:  # a rank other than 0 under torchrun: rank 0 writes the manifest
        return 0
    manifest = write_manifest(out, cfg, jobs, summary)
    speed = "".join(f"; {summary[f'seconds_per_{kind}']} s per {kind}" for kind in ("image", "frame")
                    if summary[f"seconds_per_{kind}"] is not None)
    print(f"done {summary['done']}, no face {summary['no face']}, skipped {summary['skipped']}, "
          f"failed {summary['failed']}{speed}; manifest: {manifest}", file=sys.stderr)
    return 1 if summary["failed"] else 0


def print_plan(cfg, jobs, args) -> None:
    """--dry-run: the resolved config, where each network's weights come from, the planned files."""
    from omegaconf import OmegaConf

    from models.checkpoint import REGISTRY, default_weights_dir, find_weights, spec_url

    from .presets import bundled_file
    print(OmegaConf.to_yaml(cfg))
    weights_dir = args.weights_dir or default_weights_dir()
    for role in ("estimator", "prior"):
        name = getattr(cfg, role).weights
        path = Path(str(name)).expanduser()
        if path.is_file() or (found := bundled_file(str(name))) is not None:
            where = str(path if path.is_file() else found)
        elif name in REGISTRY:
            found = find_weights(REGISTRY[name], args.weights_dir)
            target = REGISTRY[name].path(weights_dir)
            where = str(found) if found else (
                f"not here yet: {target} (fetched on first use from {spec_url(REGISTRY[name])})" if args.download
                else f"MISSING: {target} (and --no-download is set: the run would stop)")
        else:
            where = f"MISSING: {name} is neither a file nor a registry name"
        print(f"# {role} weights: {where}")
    print(f"# {len(jobs)} input(s)")
    for job in jobs:
        print(f"{job.source} -> {', '.join(str(p) for p in job.all_outputs)}")


if __name__ == "__main__":
    sys.exit(main())
