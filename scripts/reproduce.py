"""Reproduce the paper's tables and figures: one sub-command per table or figure.

    python scripts/reproduce.py celeba-test --hq CELEBA_HQ_DIR --out results/celeba
    python scripts/reproduce.py realworld --set wider=WIDER_DIR --set lfw=LFW_DIR --fid-ref FFHQ_DIR_OR_NPZ
    python scripts/reproduce.py ablation-n --hq CELEBA_HQ_DIR --values 0,100,200,300,400,500,600
    python scripts/reproduce.py ablation-eta --hq CELEBA_HQ_DIR --values 0,0.25,0.5,0.75,1
    python scripts/reproduce.py inpainting --hq CELEBA_256_DIR --out results/inpainting
    python scripts/reproduce.py curves --out results/curves        # kappa_N / alpha_N (Fig. 4)

Each step is the project's own command (make_test_set.py, inference.py, evaluate.py), so every
number can be recomputed by hand; every run writes a Markdown table (`table.md`) into --out.
`--max-images N` gives a quick run on the first N images. Weights: as inference.py.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESTORATION_METRICS = "psnr,ssim,lpips,fid,id,lmd"


def call(script: str, *args) -> int:
    """Run one of the project's commands; its exit code (1 = some image or metric failed)."""
    cmd = [sys.executable, str(REPO / script), *[str(a) for a in args]]
    print("$", " ".join(cmd), flush=True)
    code = subprocess.run(cmd).returncode
    if code >= 2:
        raise SystemExit(f"step failed with exit code {code}: {' '.join(cmd)}")
    return code


def restore(args, lq: Path, out: Path, *extra) -> None:
    call("inference.py", "-i", lq, "-o", out, "--aligned", "--cfg", args.cfg, "--device", args.device,
         "--dtype", args.dtype, "--batch-size", args.batch_size, *extra, *args.overrides)


def evaluate(args, restored: Path, out: Path, gt: Path | None, metrics: str, fid_ref=None) -> dict:
    extra = (["--gt", gt] if gt else []) + (["--fid-ref", fid_ref] if fid_ref else [])
    call("scripts/evaluate.py", "--restored", restored, "--out", out, "--metrics", metrics,
         "--device", args.device, "--overwrite", *extra)
    return json.loads((out / "summary.json").read_text())


def synth(args, out: Path) -> Path:
    test_set = out / "testset"
    if not (test_set / "lq").is_dir():
        extra = ["--max-images", args.max_images] if args.max_images else []
        call("scripts/make_test_set.py", "-i", args.hq, "-o", test_set, "--size", args.size, *extra)
    return test_set


def _mean(summary: dict, metric: str) -> str:
    entry = next((v for k, v in summary.get("metrics", summary).items() if k.startswith(metric)), None)
    if not isinstance(entry, dict) or entry.get("mean") is None:
        return "n/a"
    return f"{entry['mean']:.4f}"


def write_table(out: Path, title: str, header: list[str], rows: list[list[str]]) -> None:
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# --------------------------------------------------------------------------------------------
# Sub-commands
# --------------------------------------------------------------------------------------------

def celeba_test(args) -> None:
    """Table: CelebA-Test (synthetic, paired) -- make the test set, restore, score."""
    test_set = synth(args, args.out)
    restore(args, test_set / "lq", args.out / "restored")
    summary = evaluate(args, args.out / "restored", args.out / "scores", test_set / "hq", args.metrics)
    names = args.metrics.split(",")
    write_table(args.out, "CelebA-Test", ["method"] + names, [["DifFace"] + [_mean(summary, m) for m in names]])


def realworld(args) -> None:
    """Table: FID on real-world sets (no ground truth) against a reference folder or stats."""
    rows = []
    for spec in args.set:
        name, folder = spec.split("=", 1)
        out = args.out / name
        restore(args, Path(folder), out / "restored")
        summary = evaluate(args, out / "restored", out / "scores", None, "fid", fid_ref=args.fid_ref)
        rows.append([name, _mean(summary, "fid")])
    write_table(args.out, "Real-world sets: FID", ["set", "FID"], rows)


def ablation(args, option: str, label: str) -> None:
    """Table: a sweep of one sampling option (start step N or eta) on CelebA-Test."""
    test_set = synth(args, args.out)
    names = args.metrics.split(",")
    rows = []
    for value in args.values.split(","):
        out = args.out / f"{label}_{value}"
        restore(args, test_set / "lq", out / "restored", option, value)
        summary = evaluate(args, out / "restored", out / "scores", test_set / "hq", args.metrics)
        rows.append([value] + [_mean(summary, m) for m in names])
    write_table(args.out, f"Ablation of {label}", [label] + names, rows)


def inpainting(args) -> None:
    """Table: face inpainting (box / irregular / expand / half masks) -- LPIPS and FID."""
    test_set = args.out / "testset"
    if not (test_set / "lq").is_dir():
        extra = ["--num-images", args.max_images] if args.max_images else []
        call("scripts/make_inpainting_test_set.py", "--hq-dir", args.hq, "--out-dir", test_set, "--size", 256, *extra)
    call("inference.py", "-i", test_set / "lq", "-o", args.out / "restored", "--aligned", "--task", "inpainting",
         "--mask", test_set / "mask", "--device", args.device, "--dtype", args.dtype,
         "--batch-size", args.batch_size, *(["--cfg", args.cfg] if args.cfg != "difface_ffhq512" else []),
         *args.overrides)
    summary = evaluate(args, args.out / "restored", args.out / "scores", test_set / "hq", "lpips,fid")
    write_table(args.out, "Face inpainting", ["method", "LPIPS", "FID"],
                [["DifFace", _mean(summary, "lpips"), _mean(summary, "fid")]])


def contraction_curves(num_steps: int = 1000, schedule: str = "linear", data_std: float = 0.5):
    """alpha_N = sqrt(abar_N) and the error contraction kappa_N of a start at step N.

    alpha_N scales the estimate inside x_N (paper Eq. 6), so an estimator error e enters x_N as
    alpha_N e. kappa_N is the factor with which that error reaches x_0 when the reverse chain is
    the exact deterministic (DDIM, eta = 0) flow of a Gaussian data model with per-pixel
    standard deviation `data_std` (in [-1, 1] units): the flow maps x_N linearly onto x_0 with
    slope data_std / sqrt(abar_N data_std^2 + 1 - abar_N), so
    kappa_N = alpha_N data_std / sqrt(alpha_N^2 data_std^2 + 1 - alpha_N^2).
    These are the definitions of this project (derived here from the schedule), not copied
    from the paper's figure.
    """
    from models.diffusion import DiffusionSchedule

    alpha = np.sqrt(DiffusionSchedule.from_name(schedule, num_steps).alphas_cumprod)
    kappa = alpha * data_std / np.sqrt(alpha ** 2 * data_std ** 2 + 1 - alpha ** 2)
    return alpha, kappa


def curves(args) -> None:
    """Figure 4: kappa_N and alpha_N against the start step N (values in CSV, plot in PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alpha, kappa = contraction_curves(data_std=args.data_std)
    args.out.mkdir(parents=True, exist_ok=True)
    steps = np.arange(len(alpha))
    np.savetxt(args.out / "kappa_alpha.csv", np.stack([steps, kappa, alpha], 1), delimiter=",",
               header="N,kappa_N,alpha_N", comments="", fmt=["%d", "%.8f", "%.8f"])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(steps, kappa, label=r"$\kappa_N$")
    ax.plot(steps, alpha, label=r"$\alpha_N = \sqrt{\bar\alpha_N}$")
    ax.set_xlabel("start step N")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / "kappa_alpha.png", dpi=150)
    rows = [[n, f"{kappa[n]:.4f}", f"{alpha[n]:.4f}"] for n in (100, 200, 300, 400, 500, 600, 800, 999)]
    write_table(args.out, f"kappa_N and alpha_N (linear schedule, T = 1000, data std {args.data_std})",
                ["N", "kappa_N", "alpha_N"], rows)


# --------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(q, hq=True):
        if hq:
            q.add_argument("--hq", type=Path, required=True, help="folder of HQ faces (e.g. CelebA-HQ)")
        q.add_argument("--out", type=Path, required=True, help="results folder")
        q.add_argument("--cfg", default="difface_ffhq512", help="inference preset or YAML")
        q.add_argument("--max-images", type=int, default=None, help="quick run on the first N images")
        q.add_argument("--size", type=int, default=512, help="test image size")
        q.add_argument("--metrics", default=RESTORATION_METRICS, help="metrics of evaluate.py")
        q.add_argument("--device", default="auto")
        q.add_argument("--dtype", default="fp32")
        q.add_argument("--batch-size", type=int, default=4)
        q.add_argument("overrides", nargs="*", metavar="key=value", help="inference config overrides")

    common(sub.add_parser("celeba-test", help="CelebA-Test table"))
    q = sub.add_parser("realworld", help="FID on real-world sets (LFW-Test, WebPhoto-Test, WIDER-Test)")
    common(q, hq=False)
    q.add_argument("--set", action="append", required=True, metavar="NAME=DIR", help="a real-world set")
    q.add_argument("--fid-ref", required=True, help="reference folder or .npz stats (e.g. FFHQ)")
    for name, default in (("ablation-n", "0,100,200,300,400,500,600"), ("ablation-eta", "0,0.25,0.5,0.75,1.0")):
        q = sub.add_parser(name, help=f"sweep of {'the start step N' if name == 'ablation-n' else 'eta'}")
        common(q)
        q.add_argument("--values", default=default)
    common(sub.add_parser("inpainting", help="inpainting table (LPIPS / FID)"))
    q = sub.add_parser("curves", help="kappa_N / alpha_N curves (Fig. 4)")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--data-std", type=float, default=0.5, help="per-pixel std of faces in [-1, 1] units")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if hasattr(args, "device") and args.device == "auto":
        from models.pipeline import pick_device
        args.device = str(pick_device("auto"))
    if getattr(args, "out", None):
        args.out.mkdir(parents=True, exist_ok=True)
    {"celeba-test": celeba_test, "realworld": realworld, "inpainting": inpainting, "curves": curves,
     "ablation-n": lambda a: ablation(a, "--start-step", "N"),
     "ablation-eta": lambda a: ablation(a, "--eta", "eta")}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
