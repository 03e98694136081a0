#!/usr/bin/env python
"""Best of several samples (`--select fidelity`) against one sample, on held-out faces.

    python scripts/select_samples.py --heldout data/utk64/val --out results/select --start-step 200 --samples 4

The held-out faces are dealt in turn to the degradation families of metrics/heldout.py (as in
scripts/auto_start.py) and degraded once each; every face is restored --samples times at
--start-step (different noise, --sampler with --steps evaluations), and one sample per face is kept by:
- one sample: sample 0 (any fixed sample is a random pick);
- nearest the estimate / nearest the input: the sample whose coarse content (models/selection.py:
  block means on a 16 x 16 grid) is nearest the estimate f(y), or the input y;
- nearest the HQ face in PSNR: a ceiling no restorer can use (it needs the ground truth).
Scores: PSNR, SSIM, FID, KID x 1000 and the dlib identity distance (metrics/face.py) to the HQ
faces, and 95% paired-bootstrap intervals of each rule minus one sample. Writes results.json and
results.md under --out.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

import numpy as np
import torch

import metrics.heldout as rs
from difface.pipeline import sampling_of
from metrics.face import DlibIdentity
from metrics.kid import kernel_inception_distance
from models.difface import DifFace
from models.selection import faithful_choice


def parse_args(argv=None) -> argparse.Namespace:
    p = rs.study_parser(__doc__, max_images=300)
    p.add_argument("--start-step", type=int, default=200)
    p.add_argument("--samples", type=int, default=4, help="samples per face (default: %(default)s)")
    p.add_argument("--steps", type=int, default=10, help="evaluations per sample (default: %(default)s)")
    p.add_argument("--sampler", default="dpmpp_2m")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if (study := rs.start_study(args)) is None:
        return 2
    cfg, faces, device, runner = study
    base = runner.base
    method = DifFace(base.estimator, base.prior, base.schedule, cfg.image_size,
                     replace(sampling_of(cfg), start_step=args.start_step, steps=args.steps, sampler=args.sampler,
                             eta=0.0, cache_depth=None))
    lq, family = rs.degrade_families(faces, args.seed, args.out)
    keys, hq_u8 = faces.keys, rs.to_uint8(faces.hq)
    samples, estimate = [], None
    for k in range(args.samples):
        images, est, _ = runner.restore(method, lq, keys, f"sample {k}", samples=[k] * len(keys))
        samples.append(images)
        estimate = est
    stack = torch.stack([torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in s])
                         for s in samples])  # (K, B, 3, S, S)
    est_t = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in estimate])
    scorer = rs.Scorer(hq_u8, device, args.fid_backbone)
    psnr_of = np.array([[scorer.psnr.measure(im, gt).value for im, gt in zip(s, hq_u8)] for s in samples])
    choices = {"one sample": np.zeros(len(keys), dtype=int),
               "nearest the estimate": faithful_choice(stack, est_t).numpy(),
               "nearest the input": faithful_choice(stack, lq).numpy(),
               "nearest the HQ face in PSNR (ceiling)": psnr_of.argmax(0)}
    identity = DlibIdentity()
    hq_features = scorer.reference.features
    rows, kept = [], {}
    for label, pick in choices.items():
        images = [samples[k][i] for i, k in enumerate(pick)]
        row = scorer(label, images)
        feats = scorer.last_stats.features
        row["kid_x1000"] = 1000 * kernel_inception_distance(feats, hq_features)
        ids = np.array([identity(im, gt) for im, gt in zip(images, hq_u8)])
        row["id_dlib"] = float(ids.mean())
        psnr = np.asarray(row.pop("per_image")["psnr"])
        row["families"] = {f: {"psnr": float(psnr[[x == f for x in family]].mean()),
                               "id_dlib": float(ids[[x == f for x in family]].mean())} for f in rs.FAMILIES}
        kept[label] = (psnr, feats, ids)
        rows.append(row)
    first = kept["one sample"]
    for label, row in zip(choices, rows):
        if label != "one sample":
            row["vs one sample"] = rs.paired_intervals(*kept[label][:2], *first[:2], hq_features,
                                                       per_image={"id_dlib": (kept[label][2], first[2])})
    report = {"meta": {"model": cfg.name, "images": len(keys), "start_step": args.start_step,
                       "samples": args.samples, "sampler": args.sampler, "steps": args.steps, "seed": args.seed,
                       "machine": rs.machine(device),
                       "command": " ".join(["scripts/select_samples.py", *(argv or sys.argv[1:])]),
                       "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
              "rows": rows}
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    (args.out / "results.md").write_text(markdown(report))
    print(f"wrote {args.out / 'results.md'}", file=sys.stderr)
    return 0


def markdown(report: dict) -> str:
    m = report["meta"]
    lines = [f"# Best of {m['samples']} samples: {m['model']}", "",
             f"- {m['images']} held-out faces, N = {m['start_step']}, {m['sampler']} with {m['steps']} evaluations, "
             f"eta 0; seed {m['seed']}", f"- machine: {m['machine']['cpu']}; command: `{m['command']}`", "",
             "| kept | PSNR | SSIM | FID | KID×10³ | dlib identity distance "
             "| Δ vs one sample: PSNR / KID×10³ / identity |",
             "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        d = r.get("vs one sample")
        delta = (f"[{d['psnr'][0]:+.2f}, {d['psnr'][1]:+.2f}] / [{d['kid'][0]:+.2f}, {d['kid'][1]:+.2f}] / "
                 f"[{d['id_dlib'][0]:+.4f}, {d['id_dlib'][1]:+.4f}]" if d else "")
        lines.append(f"| {r['label']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['fid']:.2f} | {r['kid_x1000']:.2f} | "
                     f"{r['id_dlib']:.4f} | {delta} |")
    return "\n".join(lines + [""])


if __name__ == "__main__":
    sys.exit(main())
