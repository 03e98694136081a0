#!/usr/bin/env python
"""A start step per face (`start_step: auto`) against fixed N, on held-out faces of several degradations.

    python scripts/auto_start.py --heldout data/utk64/val --train data/utk64/train --out results/auto_start

The held-out faces are dealt in turn to the degradation families of metrics/heldout.py (mild and
severe mixes of every step of the blind degradation, and strong blur, downsampling, noise or JPEG
alone) and degraded once each (seeded per face, as in scripts/reproduce_small.py). Everything auto
uses is fitted on training faces (--train), degraded with the estimator's training ranges
(--degradation-from), never on the held-out faces:
1. Two heads of models/auto_start.py (five weights each, least squares): the error head, fitted to
   the estimator error (mean square of f(y) - x in [-1, 1] units) of --train-images faces; and the
   oracle head, fitted to the oracle N (below) of the first --oracle-images of them, as a
   noise-to-signal ratio. The constant c of the rule is chosen for each on a grid, on the training
   faces, to bring their results nearest their HQ faces. On the held-out faces: Spearman rank
   correlation of each head and of the bare probe (at each of --probe-steps; the first feeds the
   heads) with the true error, overall and per family.
2. Fixed N: every held-out face restored at each N of --n-values (--sampler, --steps K each).
3. The oracle: each face at the N of (2) whose result is nearest its HQ face in Inception pool3
   features (the space KID and FID are measured in; LPIPS needs backbone weights this harness does
   not assume). The training faces' oracle N is found the same way.
4. auto (the oracle head), the error head, the rule fed the true error (its ceiling as an error
   rule), and auto's N values dealt to the faces at random (is it the choice per face that helps,
   or only the mix of N?); every face gets the same K evaluations as the fixed rows.
Scores: PSNR, SSIM, FID, KID x 1000 and the dlib identity distance (metrics/face.py) against the
HQ faces, overall and per family, and 95% paired-bootstrap intervals of auto minus every other
row. Writes results.json, results.md and auto_start.png (PSNR against KID: the fixed-N curve,
auto and the other rows) under --out.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import metrics.heldout as rs
from difface.pipeline import sampling_of
from metrics.face import DlibIdentity
from metrics.heldout import FAMILIES, degrade_families
from metrics.kid import kernel_inception_distance
from models.auto_start import (FEATURES, AutoStart, error_features, fit_weights, noise_to_signal, predicted_error,
                               probe_error, start_step)
from models.difface import DifFace

CONSTANTS = np.geomspace(0.01, 100, 81)  # the grid the calibration constant is chosen from


def parse_args(argv=None) -> argparse.Namespace:
    p = rs.study_parser(__doc__, max_images=300)
    p.add_argument("--n-values", type=rs.int_list, default=[0, 30, 100, 200, 400], metavar="N,N,...")
    p.add_argument("--steps", type=int, default=10, help="evaluations per face (default: %(default)s)")
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--probe-steps", type=rs.int_list, default=[100, 200, 300], metavar="T,T",
                   help="probe steps whose predictions are compared; the first is used for auto")
    p.add_argument("--max-step", type=int, default=400, help="auto's N is clipped to [0, this]")
    p.add_argument("--train", type=Path, required=True, metavar="DIR",
                   help="training faces the heads are fitted on (not the held-out ones)")
    p.add_argument("--train-images", type=int, default=2000, help="faces the error head is fitted on")
    p.add_argument("--oracle-images", type=int, default=500,
                   help="the first this many of them are restored at every N for the best-N head "
                        "(default: %(default)s)")
    p.add_argument("--degradation-from", default="configs/train/demo_estimator.yaml", metavar="YAML",
                   help="the degradation ranges of the fitting faces: the estimator's training ranges")
    return p.parse_args(argv)


def spearman(a, b) -> float:
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).statistic)


def choose_constant(errors: np.ndarray, distances: np.ndarray, n_values: list[int], abar: np.ndarray,
                    max_step: int) -> float:
    """The constant of CONSTANTS whose N per face, snapped to the nearest of `n_values` in
    noise-to-signal ratio, gives the smallest mean feature distance (`distances`: faces x n_values)."""
    levels = np.array([(1 - abar[n]) / abar[n] if n else 0.0 for n in n_values])

    def snapped(c: float) -> np.ndarray:
        auto = AutoStart(constant=c, max_step=max_step)
        nsr = np.array([(1 - abar[n]) / abar[n] if n else 0.0 for n in (start_step(e, abar, auto) for e in errors)])
        return np.abs(np.log1p(1e3 * nsr)[:, None] - np.log1p(1e3 * levels)[None]).argmin(1)

    costs = [distances[np.arange(len(errors)), snapped(c)].mean() for c in CONSTANTS]
    return float(CONSTANTS[int(np.argmin(costs))])


def main(argv=None) -> int:
    args = parse_args(argv)
    if (study := rs.start_study(args)) is None:
        return 2
    cfg, faces, device, runner = study
    base, s = runner.base, sampling_of(cfg)
    abar = np.asarray(base.schedule.alphas_cumprod, dtype=np.float64)
    lq, family = degrade_families(faces, args.seed, args.out)
    hq_u8 = rs.to_uint8(faces.hq)
    scorer = rs.Scorer(hq_u8, device, args.fid_backbone)
    hq_features = scorer.reference.features
    keys = faces.keys

    def method(n: int) -> DifFace:
        return DifFace(base.estimator, base.prior, base.schedule, cfg.image_size,
                       replace(s, start_step=n, steps=min(args.steps, n) if n else None, sampler=args.sampler, eta=0.0,
                               cache_depth=None))

    plain = method(0)

    def measure(lq_set: torch.Tensor, hq_set: torch.Tensor, names: list[str]) -> dict:
        """Estimates, true errors, probe distances at each probe step, head features (first probe step)."""
        est_, probes_ = [], {tp: [] for tp in args.probe_steps}
        with torch.no_grad():
            for i in range(0, len(names), args.batch_size):
                e = plain.estimate_input(lq_set[i:i + args.batch_size].to(device)).float().cpu()
                est_.append(e)
                for tp in args.probe_steps:
                    probes_[tp].append(probe_error(plain._prior, e.to(device), float(abar[tp]), tp).cpu())
        est_ = torch.cat(est_)
        probes_ = {tp: torch.cat(v) for tp, v in probes_.items()}
        return {"est": est_, "error": 4 * (est_ - hq_set).pow(2).flatten(1).mean(1), "probe": probes_,
                "features": error_features(probes_[args.probe_steps[0]], est_, lq_set)}

    def restored_distances(lq_set: torch.Tensor, est_set: torch.Tensor, set_keys: list[str], hq_feats: np.ndarray,
                           tag: str) -> tuple[dict, np.ndarray]:
        """Each face restored at every N of --n-values: (images per N, feature distances faces x N)."""
        imgs, dist = {}, []
        for n in args.n_values:
            imgs[n] = (rs.to_uint8(est_set) if n == 0 else
                       runner.restore(method(n), lq_set, set_keys, f"{tag} N = {n}")[0])
            dist.append(((scorer.fid.stats(imgs[n]).features - hq_feats) ** 2).sum(1))
        return imgs, np.stack(dist, 1)

    # 1. training faces: the error head on --train-images of them; each of the first --oracle-images
    #    restored at every fixed N, its oracle N, and the head fitted to it
    train = rs.load_heldout(args.train, cfg.image_size, args.train_images)
    train_lq = rs.degrade(train, rs.degradation_config(args.degradation_from), args.seed, "train",
                          args.out / "train_lq")
    fitted = measure(train_lq, train.hq, train.keys)
    m = min(args.oracle_images, len(train.keys))
    cache = args.out / "train_distances.npz"  # the training faces' restorations: the long part, kept for a rerun
    setting = json.dumps([cfg.name, args.n_values, args.steps, args.sampler, args.seed, args.train_images,
                          args.degradation_from, train.keys[:m]])
    saved = np.load(cache) if cache.is_file() else None
    if saved is not None and str(saved["setting"]) == setting:
        train_distances = saved["d"]
    else:
        train_hq_features = scorer.fid.stats(rs.to_uint8(train.hq[:m])).features
        train_distances = restored_distances(train_lq[:m], fitted["est"][:m], train.keys[:m], train_hq_features,
                                             "training faces")[1]
        np.savez(cache, d=train_distances, setting=np.array(setting))
    train_oracle_n = [args.n_values[b] for b in train_distances.argmin(1)]
    floor = noise_to_signal(float(abar[1]))
    oracle_target = torch.tensor([max(noise_to_signal(float(abar[n])), floor) for n in train_oracle_n])
    heads = {"error head": fit_weights(fitted["features"], fitted["error"]),
             "oracle head": fit_weights(fitted["features"][:m], oracle_target)}
    train_predicted = {"auto, true error": fitted["error"][:m].numpy(),
                       **{label: predicted_error(fitted["features"][:m], w).numpy() for label, w in heads.items()}}
    constants = {label: choose_constant(v, train_distances, args.n_values, abar, args.max_step)
                 for label, v in train_predicted.items()}
    print(json.dumps({"weights": heads, "constants": constants}, indent=1), file=sys.stderr)

    # 2. held-out faces: error prediction
    held = measure(lq, faces.hq, keys)
    est, true_error = held["est"], held["error"].numpy()
    predicted = {f"probe at t = {tp}": held["probe"][tp].numpy() for tp in args.probe_steps}
    predicted["error head"] = predicted_error(held["features"], heads["error head"]).numpy()
    predicted["oracle head"] = predicted_error(held["features"], heads["oracle head"]).numpy()
    names = list(FAMILIES)
    correlation = {label: {"all": spearman(v, true_error),
                           **{f: spearman(v[[x == f for x in family]], true_error[[x == f for x in family]])
                              for f in names}} for label, v in predicted.items()}
    print(json.dumps(correlation, indent=1), file=sys.stderr)

    # 3. fixed N and the oracle
    images, distances = restored_distances(lq, est, keys, hq_features, "held-out")
    best = distances.argmin(1)
    oracle_n = [args.n_values[b] for b in best]
    images["oracle"] = [images[args.n_values[b]][i] for i, b in enumerate(best)]

    # 4. auto: the oracle head (the shipped rule), the error head, the rule fed the true error (its
    #    ceiling), and the oracle head's N dealt to the faces at random (does the choice per face
    #    matter, or only the mix of N?); every weight and constant fitted on the training faces
    rule_inputs = {"auto, true error": true_error, "auto, error head": predicted["error head"],
                   "auto": predicted["oracle head"]}
    heads_of = {"auto, true error": "auto, true error", "auto, error head": "error head", "auto": "oracle head"}
    auto_ns = {label: np.array([start_step(e, abar, AutoStart(constant=constants[heads_of[label]],
                                                                max_step=args.max_step)) for e in v])
               for label, v in rule_inputs.items()}
    auto_ns["auto, N shuffled"] = np.random.default_rng(args.seed).permutation(auto_ns["auto"])
    agreement = {label: spearman(n, oracle_n) for label, n in auto_ns.items()}
    for label, auto_n in auto_ns.items():
        auto_images: list = [None] * len(keys)
        for n in sorted(set(auto_n.tolist())):
            idx = np.flatnonzero(auto_n == n)
            done = (rs.to_uint8(est[idx]) if n == 0 else
                    runner.restore(method(n), lq[idx], [keys[i] for i in idx], f"{label} N = {n}")[0])
            for i, image in zip(idx, done):
                auto_images[i] = image
        images[label] = auto_images

    # scores
    rows, kept = [], {}
    identity = DlibIdentity()
    labels = [*args.n_values, "oracle", "auto, true error", "auto, error head", "auto, N shuffled", "auto"]
    for label in labels:
        name = f"N = {label}" if isinstance(label, int) else label
        row = scorer(name, images[label])
        feats = scorer.last_stats.features
        row["kid_x1000"] = 1000 * kernel_inception_distance(feats, hq_features)
        psnr = np.asarray(row.pop("per_image")["psnr"])
        ids = np.array([identity(im, gt) for im, gt in zip(images[label], hq_u8)])
        row["id_dlib"] = float(ids.mean())
        kept[label] = (psnr, feats, ids)
        row["families"] = {}
        for f in names:
            mask = np.array([x == f for x in family])
            row["families"][f] = {"psnr": float(psnr[mask].mean()), "id_dlib": float(ids[mask].mean()),
                                  "kid_x1000": 1000 * kernel_inception_distance(feats[mask], hq_features[mask])}
        rows.append(row)
    auto_row = rows[-1]
    for label, row in zip(labels[:-1], rows[:-1]):
        auto_row[f"vs {row['label']}"] = rs.paired_intervals(*kept["auto"][:2], *kept[label][:2], hq_features,
                                                             per_image={"id_dlib": (kept["auto"][2], kept[label][2])})
    report = {"meta": {"model": cfg.name, "images": len(keys), "families": FAMILIES, "sampler": args.sampler,
                       "steps": args.steps, "seed": args.seed, "machine": rs.machine(device),
                       "command": " ".join(["scripts/auto_start.py", *(argv or sys.argv[1:])]),
                       "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
              "correlation": correlation, "head_weights": heads, "constants": constants,
              "training_oracle_n": {str(n): train_oracle_n.count(n) for n in args.n_values},
              "agreement_with_oracle_n": agreement,
              "auto_n": {label: {"all": float(np.median(n)), **{f: float(np.median(n[[x == f for x in family]]))
                                                               for f in names}} for label, n in auto_ns.items()},
              "oracle_n": {f: float(np.median([n for n, x in zip(oracle_n, family) if x == f])) for f in names},
              "rows": rows}
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    (args.out / "results.md").write_text(markdown(report))
    plot(rows, args.out / "auto_start.png")
    print(f"wrote {args.out / 'results.md'}", file=sys.stderr)
    return 0


def markdown(report: dict) -> str:
    m = report["meta"]
    lines = [f"# Start step per face: {m['model']}", "",
             f"- {m['images']} held-out faces, families dealt in turn: " + ", ".join(m["families"]),
             f"- {m['sampler']}, {m['steps']} evaluations per face, eta 0; seed {m['seed']}",
             f"- machine: {m['machine']['cpu']}; command: `{m['command']}`", "",
             "## Error prediction (Spearman rank correlation with the estimator's true error)", "",
             "| predictor | " + " | ".join(next(iter(report["correlation"].values()))) + " |"]
    first = next(iter(report["correlation"].values()))
    lines.append("|---" * (len(first) + 1) + "|")
    for label, c in report["correlation"].items():
        lines.append(f"| {label} | " + " | ".join(f"{c[f]:.3f}" for f in first) + " |")
    lines += ["", f"Head weights ({', '.join(FEATURES)}): {report['head_weights']}",
              f"Constants: {report['constants']}", f"Training faces' oracle N: {report['training_oracle_n']}",
              f"Spearman of N with the held-out oracle N: {report['agreement_with_oracle_n']}",
              f"auto N: {report['auto_n']}", f"oracle N: {report['oracle_n']}",
              "", "## Restorations", "",
              "| N | PSNR | SSIM | FID | KID×10³ | dlib identity distance | mild: PSNR / KID×10³ "
              "| severe: PSNR / KID×10³ |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        fam = r["families"]
        lines.append(f"| {r['label']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['fid']:.2f} | {r['kid_x1000']:.2f} | "
                     f"{r['id_dlib']:.4f} | {fam['mild']['psnr']:.2f} / {fam['mild']['kid_x1000']:.1f} | "
                     f"{fam['severe']['psnr']:.2f} / {fam['severe']['kid_x1000']:.1f} |")
    auto = report["rows"][-1]
    lines += ["", "auto minus each row (95% paired bootstrap): "]
    lines += [f"- {k[3:]}: ΔKID×10³ [{v['kid'][0]:+.2f}, {v['kid'][1]:+.2f}], ΔPSNR [{v['psnr'][0]:+.2f}, "
              f"{v['psnr'][1]:+.2f}], Δidentity [{v['id_dlib'][0]:+.4f}, {v['id_dlib'][1]:+.4f}]"
              for k, v in auto.items() if k.startswith("vs ")]
    lines += ["", "Per family (PSNR / KID×10³):", "",
              "| N | " + " | ".join(report["rows"][0]["families"]) + " |",
              "|---" * (len(report["rows"][0]["families"]) + 1) + "|"]
    for r in report["rows"]:
        lines.append(f"| {r['label']} | " + " | ".join(f"{v['psnr']:.2f} / {v['kid_x1000']:.1f}"
                                                       for v in r["families"].values()) + " |")
    return "\n".join(lines + ["", "![PSNR against KID](auto_start.png)", ""])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fixed = [r for r in rows if r["label"].startswith("N = ")]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([r["kid_x1000"] for r in fixed], [r["psnr"] for r in fixed], "o-", label="fixed N")
    for r in fixed:
        ax.annotate(r["label"][4:], (r["kid_x1000"], r["psnr"]), textcoords="offset points", xytext=(4, 4))
    for r, style in zip([r for r in rows if not r["label"].startswith("N = ")], ("s", "^", "v", "D", "*")):
        ax.plot([r["kid_x1000"]], [r["psnr"]], style, markersize=11, label=r["label"])
    ax.set(xlabel="KID ×1000 ↓", ylabel="PSNR (dB) ↑", title="start step per face against fixed N")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    from PIL import Image
    with Image.open(path) as im:  # a 64-colour palette: a quarter of the bytes, the same picture
        small = im.convert("RGB").quantize(colors=64)
    small.save(path, optimize=True)


if __name__ == "__main__":
    sys.exit(main())
