"""Restore faces with DifFace: `python inference.py -i INPUT -o OUT_DIR [options]`.

Aligned face crops (`--aligned`): every image gives `OUT/<stem>.png` (several samples:
`<stem>_s<k>.png`) of the input's size. Whole photos (default): faces are detected, aligned,
restored and pasted back onto an upscaled background, `OUT/restored_image/<stem>.png`.
A JSON manifest records the run. Bad files are reported by name and skipped; the exit code is
1 when any file failed.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from datapipe.faces import FaceDetector, upscale_lanczos
from datapipe.image_io import (ImageReadError, ImageWriteError, read_image, tensor_to_uint8, uint8_to_tensor,
                               write_image)
from datapipe.jobs import Job, PlanError, plan_jobs, sample_names
from datapipe.masks import MaskError, check_mask, detect_black_holes, detect_white_scribbles, find_mask, read_mask
from datapipe.photos import PhotoTooLarge, lanczos_background, restore_photo
from models.checkpoint import WeightsError, default_weights_dir
from models.difface import image_generator, resize, resize_mask
from models.pipeline import DEVICES, ConfigError, build_difface, load_config, pick_device
from models.samplers import SAMPLERS

MIN_FACE_SIDE = 32  # smaller inputs cannot hold a face worth restoring
DEFAULT_CFG = "demo"  # the bundled model; the paper's: --cfg difface_ffhq512
INPAINT_CFG = "inpaint_ffhq256"


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
    p.add_argument("--cfg", default=None,
                   help=f"a preset of configs/inference/ (name without .yaml) or a YAML file "
                        f"(default: {DEFAULT_CFG}, or {INPAINT_CFG} with --task inpainting)")
    p.add_argument("--task", choices=("restoration", "inpainting"), default=None,
                   help="restoration, or inpainting of masked aligned faces (default: the config's task)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. sampling.eta=1.0")
    g = p.add_argument_group("sampling (override the config)")
    g.add_argument("--start-step", type=int, help="N: base step (of 1000) the estimate is diffused to")
    g.add_argument("--steps", type=int, help="number of network evaluations from N down to 0 "
                   "(default: the config's grid, 100 for N=400)")
    g.add_argument("--textbook-start", action="store_true",
                   help="first network call at N itself (the official code starts one grid point lower)")
    g.add_argument("--eta", type=float, help="DDIM eta (0 = deterministic)")
    g.add_argument("--sampler", choices=tuple(SAMPLERS), help="reverse-process sampler")
    g.add_argument("--num-samples", type=int, help="restorations per input, from different noise")
    g.add_argument("--seed", type=int, help="random seed (each image gets its own stream)")
    r = p.add_argument_group("running")
    r.add_argument("--batch-size", type=int, help="faces restored together")
    r.add_argument("--device", choices=DEVICES, help="where to run")
    r.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="network precision")
    r.add_argument("--compile", action="store_const", const=True, default=None,
                   help="torch.compile the networks (long warm-up; for many faces, mainly on CUDA)")
    r.add_argument("--weights-dir", default=None, help="where weight files are looked up "
                   "(default: $DIFFACE_WEIGHTS or ./weights)")
    r.add_argument("--no-download", dest="download", action="store_false",
                   help="never download missing weights")
    w = p.add_argument_group("whole photos (without --aligned)")
    w.add_argument("--detector", default="hog", choices=("hog", "cnn", "retinaface"),
                   help="face detector: dlib HOG or CNN (offline), or RetinaFace (needs facexlib)")
    w.add_argument("--det-threshold", type=float, default=None,
                   help="detector score threshold (default: hog -0.3, cnn 0.0, retinaface 0.8)")
    w.add_argument("--min-face-size", type=float, default=16.0, help="smaller faces (px) are skipped")
    w.add_argument("--upscale", type=int, default=2, help="output size factor of the whole photo")
    w.add_argument("--bg-upsampler", default="lanczos", choices=("lanczos", "realesrgan"),
                   help="background upsampling")
    w.add_argument("--bg-weights", default=None,
                   help="Real-ESRGAN weights: a file or RealESRGAN_x2plus / RealESRGAN_x4plus")
    w.add_argument("--bg-tile", type=int, default=400, help="Real-ESRGAN tile size in pixels (0 = no tiling)")
    w.add_argument("--max-pixels", type=float, default=40e6, help="larger photos are refused")
    w.add_argument("--draw-box", action="store_true", help="outline each restored face in green")
    w.add_argument("--save-faces", action="store_true",
                   help="also write the aligned LQ crops and restored crops of every face")
    m = p.add_argument_group("inpainting masks (with --task inpainting)")
    m.add_argument("--mask", default=None, metavar="DIR",
                   help="folder of mask files matched by name (white = hole); default: holes found in the image")
    m.add_argument("--mask-style", choices=("black", "white"), default="black",
                   help="holes in the image itself: exactly black pixels (official) or white scribbles")
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
             "device": args.device, "dtype": args.dtype, "compile": args.compile,
             "sampling.official_start": False if args.textbook_start else None, "task": args.task}
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    name = args.cfg or (INPAINT_CFG if args.task == "inpainting" else DEFAULT_CFG)
    return load_config(name, overrides)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------

def log(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


def fail(job: Job, error: str) -> None:
    job.record.update(status="failed", error=error)
    log(f"error: {error}")


def read(job: Job) -> torch.Tensor | None:
    """The input as (3, H, W) RGB [0,1], warnings relayed; None (job failed) for a bad file."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            img = read_image(job.source)
        for w in caught:
            log(f"warning: {w.message}")
    except ImageReadError as e:
        fail(job, str(e))
        return None
    h, w = img.shape[-2:]
    job.record["size"] = [w, h]
    if min(h, w) < MIN_FACE_SIDE and job.record.get("aligned"):
        fail(job, f"{job.source}: image is {w}x{h}, too small to be a face (at least {MIN_FACE_SIDE}x{MIN_FACE_SIDE})")
        return None
    return img


def read_mask_of(job: Job, img: torch.Tensor, args) -> torch.Tensor | None:
    """The hole mask (1, H, W) of an inpainting input (1 = hole); None (job failed) when unusable."""
    try:
        if args.mask:
            mask = read_mask(find_mask(job.source, Path(args.mask)))
        elif args.mask_style == "white":
            mask = detect_white_scribbles(img)
        else:
            mask = detect_black_holes(img)
        job.record["hole_fraction"] = round(check_mask(mask, img.shape, str(job.source)), 4)
        return mask
    except (MaskError, ImageReadError) as e:
        fail(job, str(e))
        return None


def restore_crops(method, cfg, crops: torch.Tensor, keys, device, masks: torch.Tensor | None = None):
    """Restore (N, 3, S, S) model-size faces in batches; one generator per (seed, key, sample).

    masks: (N, 1, S, S), 1 = hole, for inpainting. Returns ([samples] each (N, 3, S, S) on the
    CPU, estimates (N, 3, S, S)).
    """
    samples = [[] for _ in range(cfg.num_samples)]
    estimates = []
    for i in range(0, len(crops), cfg.batch_size):
        y = crops[i:i + cfg.batch_size].to(device)
        mask = masks[i:i + cfg.batch_size].to(device) if masks is not None else None
        batch_keys = keys[i:i + cfg.batch_size]
        for k in range(cfg.num_samples):
            result = method.restore(y, generator=[image_generator(cfg.seed, key, k) for key in batch_keys],
                                    mask=mask)
            samples[k].append(result.sample.cpu())
            if k == 0:
                estimates.append(result.estimate.cpu())
    return [torch.cat(s) for s in samples], torch.cat(estimates)


def run_aligned(method, cfg, jobs: list[Job], device, bar, args) -> None:
    """Aligned crops: resized to the model size, restored in batches, resized back, written.

    Inpainting: the known pixels of the input are put back at the input's own resolution.
    """
    size = (cfg.image_size, cfg.image_size)
    for i in range(0, len(jobs), cfg.batch_size):
        batch = []
        for job in jobs[i:i + cfg.batch_size]:
            if (img := read(job)) is None:
                continue
            mask = read_mask_of(job, img, args) if cfg.task == "inpainting" else None
            if cfg.task == "inpainting" and mask is None:
                continue
            if tuple(img.shape[-2:]) != size:
                log(f"warning: {job.source} is {job.record['size'][0]}x{job.record['size'][1]}; "
                    f"it is resized to {size[1]}x{size[0]} for the model and back")
            batch.append((job, img, mask))
        if batch:
            start = time.perf_counter()
            masks = None if cfg.task != "inpainting" else torch.stack(
                [resize_mask(m[None], size)[0] for _, _, m in batch])
            samples, estimates = restore_crops(method, cfg, torch.stack([resize(img[None], size)[0] for _, img, _ in batch]),
                                               [j.key for j, _, _ in batch], device, masks)
            seconds = (time.perf_counter() - start) / len(batch)
            for n, (job, img, mask) in enumerate(batch):
                w, h = job.record["size"]
                back = lambda t: resize(t[n:n + 1], (h, w))[0].clamp(0, 1)  # noqa: E731
                keep = (lambda x: x * mask + img * (1 - mask)) if mask is not None else (lambda x: x)  # noqa: E731
                try:
                    for k, path in enumerate(job.outputs):
                        write_image(path, keep(back(samples[k])))
                    if job.estimate is not None:
                        write_image(job.estimate, back(estimates))
                    job.record.update(status="done", seconds=round(seconds, 3))
                except ImageWriteError as e:
                    fail(job, str(e))
        bar.update(len(jobs[i:i + cfg.batch_size]))


def background_upsampler(args, device):
    """`img, scale -> img` for the whole photo: Lanczos, or Real-ESRGAN (tiled)."""
    if args.bg_upsampler == "lanczos":
        return lanczos_background
    from models.checkpoint import load_weights, resolve_weights
    from models.rrdbnet import realesrgan, upscale_tiled

    name = args.bg_weights or ("RealESRGAN_x4plus" if args.upscale > 2 else "RealESRGAN_x2plus")
    net_scale = 4 if "x4" in Path(name).name else 2
    net = realesrgan(net_scale)
    load_weights(net, resolve_weights(name, args.weights_dir, download=args.download))
    net = net.eval().requires_grad_(False).to(device)

    def upsample(img, scale):
        up = upscale_tiled(net, uint8_to_tensor(img)[None].to(device), net_scale, tile=args.bg_tile)[0]
        out = tensor_to_uint8(up.cpu())
        h, w = img.shape[:2]
        return out if out.shape[:2] == (h * scale, w * scale) else upscale_lanczos(out, (h * scale) / out.shape[0])

    return upsample


def run_photos(method, cfg, jobs: list[Job], device, bar, args) -> None:
    """Whole photos: detect, align, restore, paste back; a photo without a face is only upscaled."""
    detector = FaceDetector(args.detector, score_threshold=args.det_threshold, min_face_size=args.min_face_size)
    background = background_upsampler(args, device)
    template = np.asarray(cfg.face.template, dtype=np.float32)
    out = Path(args.output)
    for job in jobs:
        img = read(job)
        if img is not None:
            start = time.perf_counter()
            restore = lambda crops, keys: restore_crops(method, cfg, crops, keys, device)[0]  # noqa: E731
            try:
                result = restore_photo(tensor_to_uint8(img), detector, restore, job.key, face_size=cfg.image_size,
                                       template=template, template_size=cfg.face.template_size,
                                       border_value=list(cfg.face.border_value), upscale=args.upscale,
                                       background_fn=background, draw_box=args.draw_box, max_pixels=int(args.max_pixels))
                for path, image in zip(job.outputs, result.images * len(job.outputs)):
                    write_image(path, image)
                if args.save_faces:
                    save_faces(out, job, result, cfg.num_samples)
                status = "done" if result.faces else "no face"
                job.record.update(status=status, seconds=round(time.perf_counter() - start, 3), **result.manifest())
                if not result.faces:
                    log(f"no face found in {job.source}; the upscaled photo is written")
            except (PhotoTooLarge, ImageWriteError) as e:
                fail(job, f"{job.source}: {e}" if isinstance(e, PhotoTooLarge) else str(e))
        bar.update(1)


def save_faces(out: Path, job: Job, result, num_samples: int) -> None:
    """LQ crops to OUT/cropped_faces, restored crops to OUT/restored_faces, as <stem>_<k>.png."""
    for k, crop in enumerate(result.crops):
        write_image(out / "cropped_faces" / job.stem.with_name(f"{job.stem.name}_{k:02d}.png"), crop)
        for s, path in enumerate(sample_names(job.stem, num_samples, f"_{k:02d}")):
            write_image(out / "restored_faces" / path, result.restored[s][k])


def run(cfg, jobs: list[Job], args) -> dict:
    """Build the model once, stream the inputs, return the run summary."""
    device = pick_device(cfg.device)
    log(f"DifFace: model '{cfg.name}' on {device} ({cfg.dtype}); N={cfg.sampling.start_step}, "
        f"eta={cfg.sampling.eta}, sampler={cfg.sampling.sampler}")
    method = build_difface(cfg, device, args.weights_dir, args.download)
    log(f"{len(method.timesteps)} network evaluations per face, first at step {method.timesteps[0]}")
    todo = []
    for job in jobs:
        job.record.update(input=str(job.source), outputs=[str(p) for p in job.outputs], seed=cfg.seed,
                          aligned=args.aligned)
        if not args.overwrite and all(p.exists() for p in job.outputs):
            job.record["status"] = "skipped"
            log(f"skipped {job.source}: outputs exist (use --overwrite to replace them)")
        else:
            todo.append(job)
    with tqdm(total=len(todo), desc="faces" if args.aligned else "photos", file=sys.stderr) as bar:
        if args.aligned:
            run_aligned(method, cfg, todo, device, bar, args)
        else:
            run_photos(method, cfg, todo, device, bar, args)
    return summarise(jobs)


def summarise(jobs: list[Job]) -> dict:
    counts = {s: sum(j.record.get("status") == s for j in jobs) for s in ("done", "no face", "skipped", "failed")}
    done = [j.record["seconds"] for j in jobs if j.record.get("status") == "done"]
    counts["seconds_per_image"] = round(sum(done) / len(done), 3) if done else None
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
        if not args.aligned and cfg.task == "inpainting":
            raise PlanError("inpainting works on aligned faces: pass --aligned")
        src, out = Path(args.input).expanduser(), Path(args.output).expanduser()
        jobs = plan_jobs(src, out, args.recursive, cfg.num_samples, args.save_estimate and args.aligned,
                         subdir="" if args.aligned else "restored_image")
    except (PlanError, ConfigError) as e:
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
    except (WeightsError, ConfigError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    manifest = write_manifest(out, cfg, jobs, summary)
    print(f"done {summary['done']}, no face {summary['no face']}, skipped {summary['skipped']}, "
          f"failed {summary['failed']}; {summary['seconds_per_image']} s per image; manifest: {manifest}",
          file=sys.stderr)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
