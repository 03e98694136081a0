"""Restore faces with DifFace: `python inference.py -i LQ_DIR -o OUT_DIR [options]`.

Reads every image of a file or folder, restores it and writes `<stem>.png` (several samples:
`<stem>_s<k>.png`) of the input's size into the output folder, with a JSON manifest of the run.
Bad files are reported by name and skipped; the exit code is 1 when any file failed.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from datapipe.image_io import ImageReadError, ImageWriteError, is_image_file, list_images, read_image, write_image
from models.checkpoint import WeightsError, default_weights_dir
from models.difface import image_generator, resize
from models.pipeline import DEVICES, ConfigError, build_difface, load_config, pick_device

MIN_FACE_SIDE = 32  # smaller inputs cannot hold a face worth restoring
DEFAULT_CFG = "difface_ffhq512"


class UsageError(Exception):
    """A mistake in the command line, found before any model is built."""


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Blind face restoration with DifFace (diffused error contraction).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-i", "--input", required=True, help="an image file or a folder of images")
    p.add_argument("-o", "--output", required=True, help="output folder (created if needed)")
    p.add_argument("--aligned", action="store_true",
                   help="inputs are aligned face crops (FFHQ-style); without it, whole photos")
    p.add_argument("--recursive", action="store_true", help="also read sub-folders, mirrored in the output")
    p.add_argument("--cfg", default=DEFAULT_CFG,
                   help="a preset of configs/inference/ (name without .yaml) or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. sampling.eta=1.0")
    g = p.add_argument_group("sampling (override the config)")
    g.add_argument("--start-step", type=int, help="N: base step (of 1000) the estimate is diffused to")
    g.add_argument("--steps", type=int, help="number of network evaluations from N down to 0 "
                   "(default: the config's grid, 100 for N=400)")
    g.add_argument("--textbook-start", action="store_true",
                   help="first network call at N itself (the official code starts one grid point lower)")
    g.add_argument("--eta", type=float, help="DDIM eta (0 = deterministic)")
    g.add_argument("--sampler", choices=("ddim", "ddpm"), help="reverse-process sampler")
    g.add_argument("--num-samples", type=int, help="restorations per input, from different noise")
    g.add_argument("--seed", type=int, help="random seed (each image gets its own stream)")
    r = p.add_argument_group("running")
    r.add_argument("--batch-size", type=int, help="faces restored together")
    r.add_argument("--device", choices=DEVICES, help="where to run")
    r.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="network precision")
    r.add_argument("--weights-dir", default=None, help="where weight files are looked up "
                   "(default: $DIFFACE_WEIGHTS or ./weights)")
    r.add_argument("--no-download", dest="download", action="store_false",
                   help="never download missing weights")
    o = p.add_argument_group("outputs")
    o.add_argument("--save-estimate", action="store_true",
                   help="also write the estimator output f(y) to OUT/estimates/")
    o.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    o.add_argument("--dry-run", action="store_true",
                   help="print the resolved config and the planned files; run nothing")
    return p.parse_args(argv)


def resolve_config(args: argparse.Namespace):
    """The config with the CLI's explicit options applied as overrides."""
    flags = {"sampling.start_step": args.start_step, "sampling.steps": args.steps,
             "sampling.eta": args.eta, "sampling.sampler": args.sampler,
             "num_samples": args.num_samples, "seed": args.seed, "batch_size": args.batch_size,
             "device": args.device, "dtype": args.dtype,
             "sampling.official_start": False if args.textbook_start else None}
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    return load_config(args.cfg, overrides)


# --------------------------------------------------------------------------------------------
# Planning: which file goes where (no model needed)
# --------------------------------------------------------------------------------------------

@dataclass
class Job:
    """One input image and the files it produces."""

    source: Path
    key: str                       # name used for seeding: the relative path of the input
    outputs: list[Path]
    estimate: Path | None = None
    record: dict = field(default_factory=dict)


def list_inputs(src: Path, out: Path, recursive: bool) -> tuple[Path, list[Path]]:
    if not src.exists():
        raise UsageError(f"input path does not exist: {src}")
    if src.is_file():
        if not is_image_file(src):
            raise UsageError(f"input file is not an image type we read: {src}")
        return src.parent, [src]
    if src.resolve() == out.resolve():
        raise UsageError(f"the output folder must differ from the input folder: {out}")
    files = [f for f in list_images(src, recursive=recursive) if out.resolve() not in f.resolve().parents]
    if not files:
        raise UsageError(f"no images found in {src}" + ("" if recursive else " (use --recursive for sub-folders)"))
    return src, files


def plan_jobs(src: Path, out: Path, recursive: bool, num_samples: int, save_estimate: bool) -> list[Job]:
    """Output names: the input's relative path with .png; clashing stems keep their extension."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path exists and is not a folder: {out}")
    root, files = list_inputs(src, out, recursive)
    by_stem = defaultdict(list)
    for f in files:
        by_stem[f.relative_to(root).with_suffix("").as_posix().lower()].append(f)
    jobs = []
    for f in files:
        rel = f.relative_to(root)
        stem = rel.with_suffix("")
        if len(by_stem[stem.as_posix().lower()]) > 1:  # a.png and a.jpg -> a_png.png, a_jpg.png
            stem = stem.with_name(f"{stem.name}_{f.suffix.lstrip('.').lower()}")
        names = [stem] if num_samples == 1 else [stem.with_name(f"{stem.name}_s{k}") for k in range(num_samples)]
        jobs.append(Job(source=f, key=rel.as_posix(), outputs=[out / n.with_suffix(".png") for n in names],
                        estimate=(out / "estimates" / stem.with_suffix(".png")) if save_estimate else None))
    return jobs


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------

def log(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


def load_face(job: Job, size: int) -> torch.Tensor | None:
    """The input at the model size, (3, S, S); None (and the job marked failed) on a bad file."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            img = read_image(job.source)
        for w in caught:
            log(f"warning: {w.message}")
    except ImageReadError as e:
        job.record.update(status="failed", error=str(e))
        log(f"error: {e}")
        return None
    h, w = img.shape[-2:]
    if min(h, w) < MIN_FACE_SIDE:
        job.record.update(status="failed", error=f"image is {w}x{h}, too small to be a face "
                          f"(at least {MIN_FACE_SIDE}x{MIN_FACE_SIDE})")
        log(f"error: {job.source}: {job.record['error']}")
        return None
    if (h, w) != (size, size):
        log(f"warning: {job.source} is {w}x{h}; it is resized to {size}x{size} for the model and back")
    job.record["size"] = [w, h]
    return resize(img[None], (size, size))[0]


def restore_batch(method, cfg, jobs: list[Job], faces: list[torch.Tensor], device) -> None:
    """Restore a batch of model-size faces and write every output of the jobs."""
    y = torch.stack(faces).to(device)
    start = time.perf_counter()
    for k in range(cfg.num_samples):
        gens = [image_generator(cfg.seed, job.key, k) for job in jobs]
        result = method.restore(y, generator=gens)
        for i, job in enumerate(jobs):
            w, h = job.record["size"]
            write_image(job.outputs[k], resize(result.sample[i:i + 1], (h, w))[0].clamp(0, 1).cpu())
            if k == 0 and job.estimate is not None:
                write_image(job.estimate, resize(result.estimate[i:i + 1], (h, w))[0].clamp(0, 1).cpu())
    seconds = (time.perf_counter() - start) / len(jobs)
    for job in jobs:
        job.record.update(status="done", seconds=round(seconds, 3))


def run(cfg, jobs: list[Job], args) -> dict:
    """Build the model once, stream the images in batches, return the run summary."""
    device = pick_device(cfg.device)
    log(f"DifFace: model '{cfg.name}' on {device} ({cfg.dtype}); N={cfg.sampling.start_step}, "
        f"eta={cfg.sampling.eta}, sampler={cfg.sampling.sampler}")
    method = build_difface(cfg, device, args.weights_dir, args.download)
    log(f"{len(method.timesteps)} network evaluations per face, first at step {method.timesteps[0]}")
    todo = []
    for job in jobs:
        job.record.update(input=str(job.source), outputs=[str(p) for p in job.outputs], seed=cfg.seed)
        if not args.overwrite and all(p.exists() for p in job.outputs):
            job.record["status"] = "skipped"
            log(f"skipped {job.source}: outputs exist (use --overwrite to replace them)")
        else:
            todo.append(job)
    bar = tqdm(total=len(todo), desc="faces", unit="face", file=sys.stderr)
    for i in range(0, len(todo), cfg.batch_size):
        batch = todo[i:i + cfg.batch_size]
        loaded = [(job, face) for job in batch if (face := load_face(job, cfg.image_size)) is not None]
        if loaded:
            try:
                restore_batch(method, cfg, [j for j, _ in loaded], [f for _, f in loaded], device)
            except ImageWriteError as e:
                for job, _ in loaded:
                    job.record.update(status="failed", error=str(e))
                log(f"error: {e}")
        bar.update(len(batch))
    bar.close()
    return summarise(jobs)


def summarise(jobs: list[Job]) -> dict:
    counts = {s: sum(j.record.get("status") == s for j in jobs) for s in ("done", "skipped", "failed")}
    done = [j.record["seconds"] for j in jobs if j.record.get("status") == "done"]
    counts["seconds_per_face"] = round(sum(done) / len(done), 3) if done else None
    return counts


def write_manifest(out: Path, cfg, jobs: list[Job], summary: dict) -> Path:
    """A JSON record of the run: resolved config, versions, and one entry per input."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"manifest_{time.strftime('%Y%m%d-%H%M%S')}.json"
    manifest = {"config": OmegaConf.to_container(cfg, resolve=True), "summary": summary,
                "versions": {"python": platform.python_version(), "torch": torch.__version__},
                "images": [j.record for j in jobs]}
    path.write_text(json.dumps(manifest, indent=2))
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = resolve_config(args)
        if not args.aligned:
            raise UsageError("whole-image mode (detect, align, paste back) is not yet supported; "
                             "pass --aligned for aligned face crops")
        src, out = Path(args.input).expanduser(), Path(args.output).expanduser()
        jobs = plan_jobs(src, out, args.recursive, cfg.num_samples, args.save_estimate)
    except (UsageError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(OmegaConf.to_yaml(cfg))
        print(f"# {len(jobs)} input(s); weights from {args.weights_dir or default_weights_dir()}")
        for job in jobs:
            print(f"{job.source} -> {', '.join(str(p) for p in job.outputs)}")
        return 0
    try:
        summary = run(cfg, jobs, args)
    except (WeightsError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    manifest = write_manifest(out, cfg, jobs, summary)
    print(f"done {summary['done']}, skipped {summary['skipped']}, failed {summary['failed']}; "
          f"{summary['seconds_per_face']} s per face; manifest: {manifest}", file=sys.stderr)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
