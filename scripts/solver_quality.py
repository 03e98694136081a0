#!/usr/bin/env python
"""Few-step sampling at equal quality: DPM-Solver++(2M) against the paper's DDIM on held-out faces.

    python scripts/solver_quality.py --heldout data/utk64/val --out results/solver

For each start step N of --n-values (default: 400 and the config's own N) the held-out faces
(degraded once, exactly as in scripts/reproduce_small.py) are restored by
  * the reference: DDIM, eta 0.5, on the config's grid below N (100 evaluations at N = 400),
  * dpmpp_2m and dpmpp_2m_sde (for each eta of --sde-etas) with K evaluations for each K of --ks
    (first evaluation at N), and DDIM (eta 0.5, the config's official start) with K of --ddim-ks,
  * optionally dpmpp_2m in bfloat16 (--bf16-ks; with --bf16-above T only the prior's steps at t >= T)
    and the reference's deterministic limit (--ddim-eta0),
  * optionally dpmpp_2m with cached deep features (--cache-rows K:DEPTH:INTERVAL[:LAST_FULL], the
    sampling.cache_* settings of docs/deep_cache.md), whose cost is counted in full-evaluation
    equivalents (full + partial evaluations x the MAC fraction of a partial one),
and scored by PSNR / SSIM against the HQ faces and FID / KID against the HQ set. The
selected K (of either solver) is the smallest one whose FID and KID are no worse than the reference and whose
PSNR is within --psnr-tolerance dB of it (fewest: in full-evaluation equivalents, where rows cache;
the other rows run without caching, whatever the config says). As FID and KID of a few hundred faces are noisy, each row
also gets 95% intervals of its difference to the reference (KID, PSNR) from a paired bootstrap over
the faces, and the smallest K not significantly worse is reported too.
Writes results.json, results.md and solver.png, and each row's restored faces to rows/<row>.npz;
with --reuse-rows a row whose saved settings match is read back instead of restored again (the
reference takes most of the time). Rows are deterministic given their settings and the code:
delete rows/ after changing a sampler or a network.
Every row uses the same generator per (seed, face), so rows differ only by the sampler.
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

from metrics.kid import kernel_inception_distance  # noqa: E402
from models.deep_cache import evaluation_macs  # noqa: E402
from models.difface import DifFace  # noqa: E402
from difface.pipeline import ConfigError, load_config, sampling_of  # noqa: E402
from models.runtime import pick_device  # noqa: E402
from models.samplers import TAKES_ETA  # noqa: E402

SOLVERS = ("dpmpp_2m", "dpmpp_2m_sde")


def float_list(text: str) -> list[float]:
    return rs.number_list(text, float)


def cache_rows(text: str) -> list[tuple[int, ...]]:
    """'K:DEPTH:INTERVAL[:LAST_FULL],...' -> [(K, depth, interval, last_full)]; last_full defaults to 1."""
    rows = []
    for spec in (s.strip() for s in text.split(",") if s.strip()):
        try:
            values = [int(v) for v in spec.split(":")]
        except ValueError:
            values = []
        if len(values) not in (3, 4) or min(values[:3]) < 1 or values[-1] < 0:
            raise argparse.ArgumentTypeError(f"expected K:DEPTH:INTERVAL[:LAST_FULL] (positive integers, "
                                             f"LAST_FULL >= 0), got {spec!r}")
        rows.append(tuple(values) if len(values) == 4 else (*values, 1))
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heldout", type=Path, metavar="DIR", help="folder of held-out HQ faces (required unless --merge)")
    p.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                   help="only combine the results.json of earlier runs (e.g. one per N) into --out")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="results folder")
    p.add_argument("--cfg", default="demo", help="inference preset or YAML (default: %(default)s)")
    p.add_argument("--n-values", type=rs.int_list, default=None, metavar="N,N",
                   help="start steps (default: 400 and the config's start step)")
    p.add_argument("--ks", type=rs.int_list, default=[5, 8, 10, 15, 20], metavar="K,K,...",
                   help="evaluations per face of the few-step rows (default: 5,8,10,15,20)")
    p.add_argument("--sde-etas", type=float_list, default=[0.5, 1.0], metavar="ETA,ETA",
                   help="noise scales of the dpmpp_2m_sde rows, 1 = the full SDE (default: 0.5,1.0)")
    p.add_argument("--ddim-ks", type=rs.int_list, default=[10], metavar="K,K",
                   help="DDIM (eta 0.5) rows with K evaluations, for comparison (default: 10)")
    p.add_argument("--ddim-eta0", action="store_true",
                   help="also the reference's deterministic limit: DDIM eta 0 on the same grid")
    p.add_argument("--bf16-ks", type=rs.int_list, default=[], metavar="K,K",
                   help="dpmpp_2m rows run in bfloat16 autocast, for comparison with fp32 (default: none)")
    p.add_argument("--bf16-above", type=rs.int_list, default=[], metavar="T,T",
                   help="for each T, also the --bf16-ks rows with bf16 only for the prior at base steps >= T "
                        "(low_precision_from_step)")
    p.add_argument("--cache-rows", type=cache_rows, default=[], metavar="K:D:I[:L],...",
                   help="dpmpp_2m rows with K evaluations and cached deep features at branch depth D, a full "
                        "evaluation every I and the last L (default 1) always full (default: none)")
    p.add_argument("--fid-intervals", action="store_true",
                   help="also bootstrap the FID difference (slower: about 0.3 s per draw and row)")
    p.add_argument("--psnr-tolerance", type=float, default=0.2, help="dB below the reference (default: 0.2)")
    p.add_argument("--max-images", type=int, default=100, help="held-out faces used (default: %(default)s)")
    p.add_argument("--degradation-from", default="configs/train/demo_estimator.yaml", metavar="YAML")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--fid-backbone", default="fid_helper", choices=["auto", "pytorch_fid", "fid_helper"])
    p.add_argument("--reuse-rows", action="store_true",
                   help="read back rows saved in OUT/rows by an earlier run with the same settings")
    return p.parse_args(argv)


class Scores:
    """PSNR / SSIM per face, FID and KID (x 1000) against the HQ set; keeps each row's per-face
    PSNR and Inception features for the paired bootstrap of `compare`."""

    def __init__(self, hq: list[np.ndarray], device, backbone: str):
        self.base = rs.Scorer(hq, device, backbone)
        self.kept: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, label: str, images: list[np.ndarray], **info) -> dict:
        row = self.base(label, images, **info)
        features, reference = self.base.last_stats.features, self.base.reference.features
        if features is None or reference is None:
            raise ValueError(f"KID needs the Inception features: use fewer than 2048 images (got {len(images)})")
        row["kid_x1000"] = 1000 * kernel_inception_distance(features, reference)
        self.kept[label] = (np.asarray(row.pop("per_image")["psnr"]), features)
        print(f"  {label}: KIDx1000 {row['kid_x1000']:.2f}", file=sys.stderr)
        return row

    def compare(self, row: dict, reference: dict, key: str = "delta", reps: int = 200, seed: int = 0,
                fid: bool = False) -> None:
        """95% intervals of (row - reference) in KID x 1000 and PSNR (and FID with `fid`) under a
        paired bootstrap over the faces (both rows restore the same faces; each draw resamples the
        faces once, for the two rows and the HQ set alike). Adds '<metric>_<key>_ci' to `row`."""
        (psnr_a, feat_a), (psnr_b, feat_b) = self.kept[row["label"]], self.kept[reference["label"]]
        for metric, interval in rs.paired_intervals(psnr_a, feat_a, psnr_b, feat_b, self.base.reference.features,
                                                    reps, seed, fid).items():
            row[f"{metric}_{key}_ci"] = interval


def cost(row: dict) -> float:
    """A row's network work per face in full-evaluation equivalents (its evaluations unless it caches)."""
    return row.get("equivalents", row["evaluations"])


def _fewest(rows: list[dict], accept) -> dict | None:
    """The cheapest fp32 solver row that `accept`s (on a tie the first of SOLVERS, then uncached)."""
    ok = [r for r in rows if r["sampler"] in SOLVERS and r.get("dtype", "fp32") == "fp32" and accept(r)]
    return min(ok, key=lambda r: (cost(r), SOLVERS.index(r["sampler"]), "cache" in r)) if ok else None


def choose(reference: dict, rows: list[dict], tolerance: float) -> dict | None:
    """The fewest-evaluation fp32 solver row no worse than the reference in FID, KID and PSNR - tolerance."""
    return _fewest(rows, lambda r: r["fid"] <= reference["fid"] and r["kid_x1000"] <= reference["kid_x1000"]
                   and r["psnr"] >= reference["psnr"] - tolerance)


def within_noise(rows: list[dict], tolerance: float) -> dict | None:
    """The fewest-evaluation fp32 solver row not significantly worse than the reference: its ΔKID
    interval (and ΔFID interval, where bootstrapped) reaches 0 and its ΔPSNR interval reaches -tolerance."""
    return _fewest(rows, lambda r: "kid_delta_ci" in r and r["kid_delta_ci"][0] <= 0
                   and r.get("fid_delta_ci", [0.0])[0] <= 0 and r["psnr_delta_ci"][1] >= -tolerance)


def plot(results: list[dict], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("psnr", "PSNR (dB) ↑"), ("fid", "FID ↓"), ("kid_x1000", "KID ×1000 ↓")]
    fig, axes = plt.subplots(len(results), 3, figsize=(12, 3.4 * len(results)), squeeze=False)
    for row_axes, res in zip(axes, results):
        ref = res["reference"]
        for ax, (key, title) in zip(row_axes, panels):
            series = dict.fromkeys(r["label"].rsplit(" K = ", 1)[0] for r in res["rows"])
            for name, style in zip(series, ("o-", "^-", "v-", "D-", "s--", "x-")):
                rows = [r for r in res["rows"] if r["label"].rsplit(" K = ", 1)[0] == name]
                ax.plot([cost(r) for r in rows], [r[key] for r in rows], style,
                        label=f"{name}" + (" (K evaluations)" if " K = " in rows[0]["label"] else ""))
            ax.axhline(ref[key], color="grey", ls=":", label=f"DDIM reference ({ref['evaluations']} evals)")
            ax.set(xlabel="network evaluations per face (full-evaluation equivalents)",
                   title=f"{title}, N = {res['N']}")
            ax.grid(alpha=0.3)
        row_axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "solver.png", dpi=110)
    plt.close(fig)


def markdown(report: dict) -> str:
    m = report["meta"]
    lines = [f"# Few-step sampling: {m['model']}", "",
             f"- machine: {m['machine']}; torch {m['torch']}",
             f"- held-out faces: {m['images']} of `{m['heldout']}` at {m['image_size']} px, degraded as in "
             f"scripts/reproduce_small.py (ranges of `{m['degradation_from']}`, seed {m['seed']})",
             f"- FID/KID: Inception pool3 of the restored set vs the HQ set ({m['images']} images: FID is biased "
             "upward, compare within a table only)", f"- command: `{m['command']}`", ""]
    for res in report["results"]:
        lines += [f"## N = {res['N']}", "",
                  "| sampler | evaluations | PSNR ↑ | SSIM ↑ | FID ↓ | KID×10³ ↓ | ΔFID (95%) | ΔKID×10³ (95%) "
                  "| ΔPSNR (95%) | s / face |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in [res["reference"], *res["rows"]]:
            ci = [f"[{r[k][0]:+.2f}, {r[k][1]:+.2f}]" if k in r else "—"
                  for k in ("fid_delta_ci", "kid_delta_ci", "psnr_delta_ci")]
            evals = f"{r['evaluations']}" + (f" (= {r['equivalents']:.1f} full)" if "equivalents" in r else "")
            lines.append(f"| {r['label']} | {evals} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['fid']:.2f} "
                         f"| {r['kid_x1000']:.2f} | {ci[0]} | {ci[1]} | {ci[2]} | {r['seconds_per_image']:.3f} |")
        pick, close = res["selected"], res.get("within_noise")
        lines += ["", "Δ: row minus the reference, 95% paired bootstrap interval over the faces.", ""]
        lines += [f"{r['label']} minus its fp32 row: ΔKID×10³ [{r['kid_vs_fp32_ci'][0]:+.2f}, "
                  f"{r['kid_vs_fp32_ci'][1]:+.2f}], "
                  f"ΔPSNR [{r['psnr_vs_fp32_ci'][0]:+.3f}, {r['psnr_vs_fp32_ci'][1]:+.3f}]"
                  for r in res["rows"] if "kid_vs_fp32_ci" in r]
        lines += ["",
                  f"Selected (no worse in FID, KID, PSNR - {m.get('psnr_tolerance', 0.2)} dB): "
                  f"{pick['label'] if pick else 'none qualifies'}",
                  f"Not significantly worse (ΔKID and ΔFID intervals reach 0, ΔPSNR interval reaches -"
                  f"{m.get('psnr_tolerance', 0.2)} dB): {close['label'] if close else 'none'}", ""]
    return "\n".join(lines + ["![solver](solver.png)", ""])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parse_args(argv)
    if args.merge:
        merge(args.merge, args.out)
        print(f"wrote {args.out / 'results.md'}", file=sys.stderr)
        return 0
    if args.heldout is None:
        print("error: --heldout DIR is required (unless --merge)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        cfg = load_config(args.cfg)
        n_values = args.n_values or sorted({400, cfg.sampling.start_step}, reverse=True)
        faces = rs.load_heldout(args.heldout, cfg.image_size, args.max_images)
        standard = rs.degradation_config(args.degradation_from)
        device = pick_device(args.device)
        levels = len(cfg.prior.params.get("channel_mult", ()))
        if any(depth > levels for _, depth, _, _ in args.cache_rows):
            raise ValueError(f"--cache-rows: a branch depth above the prior's {levels} resolution levels")
    except (ConfigError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runner = rs.Runner(cfg, device, args.batch_size, args.seed, None, False)
    args.out.mkdir(parents=True, exist_ok=True)
    lq = rs.degrade(faces, standard, args.seed, "standard", args.out / "lq")
    score = Scores(rs.to_uint8(faces.hq), device, args.fid_backbone)
    base, s = runner.base, sampling_of(cfg)

    depths = sorted({depth for _, depth, _, _ in args.cache_rows})
    macs = evaluation_macs(cfg.prior.params, cfg.image_size, depths) if depths else {}

    def run(label: str, sampler: str, n: int, steps: int | None, eta: float = 0.5, dtype: str = "fp32",
            low_from: int | None = None, cache: tuple[int, int, int] | None = None) -> dict:
        """One row; `low_from`: `dtype` only for the prior at t >= low_from (low_precision_from_step);
        `cache`: (depth, interval, last_full) of cached deep features."""
        sampling = replace(s, start_step=n, steps=steps, eta=eta, sampler=sampler, cache_depth=None)
        if cache is not None:
            sampling = replace(sampling, cache_depth=cache[0], cache_interval=cache[1], cache_full_steps=None,
                               cache_last_full=cache[2])
        method = DifFace(base.estimator, base.prior, base.schedule, cfg.image_size, sampling, dtype=dtype,
                         low_precision_from_step=low_from)
        eta = eta if sampler in TAKES_ETA else 0.0
        dtype = dtype if low_from is None else f"{dtype}>={low_from}"
        settings = {"cfg": cfg.name, "heldout": str(args.heldout), "keys": faces.keys, "seed": args.seed,
                    "degradation_from": args.degradation_from, "sampler": sampler, "eta": eta, "dtype": dtype,
                    "timesteps": method.timesteps}
        extra = {}
        if cache is not None:
            settings["cache"] = list(cache)
            full, partial = method.full_steps.count(True), method.full_steps.count(False)
            extra = {"cache": list(cache), "equivalents": full + partial * macs[cache[0]] / macs[None]}
        saved = args.out / "rows" / f"N{n} {label}.npz"
        out, sec = load_row(saved, settings) if args.reuse_rows else (None, None)
        if out is None:
            out, _, sec = runner.restore(method, lq, faces.keys, label)
            save_row(saved, settings, out, sec)
        return score(label, out, sampler=sampler, eta=eta, dtype=dtype, N=n,
                     evaluations=len(method.timesteps), seconds_per_image=sec, **extra)

    warm = replace(s, start_step=400, steps=1)
    runner.restore(DifFace(base.estimator, base.prior, base.schedule, cfg.image_size, warm),
                   lq[:1], faces.keys[:1], "warm-up")
    results = []
    for n in n_values:  # results.json after each N, so that a late failure keeps the earlier numbers
        plan = [("dpmpp_2m", "dpmpp_2m", 0.0, args.ks),
                *((f"dpmpp_2m_sde eta {eta:g}", "dpmpp_2m_sde", eta, args.ks) for eta in args.sde_etas),
                ("DDIM eta 0.5", "ddim", 0.5, args.ddim_ks)]
        rows = [run(f"{name} K = {k}", sampler, n, k, eta) for name, sampler, eta, ks in plan for k in ks if k <= n]
        rows += [run(f"dpmpp_2m bf16 K = {k}", "dpmpp_2m", n, k, 0.0, "bf16") for k in args.bf16_ks if k <= n]
        rows += [run(f"dpmpp_2m bf16 at t >= {t} K = {k}", "dpmpp_2m", n, k, 0.0, "bf16", t)
                 for t in args.bf16_above for k in args.bf16_ks if k <= n]
        rows += [run(f"dpmpp_2m cache depth {d} every {i}" + (f" last {last}" if last != 1 else "") + f" K = {k}",
                     "dpmpp_2m", n, k, 0.0, cache=(d, i, last)) for k, d, i, last in args.cache_rows if k <= n]
        if args.ddim_eta0:
            rows.append(run(f"DDIM eta 0, grid {s.grid}", "ddim", n, None, 0.0))
        ref = run(f"DDIM eta 0.5, grid {s.grid}", "ddim", n, None)
        for row in rows:
            score.compare(row, ref, fid=args.fid_intervals)
            twin = [r for r in rows if row["dtype"] != "fp32" and r["dtype"] == "fp32" and "cache" not in r
                    and (r["sampler"], r["evaluations"]) == (row["sampler"], row["evaluations"])]
            if twin:  # reduced precision against fp32, same solver and K
                score.compare(row, twin[0], key="vs_fp32")
        results.append({"N": n, "reference": ref, "rows": rows, "selected": choose(ref, rows, args.psnr_tolerance),
                        "within_noise": within_noise(rows, args.psnr_tolerance)})
        write(args, cfg, device, faces, argv, results)
    print(f"wrote {args.out / 'results.md'}", file=sys.stderr)
    return 0


def save_row(path: Path, settings: dict, images: list[np.ndarray], seconds_per_image: float) -> None:
    """A row's restored faces (uint8) with the settings that made them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"settings": settings, "seconds_per_image": seconds_per_image})
    np.savez_compressed(path, images=np.stack(images), meta=np.array(meta))


def load_row(path: Path, settings: dict) -> tuple[list[np.ndarray] | None, float | None]:
    """(images, seconds per image) saved by `save_row` with exactly these settings, else (None, None)."""
    if not path.is_file():
        return None, None
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        if meta["settings"] != json.loads(json.dumps(settings)):
            print(f"  {path.name}: saved with other settings, restoring again", file=sys.stderr)
            return None, None
        print(f"  {path.name}: read back", file=sys.stderr)
        return list(data["images"]), meta["seconds_per_image"]


def write(args, cfg, device, faces, argv, results: list[dict]) -> None:
    mach = rs.machine(device)
    meta = {"model": cfg.name, "machine": f"{mach['cpu']} ({mach['cpu_count']} CPUs, {mach['torch_threads']} torch "
                                          f"threads), device {mach['device']}", "torch": torch.__version__,
            "images": len(faces.keys), "heldout": str(args.heldout), "image_size": cfg.image_size,
            "degradation_from": args.degradation_from, "seed": args.seed, "psnr_tolerance": args.psnr_tolerance,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(["scripts/solver_quality.py", *argv])}
    report = {"meta": meta, "results": results}
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    plot(results, args.out)
    (args.out / "results.md").write_text(markdown(report))


def merge(paths: list[Path], out: Path) -> None:
    """One report (results.json/.md, solver.png in `out`) from several runs' results.json."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    meta = dict(reports[0]["meta"], command="; ".join(r["meta"]["command"] for r in reports))
    results = sorted((res for r in reports for res in r["results"]), key=lambda res: -res["N"])
    out.mkdir(parents=True, exist_ok=True)
    report = {"meta": meta, "results": results}
    (out / "results.json").write_text(json.dumps(report, indent=1))
    plot(results, out)
    (out / "results.md").write_text(markdown(report))


if __name__ == "__main__":
    sys.exit(main())
