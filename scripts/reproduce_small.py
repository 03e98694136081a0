#!/usr/bin/env python
"""Reproduce DifFace's claims at small scale on a held-out split (default: the bundled 64x64 demo model).

    python scripts/reproduce_small.py --heldout data/utk64/val --out results/small

Each held-out face is degraded once by the blind training degradation (ranges from the
estimator's training config, `data.train.degradation`; seeded by (seed, file name), no flip,
no greyscale) and saved to OUT/lq; then:

  1  trade-off   the LQ input, the estimator alone (N = 0) and DifFace at each start step N
                 of --n-values: PSNR / SSIM (fidelity, mean over images) and FID (realism,
                 restored set vs the HQ held-out set). N > 0 uses the config's own sampling:
                 its grid points below N (or its sampling.steps).
  2  robustness  an estimator trained on mild degradations only (--mild-estimator) and the
                 config's estimator, tested on SEVERE degradations (OUT/lq_severe), alone and
                 followed by DifFace at the config's start step.
  3  diversity   pixel spread (mean over pixels of the per-pixel std across K samples of one
                 input, in [0, 255]) of DifFace at the config's start step vs the estimator.
  4  steps       DifFace at --steps-start (default 400) with 100 / 50 / 20 / 10 DDIM steps
                 (sampling.steps): PSNR / SSIM / FID and seconds per image.

Outputs in OUT: results.md, results.json (every number, per-image PSNR/SSIM too),
tradeoff.png, steps.png, grid.png (rows LQ / estimator / DifFace / HQ, x2 nearest),
diversity.png, lq/ and lq_severe/ (the fixed LQ sets and their drawn parameters).
FID on ~100 images is biased upward; compare it only within one table of one run.
The networks are loaded once; every row is the method's own code path (DifFace.restore /
DifFace.estimate) with one generator per (seed, image, sample). Cost of the defaults: ~94,000
prior evaluations (faces x steps), about 45-60 min for the 64 px demo model on one CPU thread.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from datapipe.degradations import BlindDegradationConfig
from datapipe.image_io import tensor_to_uint8, write_image
from difface.pipeline import ConfigError, load_config, sampling_of
from models.runtime import DEVICES, pick_device
from metrics.heldout import (Faces, Runner, Scorer, build_estimator, degradation_config, degrade, int_list,
                             load_heldout, machine, to_uint8)
from metrics.heldout_report import image_rows, plot_steps, plot_tradeoff, weight_file, write_reports
from models.checkpoint import WeightsError, resolve_weights
from models.difface import DifFace

PARTS = {1: "trade-off", 2: "robustness", 3: "diversity", 4: "steps"}
DEFAULT_MILD = "weights/demo/estimator_mild.safetensors"
# Harsher than the demo estimator's training ranges (sigma <= 2, scale <= 8, noise <= 20,
# JPEG >= 30 at 64 px), far beyond the mild estimator's (sigma <= 0.6, scale <= 2, noise <= 5).
DEFAULT_SEVERE = dict(blur_kernel_size=13, blur_sigma=[1.0, 2.5], downsample_range=[4.0, 10.0],
                      noise_range=[10.0, 25.0], jpeg_range=[20.0, 60.0])
NOTES = [
    "N = 0 is the estimator alone: x0_hat = f(y).clamp(0, 1) (DifFace.estimate), no noise and no "
    "diffusion step; it is the 'estimator' row of every table.",
    "FID: TF-Inception pool3 features of the restored set vs the HQ held-out set. With ~100 images "
    "(far fewer than the 2048 feature dimensions) FID is strongly biased upward; its values are only "
    "comparable within one table of this run, never with the paper's numbers.",
    "PSNR / SSIM: RGB, 8-bit, no border crop, mean over images (SSIM: Gaussian 11x11, sigma 1.5).",
    "Pixel spread: for one input, the sample std (ddof = 1) over K restorations of every pixel and "
    "channel of the 8-bit outputs, averaged over pixels, then over inputs.",
    "Every setting restores an image from the same generator (seed, file name, sample 0), so rows differ "
    "only by the setting, not by the noise drawn.",
    "Seconds per image: wall time of a whole set (batched, after one warm-up call) / number of images.",
    "LQ sets: one draw per image from a numpy generator seeded by (seed, file name, set), without the "
    "horizontal flip and greyscale of training (so the ground truth is the held-out image itself).",
]


# --------------------------------------------------------------------------------------------
# The four experiments
# --------------------------------------------------------------------------------------------

@dataclass
class Context:
    args: argparse.Namespace
    runner: Runner
    faces: Faces
    lq: torch.Tensor
    score: Scorer
    start_step: int
    mild: torch.nn.Module | None = None
    cache: dict = field(default_factory=dict)

    def restore(self, method: DifFace, lq: torch.Tensor, desc: str):
        return self.runner.restore(method, lq, self.faces.keys, desc)


def part_tradeoff(ctx: Context) -> dict:
    rows = [ctx.score("degraded input (LQ)", to_uint8(ctx.lq), N=None, evaluations=0, seconds_per_image=None)]
    base = ctx.runner.base
    est, sec = ctx.runner.estimate(base, ctx.lq, "estimator")
    ctx.cache["estimate"] = est
    rows.append(ctx.score("estimator f(y) (N = 0)", est, N=0, evaluations=0, seconds_per_image=sec))
    for n in [n for n in ctx.args.n_values if n > 0]:
        method = ctx.runner.method(n)
        out, _, sec = ctx.restore(method, ctx.lq, f"DifFace N={n}")
        ctx.cache[("difface", n)] = out
        rows.append(ctx.score(f"DifFace N = {n}", out, N=n, evaluations=len(method.timesteps),
                              seconds_per_image=sec))
    return {"rows": rows}


def part_robustness(ctx: Context) -> dict:
    severe = degradation_config(ctx.args.severe_from, DEFAULT_SEVERE)
    lq = degrade(ctx.faces, severe, ctx.args.seed, "severe", ctx.args.out / "lq_severe")
    rows = [ctx.score("severe degraded input (LQ)", to_uint8(lq), estimator=None, N=None)]
    estimators = [("mild", ctx.mild)] if ctx.mild is not None else []
    estimators.append(("config", ctx.runner.base.estimator))
    for name, net in estimators:
        method = ctx.runner.method(ctx.start_step, estimator=net)
        out, est, sec = ctx.restore(method, lq, f"{name} estimator + DifFace")
        rows.append(ctx.score(f"{name} estimator alone", est, estimator=name, N=0))
        rows.append(ctx.score(f"{name} estimator + DifFace N = {ctx.start_step}", out, estimator=name,
                              N=ctx.start_step, seconds_per_image=sec))
    return {"degradation": asdict(severe), "rows": rows}


def pixel_spread(images: list[np.ndarray]) -> float:
    """Mean over pixels and channels of the std (ddof 1) across the images, in [0, 255]."""
    return float(np.stack(images).astype(np.float64).std(axis=0, ddof=1).mean())


def part_diversity(ctx: Context) -> dict:
    k_samples, count = ctx.args.diversity_samples, min(ctx.args.diversity_images, len(ctx.faces.keys))
    pairs = [(i, k) for i in range(count) for k in range(k_samples)]
    index = [i for i, _ in pairs]
    method = ctx.runner.method(ctx.start_step)
    out, est, _ = ctx.runner.restore(method, ctx.lq[index], [ctx.faces.keys[i] for i in index], "diversity",
                                     samples=[k for _, k in pairs])
    per_image = []
    for i in range(count):
        chunk = slice(i * k_samples, (i + 1) * k_samples)
        per_image.append({"image": ctx.faces.keys[i], "difface": pixel_spread(out[chunk]),
                          "estimator": pixel_spread(est[chunk])})
        ctx.cache.setdefault("diversity", []).append((out[chunk], est[chunk][0]))
    result = {"N": ctx.start_step, "samples": k_samples, "images": count,
              "difface": float(np.mean([p["difface"] for p in per_image])),
              "estimator": float(np.mean([p["estimator"] for p in per_image])), "per_image": per_image}
    print(f"  pixel spread: DifFace {result['difface']:.3f}, estimator {result['estimator']:.3f}", file=sys.stderr)
    return result


def part_steps(ctx: Context) -> dict:
    rows = []
    start = ctx.args.steps_start or ctx.start_step
    for steps in ctx.args.steps_values:
        method = ctx.runner.method(start, steps=steps)
        out, _, sec = ctx.restore(method, ctx.lq, f"{steps} steps")
        rows.append(ctx.score(f"{steps} steps", out, steps=steps, evaluations=len(method.timesteps),
                              N=start, seconds_per_image=sec))
    return {"N": start, "rows": rows}


PART_FUNCS = {1: ("tradeoff", part_tradeoff), 2: ("robustness", part_robustness),
              3: ("diversity", part_diversity), 4: ("steps", part_steps)}


# --------------------------------------------------------------------------------------------
# Figures of the experiments' own images (grid.png, diversity.png)
# --------------------------------------------------------------------------------------------

def write_grid(ctx: Context) -> str:
    """grid.png: LQ / estimator / DifFace at the config's N / HQ for faces spread over the set."""
    n = len(ctx.faces.keys)
    index = list(np.unique(np.round(np.linspace(0, n - 1, min(ctx.args.grid_images, n))).astype(int)))
    lq = ctx.lq[index]
    difface = ctx.cache.get(("difface", ctx.start_step))
    if difface is None:
        difface, est, _ = ctx.runner.restore(ctx.runner.method(ctx.start_step), lq,
                                             [ctx.faces.keys[i] for i in index], "grid")
    else:
        difface, est = [difface[i] for i in index], [ctx.cache["estimate"][i] for i in index]
    rows = [("LQ", to_uint8(lq)), ("estimator\n(N = 0)", est), (f"DifFace\nN = {ctx.start_step}", difface),
            ("HQ", [ctx.score.hq[i] for i in index])]
    write_image(ctx.args.out / "grid.png", image_rows(rows))
    return "grid.png"


def write_diversity_figure(ctx: Context) -> str:
    """diversity.png: per input, LQ, the estimate, the K samples and their per-pixel std (x4, grey)."""
    rows = []
    for i, (samples, est) in enumerate(ctx.cache["diversity"]):
        std = np.stack(samples).astype(np.float64).std(axis=0, ddof=1).mean(axis=2)
        std_img = np.repeat(np.clip(std * 4, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
        rows.append((f"{i}: {ctx.faces.stems[i][:15]}\nLQ | estimator |\nsamples | std x4",
                     [tensor_to_uint8(ctx.lq[i]), est, *samples, std_img]))
    write_image(ctx.args.out / "diversity.png", image_rows(rows))
    return "diversity.png"


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heldout", type=Path, required=True, metavar="DIR",
                   help="folder of held-out HQ faces (never trained on)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="results folder")
    p.add_argument("--cfg", default="demo", help="inference preset or YAML (default: %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="inference config overrides")
    p.add_argument("--only", type=int_list, default=list(PARTS), metavar="1,2,3,4",
                   help="experiments to run: 1 trade-off, 2 robustness, 3 diversity, 4 steps (default: 1,2,3,4)")
    p.add_argument("--max-images", type=int, default=100, help="held-out images used (default: %(default)s)")
    p.add_argument("--select", choices=("spread", "first"), default="spread",
                   help="which of them: evenly spread over the sorted file list, or the first ones "
                        "(default: %(default)s)")
    p.add_argument("--degradation-from", default="configs/train/demo_estimator.yaml", metavar="YAML",
                   help="training config whose data.train.degradation gives the ranges (default: %(default)s)")
    p.add_argument("--severe-from", default=None, metavar="YAML",
                   help=f"config (data.train.degradation or a bare block) of the severe ranges of part 2 "
                        f"(default: built in, {DEFAULT_SEVERE})")
    p.add_argument("--mild-estimator", default=DEFAULT_MILD, metavar="WEIGHTS|none",
                   help="weights of the estimator trained on mild degradations (same network as the config's), "
                        "or 'none' to test only the config's estimator in part 2 (default: %(default)s)")
    p.add_argument("--n-values", type=int_list, metavar="N,N,...", default=[0, 100, 200, 300, 400, 500, 600],
                   help="start steps of part 1; N = 0 is the estimator alone (default: 0,100,...,600)")
    p.add_argument("--steps-values", type=int_list, metavar="K,K,...", default=[100, 50, 20, 10],
                   help="DDIM steps of part 4 (default: 100,50,20,10)")
    p.add_argument("--steps-start", type=int, default=400,
                   help="start step N of part 4 (default: the paper's 400; 0 = the config's N)")
    p.add_argument("--diversity-samples", type=int, default=8,
                   help="samples per input in part 3 (default: %(default)s)")
    p.add_argument("--diversity-images", type=int, default=4, help="inputs of part 3 (default: %(default)s)")
    p.add_argument("--grid-images", type=int, default=6,
                   help="faces in grid.png, spread over the set (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds the degradations and the noise (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="faces restored together (default: %(default)s)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="(default: %(default)s)")
    p.add_argument("--fid-backbone", default="fid_helper", choices=["auto", "pytorch_fid", "fid_helper"],
                   help="Inception weights of FID; fid_helper works offline (default: %(default)s)")
    p.add_argument("--weights-dir", default=None, help="where registry weights are looked up")
    p.add_argument("--no-download", dest="download", action="store_false", help="never download weights")
    p.add_argument("--overwrite", action="store_true", help="write into an OUT that already holds results")
    p.add_argument("--dry-run", action="store_true", help="check the settings, print them, run nothing")
    return p.parse_args(argv)


def check_args(args, cfg) -> None:
    """Clear errors for bad settings, before any network is built."""
    bad = [v for v in args.only if v not in PARTS]
    if bad or not args.only:
        raise ValueError(f"--only {bad or args.only}: allowed experiments are {PARTS}")
    if cfg.task != "restoration":
        raise ValueError(f"config {args.cfg} is a {cfg.task} config; this script needs a restoration one")
    for name in ("max_images", "batch_size", "diversity_images", "grid_images"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.diversity_samples < 2:
        raise ValueError(f"--diversity-samples must be >= 2 (a spread needs two samples), got {args.diversity_samples}")
    s, total = sampling_of(cfg), cfg.diffusion.steps
    for n in args.n_values if 1 in args.only else []:  # raises naming N when the grid has no step below it
        if n != 0:
            replace(s, start_step=n).timesteps(total)
    for k in args.steps_values if 4 in args.only else []:
        replace(s, start_step=args.steps_start or s.start_step, steps=k).timesteps(total)
    if (args.out / "results.json").exists() and not args.overwrite:
        raise ValueError(f"{args.out} already holds results.json; pass --overwrite to replace the results")


def settings(args, cfg, faces: Faces, standard: BlindDegradationConfig, argv: list[str]) -> dict:
    from omegaconf import OmegaConf
    return {"heldout": str(args.heldout), "images": len(faces.keys), "select": args.select,
            "skipped": faces.skipped, "keys": faces.keys,
            "parts": args.only, "n_values": args.n_values, "steps_values": args.steps_values,
            "diversity_samples": args.diversity_samples, "diversity_images": args.diversity_images,
            "degradation_from": args.degradation_from, "degradation": asdict(standard),
            "severe_from": args.severe_from or "built-in defaults", "seed": args.seed, "batch_size": args.batch_size,
            "dtype": cfg.dtype, "fid_backbone": args.fid_backbone, "overrides": list(args.overrides),
            "sampling": OmegaConf.to_container(cfg.sampling), "diffusion_steps": cfg.diffusion.steps,
            "command": " ".join(["scripts/reproduce_small.py", *argv])}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parse_args(argv)
    try:
        cfg = load_config(args.cfg, args.overrides)
        check_args(args, cfg)
        standard = degradation_config(args.degradation_from)
        severe = degradation_config(args.severe_from, DEFAULT_SEVERE) if 2 in args.only else None
        mild = None
        if 2 in args.only and args.mild_estimator.lower() != "none":
            try:
                mild = resolve_weights(args.mild_estimator, args.weights_dir, download=False)
            except WeightsError as e:
                raise ValueError(f"mild estimator (part 2): {e}; pass --mild-estimator none to test only "
                                 "the config's estimator, or leave part 2 out with --only") from None
        faces = load_heldout(args.heldout, cfg.image_size, args.max_images, args.select)
        device = pick_device(args.device)
    except (ConfigError, WeightsError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps({"settings": settings(args, cfg, faces, standard, argv), "severe": severe and asdict(severe),
                          "mild_estimator": mild and str(mild)}, indent=1, default=str))
        return 0
    try:
        runner = Runner(cfg, device, args.batch_size, args.seed, args.weights_dir, args.download)
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    lq = degrade(faces, standard, args.seed, "standard", args.out / "lq")
    print("computing FID statistics of the HQ set", file=sys.stderr)
    ctx = Context(args, runner, faces, lq, Scorer(to_uint8(faces.hq), device, args.fid_backbone),
                  cfg.sampling.start_step)
    if mild is not None:
        ctx.mild = build_estimator(cfg, str(mild), device, args.weights_dir)
    runner.restore(runner.method(ctx.start_step, steps=1), lq[:1], faces.keys[:1], "warm-up")
    meta = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine(device),
            "model": {"name": cfg.name, "config": args.cfg, "image_size": cfg.image_size,
                      "estimator": weight_file(resolve_weights(cfg.estimator.weights, args.weights_dir, False)),
                      "prior": weight_file(resolve_weights(cfg.prior.weights, args.weights_dir, False)),
                      "mild_estimator": mild and weight_file(mild)},
            "settings": settings(args, cfg, faces, standard, argv), "notes": NOTES}
    report, files = {"meta": meta}, []
    for part in sorted(set(args.only)):
        key, func = PART_FUNCS[part]
        print(f"[{part}] {PARTS[part]}", file=sys.stderr)
        start = time.perf_counter()
        report[key] = func(ctx)
        report[key]["seconds"] = round(time.perf_counter() - start, 2)
        write_reports(args.out, report)  # after every part: a late failure keeps the earlier numbers
    if "tradeoff" in report:
        files.append(plot_tradeoff(report["tradeoff"], args.out))
    if "steps" in report:
        files.append(plot_steps(report["steps"], args.out))
    if "diversity" in report:
        files.append(write_diversity_figure(ctx))
    files.append(write_grid(ctx))
    meta["files"] = ["results.md", "results.json", *files, "lq/"] + (["lq_severe/"] if "robustness" in report else [])
    write_reports(args.out, report)
    print(f"wrote {args.out / 'results.md'}", file=sys.stderr)
    return 1 if faces.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
