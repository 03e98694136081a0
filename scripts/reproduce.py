"""Reproduce the paper's tables and figures: one sub-command per table or figure.

    python scripts/reproduce.py celeba-test --hq CELEBA_HQ_DIR --out results/celeba
    python scripts/reproduce.py realworld --set wider=WIDER_DIR --set lfw=LFW_DIR --fid-ref FFHQ_DIR_OR_NPZ
    python scripts/reproduce.py ablation-n --hq CELEBA_HQ_DIR --values 0,100,200,300,400,500,600
    python scripts/reproduce.py ablation-eta --hq CELEBA_HQ_DIR --values 0,0.25,0.5,0.75,1
    python scripts/reproduce.py inpainting --hq CELEBA_256_DIR --out results/inpainting
    python scripts/reproduce.py curves --out results/curves        # kappa_N / alpha_N (Fig. 4)

Each step is the project's own command (make_test_set.py, inference.py with an explicit --cfg,
evaluate.py), so every number can be recomputed by hand; every run writes a Markdown table
(`table.md`) into --out with the paper's column names and order (PSNR, SSIM, LPIPS, IDS, LMD,
FID) and the settings that made it (model, N, eta, sampler, steps, FID backbone). N = 0 in
ablation-n is the estimator alone. `--max-images N` gives a quick run on the first N images.
Weights: as inference.py; IDS needs `--arcface resnet18_110.pth`.

A failed step stops the run with its exit code and last error lines (exit 1). A requested
column that could not be computed is n/a in the table and makes the exit code 1, unless
`--allow-missing`. Usage errors exit with 2.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

RESTORATION_METRICS = "psnr,ssim,lpips,id,lmd,fid"
# evaluate.py metric -> (name in summary.json, column of the paper's tables)
COLUMNS = {"psnr": ("psnr", "PSNR"), "ssim": ("ssim", "SSIM"), "psnr_y": ("psnr_y", "PSNR (Y)"),
           "ssim_y": ("ssim_y", "SSIM (Y)"), "lpips": ("lpips", "LPIPS"), "lpips_vgg": ("lpips_vgg", "LPIPS (VGG)"),
           "id": ("ids_arcface", "IDS"), "id_dlib": ("id_dlib", "IDS (dlib)"), "lmd": ("lmd_dlib68", "LMD"),
           "lmd_dlib68": ("lmd_dlib68", "LMD"), "fid": ("fid", "FID")}
PAPER_ORDER = ("psnr", "psnr_y", "ssim", "ssim_y", "lpips", "lpips_vgg", "id", "id_dlib", "lmd", "lmd_dlib68", "fid")
DEFAULT_CFG = {"inpainting": "inpaint_ffhq256"}  # every other sub-command: difface_ffhq512


class StepFailed(RuntimeError):
    """One of the project's commands failed; the message holds its exit code and last output."""


def call(script: str, *args, allowed=(0,)) -> int:
    """Run one of the project's commands (its output passes through); raise :class:`StepFailed`
    with the tail of its error output when the exit code is not in ``allowed``."""
    cmd = [sys.executable, str(REPO / script), *[str(a) for a in args]]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    tail = b""
    while True:
        chunk = os.read(proc.stderr.fileno(), 65536)
        if not chunk:
            break
        sys.stderr.buffer.write(chunk)
        sys.stderr.flush()
        tail = (tail + chunk)[-4000:]
    code = proc.wait()
    if code not in allowed:
        last = [ln for ln in tail.decode(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
        raise StepFailed(f"{Path(script).name} failed with exit code {code}: {' | '.join(last[-5:]) or '(no output)'}"
                         f"\n  command: {' '.join(cmd)}")
    return code


def restore(args, lq: Path, out: Path, *extra) -> dict:
    """Restore a folder with inference.py (always with an explicit --cfg); return its resolved config."""
    call("inference.py", "-i", lq, "-o", out, "--aligned", "--cfg", args.cfg, "--device", args.device,
         "--dtype", args.dtype, "--batch-size", args.batch_size, *extra, *args.overrides,
         allowed=(0, 1) if args.allow_missing else (0,))
    manifests = sorted(out.glob("manifest_*.json"))
    return json.loads(manifests[-1].read_text()).get("config", {}) if manifests else {}


def evaluate(args, restored: Path, out: Path, gt: Path | None, metrics: str, fid_ref=None) -> dict:
    """Score a folder with evaluate.py; exit code 1 (a metric or an image missing) is checked per column."""
    extra = (["--gt", gt] if gt else []) + (["--fid-ref", fid_ref] if fid_ref else [])
    extra += ["--arcface", args.arcface] if args.arcface else []
    call("scripts/evaluate.py", "--restored", restored, "--out", out, "--metrics", metrics,
         "--device", args.device, "--fid-backbone", args.fid_backbone, "--overwrite", *extra, allowed=(0, 1))
    return json.loads((out / "summary.json").read_text())


def synth(args, out: Path) -> Path:
    test_set = out / "testset"
    if not (test_set / "lq").is_dir():
        extra = ["--max-images", args.max_images] if args.max_images else []
        call("scripts/make_test_set.py", "-i", args.hq, "-o", test_set, "--size", args.size, *extra,
             allowed=(0, 1) if args.allow_missing else (0,))
    return test_set


def paper_order(metrics: str) -> list[str]:
    """The requested metrics in the paper's column order (PSNR, SSIM, LPIPS, IDS, LMD, FID)."""
    names = [m.strip() for m in metrics.split(",") if m.strip()]
    unknown = [m for m in names if m not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; allowed: {', '.join(COLUMNS)}")
    return sorted(names, key=PAPER_ORDER.index)


class Table:
    """A results table: rows of metric values matched by exact name, plus the run's settings."""

    def __init__(self, title: str, labels: list[str], metrics: list[str]):
        self.title, self.labels, self.metrics = title, labels, metrics
        self.rows: list[list[str]] = []
        self.missing: list[str] = []
        self.settings: dict[str, set] = {}

    def add(self, label: list[str], summary: dict, config: dict) -> None:
        cells = []
        for m in self.metrics:
            entry = summary.get(COLUMNS[m][0])  # exact: 'id' is never 'id_dlib', 'psnr' never 'psnr_y'
            if not isinstance(entry, dict) or entry.get("mean") is None:
                cells.append("n/a")
                self.missing.append(f"{COLUMNS[m][1]} ({' '.join(label)})")
            else:
                cells.append(f"{entry['mean']:.4f}")
            if m == "fid" and isinstance(entry, dict):
                self.note("FID backbone", entry.get("weights", "?"))
        self.rows.append(label + cells)
        sampling = config.get("sampling", {})
        self.note("model", f"{config.get('name', '?')}")
        for key, name in (("start_step", "N"), ("eta", "eta"), ("sampler", "sampler"), ("steps", "steps")):
            value = sampling.get(key, "?")
            self.note(name, "all grid points" if key == "steps" and value is None else value)

    def note(self, key: str, value) -> None:
        self.settings.setdefault(key, set()).add(str(value))

    def write(self, out: Path) -> None:
        header = self.labels + [COLUMNS[m][1] for m in self.metrics]
        lines = [f"# {self.title}", ""]
        lines += [f"- {k}: {', '.join(sorted(v))}" for k, v in self.settings.items()]
        lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(map(str, r)) + " |" for r in self.rows]
        (out / "table.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


# --------------------------------------------------------------------------------------------
# Sub-commands
# --------------------------------------------------------------------------------------------

def celeba_test(args) -> Table:
    """Table: CelebA-Test (synthetic, paired) -- make the test set, restore, score."""
    test_set = synth(args, args.out)
    config = restore(args, test_set / "lq", args.out / "restored")
    summary = evaluate(args, args.out / "restored", args.out / "scores", test_set / "hq", args.metrics)
    table = Table("CelebA-Test", ["method"], paper_order(args.metrics))
    table.add(["DifFace"], summary, config)
    return table


def first_images(folder: Path, n: int | None, stage: Path) -> Path:
    """``folder`` itself, or a folder of links to its first ``n`` images (sorted) for a quick run."""
    from datapipe.image_io import list_images
    if n is None:
        return folder
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for src in list_images(folder)[:n]:
        try:
            (stage / src.name).symlink_to(src.resolve())
        except OSError:
            shutil.copy2(src, stage / src.name)
    return stage


def realworld(args) -> Table:
    """Table: FID on real-world sets (no ground truth) against a reference folder or stats."""
    table = Table("Real-world sets", ["set"], ["fid"])
    for spec in args.set:
        name, folder = spec.split("=", 1)
        out = args.out / name
        lq = first_images(Path(folder), args.max_images, out / "input")
        config = restore(args, lq, out / "restored")
        summary = evaluate(args, out / "restored", out / "scores", None, "fid", fid_ref=args.fid_ref)
        table.add([name], summary, config)
    return table


def ablation(args, option: str, label: str) -> Table:
    """Table: a sweep of one sampling option (start step N or eta) on CelebA-Test."""
    test_set = synth(args, args.out)
    table = Table(f"Ablation of {label}", [label], paper_order(args.metrics))
    for value in args.values.split(","):
        out = args.out / f"{label}_{value}"
        config = restore(args, test_set / "lq", out / "restored", option, value)
        summary = evaluate(args, out / "restored", out / "scores", test_set / "hq", args.metrics)
        table.add([value], summary, config)
    return table


def inpainting(args) -> Table:
    """Table: face inpainting (box / irregular / expand / half masks) -- LPIPS and FID."""
    test_set = args.out / "testset"
    if not (test_set / "lq").is_dir():
        extra = ["--num-images", args.max_images] if args.max_images else []
        call("scripts/make_inpainting_test_set.py", "--hq-dir", args.hq, "--out-dir", test_set, "--size", 256, *extra)
    config = restore(args, test_set / "lq", args.out / "restored", "--task", "inpainting", "--mask", test_set / "mask")
    summary = evaluate(args, args.out / "restored", args.out / "scores", test_set / "hq", "lpips,fid")
    table = Table("Face inpainting", ["method"], ["lpips", "fid"])
    table.add(["DifFace"], summary, config)
    return table


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
    lines = [f"# kappa_N and alpha_N (linear schedule, T = 1000, data std {args.data_std})", "",
             "| N | kappa_N | alpha_N |", "|---|---|---|"] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# --------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(q, hq=True, cfg="difface_ffhq512"):
        if hq:
            q.add_argument("--hq", type=Path, required=True, help="folder of HQ faces (e.g. CelebA-HQ)")
        q.add_argument("--out", type=Path, required=True, help="results folder")
        q.add_argument("--cfg", default=cfg, help="inference preset or YAML (default: %(default)s)")
        q.add_argument("--max-images", type=int, default=None, help="quick run on the first N images")
        q.add_argument("--size", type=int, default=512, help="test image size")
        q.add_argument("--metrics", default=RESTORATION_METRICS,
                       help="metrics of evaluate.py; the table puts them in the paper's order (default: %(default)s)")
        q.add_argument("--arcface", type=Path, default=None, help="ArcFace weights resnet18_110.pth (for IDS, 'id')")
        q.add_argument("--fid-backbone", default="auto", choices=["auto", "pytorch_fid", "fid_helper"],
                       help="FID network weights (default: %(default)s, see evaluate.py)")
        q.add_argument("--allow-missing", action="store_true",
                       help="write the table with n/a where a column could not be computed and exit 0; "
                            "also accept steps that failed on some images")
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
    common(sub.add_parser("inpainting", help="inpainting table (LPIPS / FID)"), cfg="inpaint_ffhq256")
    q = sub.add_parser("curves", help="kappa_N / alpha_N curves (Fig. 4)")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--data-std", type=float, default=0.5, help="per-pixel std of faces in [-1, 1] units")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """0: every requested column computed; 1: a step failed or a column is missing (n/a);
    2: usage error."""
    args = parse_args(argv)
    if args.command == "curves":
        args.out.mkdir(parents=True, exist_ok=True)
        curves(args)
        return 0
    try:
        metrics = paper_order(args.metrics)
    except ValueError as err:
        print(f"error: --metrics: {err}", file=sys.stderr)
        return 2
    if ("id" in metrics and args.arcface is None and not args.allow_missing
            and args.command in ("celeba-test", "ablation-n", "ablation-eta")):
        print("error: the IDS column ('id') needs --arcface resnet18_110.pth (or drop 'id' from --metrics, "
              "or pass --allow-missing)", file=sys.stderr)
        return 2
    if args.device == "auto":
        from models.runtime import pick_device
        args.device = str(pick_device("auto"))
    args.out.mkdir(parents=True, exist_ok=True)
    run = {"celeba-test": celeba_test, "realworld": realworld, "inpainting": inpainting,
           "ablation-n": lambda a: ablation(a, "--start-step", "N"),
           "ablation-eta": lambda a: ablation(a, "--eta", "eta")}[args.command]
    try:
        table = run(args)
    except StepFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    table.write(args.out)
    if table.missing:
        print(f"{'warning' if args.allow_missing else 'error'}: not computed: {', '.join(table.missing)} "
              f"(n/a in {args.out / 'table.md'}; see the evaluate.py output above)", file=sys.stderr)
        return 0 if args.allow_missing else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
