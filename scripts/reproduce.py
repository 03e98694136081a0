"""Reproduce the paper's tables and figures: one sub-command per table or figure.

    python scripts/reproduce.py celeba-test --hq CELEBA_HQ_DIR --out results/celeba
    python scripts/reproduce.py realworld --set wider=WIDER_DIR --set lfw=LFW_DIR --fid-ref FFHQ_DIR_OR_NPZ
    python scripts/reproduce.py ablation-n --hq CELEBA_HQ_DIR --values 0,100,200,300,400,500,600
    python scripts/reproduce.py ablation-eta --hq CELEBA_HQ_DIR --values 0,0.25,0.5,0.75,1
    python scripts/reproduce.py inpainting --hq CELEBA_256_DIR --out results/inpainting
    python scripts/reproduce.py curves --out results/curves        # kappa_N / alpha_N (Fig. 4)

Every step runs in this process through the library (datapipe.testsets, one difface.Restorer
per table whose networks are built once, metrics.evaluation) and first prints the equivalent
command (make_test_set.py, inference.py with an explicit --cfg, evaluate.py) that recomputes its
files by hand; the restored files are the bytes inference.py writes. Each run writes `table.md`
into --out with the paper's columns in its order (PSNR, SSIM, LPIPS, IDS, LMD, FID) and the
settings that made it (model, N, eta, sampler, steps, FID backbone). N = 0 in ablation-n is the
estimator alone. `--max-images N` gives a quick run on the first N images. Existing restorations
are kept, as inference.py keeps them (delete a folder to redo it). Weights: as inference.py; IDS
needs `--arcface resnet18_110.pth`.

A failed step (an image that cannot be read or restored, missing weights, an evaluation that
cannot run) stops the run with its message: exit 1. A requested column that could not be
computed is n/a in the table and makes the exit code 1, unless `--allow-missing` (which also goes
on without the images a step could not use). Usage errors (options, overrides, values): exit 2.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
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
SAMPLING_FLAGS = {"start_step": "--start-step", "eta": "--eta"}  # ablated setting -> inference.py option
MAX_PIXELS = 100_000_000  # inference.py's --max-pixels default


class StepFailed(RuntimeError):
    """A step could not be done; the message names the step and the reason."""


def show(script: str, *args) -> None:
    """Print the command that does this step by hand (paths as given; the script relative to the working folder)."""
    cmd = ["python", os.path.relpath(REPO / script), *[str(a) for a in args]]
    print("$", shlex.join(cmd), flush=True)


def log(msg: str) -> None:
    """Progress, warnings and errors (stdout has the commands and the results)."""
    print(msg, file=sys.stderr, flush=True)


def the_restorer(args):
    """The run's difface.Restorer with the options inference.py would be given, made on first use:
    the networks are built once per table."""
    if args.restorer is None:
        import difface
        overrides = [*args.overrides, f"batch_size={args.batch_size}", f"dtype={args.dtype}"]
        overrides += [f"task={args.task}"] if args.task else []
        args.restorer = difface.Restorer(args.cfg, device=args.device, overrides=overrides, max_pixels=MAX_PIXELS)
        for line in [f"warning: {note}" for note in args.restorer.notes] + [args.restorer.describe()]:
            log(line)
    return args.restorer


def restore(args, lq: Path, out: Path, sampling: dict | None = None, mask_dir: Path | None = None) -> dict:
    """Restore the aligned faces of `lq` into `out` (`<stem>.png`, the files `inference.py --aligned
    --cfg ...` writes), `sampling` ({'start_step': N} or {'eta': e}) changing the preset's. Bad
    images are reported by name and skipped. Returns the resolved config with the sampling used
    (also saved as `out/config.yaml`)."""
    from omegaconf import OmegaConf

    from datapipe.image_io import ImageWriteError, write_image
    from datapipe.jobs import PlanError, plan_jobs
    from datapipe.mask_io import MaskError, find_mask
    from difface import InputError
    sampling = sampling or {}
    extra = [x for key, value in sampling.items() for x in (SAMPLING_FLAGS[key], value)]
    extra += (["--task", args.task] if args.task else []) + (["--mask", mask_dir] if mask_dir else [])
    show("inference.py", "-i", lq, "-o", out, "--aligned", "--cfg", args.cfg, "--device", args.device,
         "--dtype", args.dtype, "--batch-size", args.batch_size, *extra, *args.overrides)
    restorer = the_restorer(args)
    method = restorer.sampling(**sampling)
    cfg = OmegaConf.merge(restorer.cfg, {"sampling": sampling}) if sampling else restorer.cfg
    try:
        jobs = plan_jobs(lq, out, False, cfg.num_samples)
    except PlanError as err:
        raise StepFailed(f"restoring {lq}: {err}") from None
    todo, failed = [job for job in jobs if not job.finished], []
    if len(todo) < len(jobs):
        log(f"kept {len(jobs) - len(todo)} existing restoration(s) in {out}")
    for i in range(0, len(todo), args.batch_size):
        batch = []
        for job in todo[i:i + args.batch_size]:
            try:
                mask = find_mask(job.source, mask_dir) if mask_dir else None
                batch.append((job, restorer.prepare_aligned(job.source, job.key, mask)))
            except (InputError, MaskError) as err:
                failed.append(job.key)
                log(f"error: {err}")
        results = restorer.restore_aligned([item for _, item in batch], method) if batch else []
        for (job, _), res in zip(batch, results):
            try:
                for path, image in zip(job.outputs, res.samples):
                    write_image(path, image)
            except ImageWriteError as err:
                failed.append(job.key)
                log(f"error: {err}")
        log(f"restored {min(i + args.batch_size, len(todo))}/{len(todo)} into {out}")
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml")
    if failed and not args.allow_missing:
        raise StepFailed(f"restoring {lq}: {len(failed)} image(s) failed: {', '.join(failed[:5])}"
                         + (" ..." if len(failed) > 5 else "") + " (--allow-missing goes on without them)")
    return OmegaConf.to_container(cfg, resolve=True)


def evaluate(args, restored: Path, out: Path, gt: Path | None, metrics: str, fid_ref=None) -> dict:
    """Score a folder (metrics.evaluation, as evaluate.py); a metric that could not be computed is
    checked per column by the table."""
    from metrics.evaluation import EvalConfig, evaluate as evaluate_folder
    extra = (["--gt", gt] if gt else []) + (["--fid-ref", fid_ref] if fid_ref else [])
    extra += ["--arcface", args.arcface] if args.arcface else []
    show("scripts/evaluate.py", "--restored", restored, "--out", out, "--metrics", metrics,
         "--device", args.device, "--fid-backbone", args.fid_backbone, "--overwrite", *extra)
    cfg = EvalConfig(restored=restored, out=out, gt=gt, metrics=[m.strip() for m in metrics.split(",") if m.strip()],
                     fid_ref=Path(fid_ref) if fid_ref else None, device=args.device, arcface=args.arcface,
                     fid_backbone=args.fid_backbone, overwrite=True)
    try:
        result = evaluate_folder(cfg, log=log)
    except ValueError as err:
        raise StepFailed(f"evaluating {restored}: {err}") from None
    for name, value in result.summary.items():
        print(f"{name:12s} {value['mean']:.6f}  (n={value['n']}, {value['weights']})")
    return result.summary


def testset(args, inpainting: bool = False) -> Path:
    """The CelebA-Test set (or the inpainting set) under `--out/testset`, kept when it exists."""
    from datapipe import testsets
    folder = args.out / "testset"
    if (folder / "lq").is_dir():
        return folder
    try:
        if inpainting:
            show("scripts/make_inpainting_test_set.py", "--hq-dir", args.hq, "--out-dir", folder, "--size", 256,
                 *(["--num-images", args.max_images] if args.max_images else []))
            paths = testsets.select_inpainting_images(args.hq, args.max_images or 2000, log=log)
            errors = testsets.make_inpainting_test(paths, folder, 256)[1]  # each reported as it is skipped
        else:
            show("scripts/make_test_set.py", "-i", args.hq, "-o", folder, "--size", args.size,
                 *(["--max-images", args.max_images] if args.max_images else []))
            errors = testsets.make_celeba_test(testsets.celeba_test_sources(args.hq, args.max_images, log), folder,
                                               args.size)
            for err in errors:
                log(f"skipped: {err}")
    except ValueError as err:
        raise StepFailed(f"making the test set: {err}") from None
    if errors and not args.allow_missing:
        raise StepFailed(f"making the test set: {len(errors)} image(s) could not be read (--allow-missing goes "
                         "on without them)")
    return folder


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
    folder = testset(args)
    config = restore(args, folder / "lq", args.out / "restored")
    summary = evaluate(args, args.out / "restored", args.out / "scores", folder / "hq", args.metrics)
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
    for name, folder in args.set:
        out = args.out / name
        lq = first_images(folder, args.max_images, out / "input")
        config = restore(args, lq, out / "restored")
        summary = evaluate(args, out / "restored", out / "scores", None, "fid", fid_ref=args.fid_ref)
        table.add([name], summary, config)
    return table


def ablation(args, key: str, label: str) -> Table:
    """Table: a sweep of one sampling setting (start step N or eta) on CelebA-Test, every value
    restored by the same networks."""
    restorer = the_restorer(args)
    for _, value in args.values:  # a value the method refuses is a usage error, found before any work
        restorer.sampling(**{key: value})
    folder = testset(args)
    table = Table(f"Ablation of {label}", [label], paper_order(args.metrics))
    for text, value in args.values:
        out = args.out / f"{label}_{text}"
        config = restore(args, folder / "lq", out / "restored", {key: value})
        summary = evaluate(args, out / "restored", out / "scores", folder / "hq", args.metrics)
        table.add([text], summary, config)
    return table


def inpainting(args) -> Table:
    """Table: face inpainting (box / irregular / expand / half masks) -- LPIPS and FID."""
    folder = testset(args, inpainting=True)
    config = restore(args, folder / "lq", args.out / "restored", mask_dir=folder / "mask")
    summary = evaluate(args, args.out / "restored", args.out / "scores", folder / "hq", "lpips,fid")
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

def value_list(kind):
    """argparse type: comma-separated values of `kind`, kept as (text, value) pairs."""
    def parse(text: str) -> list[tuple[str, object]]:
        try:
            return [(v.strip(), kind(v)) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, "
                                             f"got {text!r}") from None
    return parse


def named_folder(text: str) -> tuple[str, Path]:
    """argparse type of --set: NAME=DIR."""
    name, sep, folder = text.partition("=")
    if not (sep and name and folder):
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    return name, Path(folder)


def parse_args(argv=None) -> argparse.Namespace:
    from difface.cli_help import at_least
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(q, hq=True, cfg="difface_ffhq512"):
        if hq:
            q.add_argument("--hq", type=Path, required=True, help="folder of HQ faces (e.g. CelebA-HQ)")
        q.add_argument("--out", type=Path, required=True, help="results folder")
        q.add_argument("--cfg", default=cfg, help="inference preset or YAML (default: %(default)s)")
        q.add_argument("--max-images", type=at_least(1), default=None, help="quick run on the first N images")
        q.add_argument("--size", type=at_least(32), default=512, help="test image size (default: %(default)s)")
        q.add_argument("--metrics", default=RESTORATION_METRICS,
                       help="metrics of evaluate.py; the table puts them in the paper's order (default: %(default)s)")
        q.add_argument("--arcface", type=Path, default=None, help="ArcFace weights resnet18_110.pth (for IDS, 'id')")
        q.add_argument("--fid-backbone", default="auto", choices=["auto", "pytorch_fid", "fid_helper"],
                       help="FID network weights (default: %(default)s, see evaluate.py)")
        q.add_argument("--allow-missing", action="store_true",
                       help="write the table with n/a where a column could not be computed and exit 0; "
                            "also go on without images that a step could not read or restore")
        q.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: %(default)s)")
        q.add_argument("--dtype", default="fp32", help="network precision fp32, fp16 or bf16 (default: %(default)s)")
        q.add_argument("--batch-size", type=at_least(1), default=4,
                       help="faces restored together (default: %(default)s)")
        q.add_argument("overrides", nargs="*", metavar="key=value", help="inference config overrides")

    common(sub.add_parser("celeba-test", help="CelebA-Test table"))
    q = sub.add_parser("realworld", help="FID on real-world sets (LFW-Test, WebPhoto-Test, WIDER-Test)")
    common(q, hq=False)
    q.add_argument("--set", action="append", required=True, type=named_folder, metavar="NAME=DIR",
                   help="a real-world set of aligned faces (repeat for several)")
    q.add_argument("--fid-ref", required=True, help="reference folder or .npz stats (e.g. FFHQ)")
    for name, what, default, kind in (
            ("ablation-n", "start steps N (0 = the estimator alone)", "0,100,200,300,400,500,600", int),
            ("ablation-eta", "eta values", "0,0.25,0.5,0.75,1.0", float)):
        common(q := sub.add_parser(name, help=f"sweep of {'the start step N' if kind is int else 'eta'}"))
        q.add_argument("--values", type=value_list(kind), default=default,
                       help=f"comma-separated {what} (default: %(default)s)")
    common(sub.add_parser("inpainting", help="inpainting table (LPIPS / FID)"), cfg="inpaint_ffhq256")
    q = sub.add_parser("curves", help="kappa_N / alpha_N curves (Fig. 4)")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--data-std", type=float, default=0.5, help="per-pixel std of faces in [-1, 1] units")
    args = p.parse_args(argv)
    stray = [o for o in getattr(args, "overrides", []) if "=" not in o]
    if stray:
        p.error(f"unexpected argument(s) {' '.join(stray[:3])}: config overrides are key=value")
    args.task = "inpainting" if args.command == "inpainting" else None
    args.restorer = None
    return args


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
    from difface import ConfigError, DeviceError
    from models.checkpoint import WeightsError
    run = {"celeba-test": celeba_test, "realworld": realworld, "inpainting": inpainting,
           "ablation-n": lambda a: ablation(a, "start_step", "N"),
           "ablation-eta": lambda a: ablation(a, "eta", "eta")}[args.command]
    try:
        if args.device == "auto":
            from models.runtime import pick_device
            args.device = str(pick_device("auto"))
        args.out.mkdir(parents=True, exist_ok=True)
        table = run(args)
    except (ConfigError, DeviceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (StepFailed, WeightsError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    table.write(args.out)
    if table.missing:
        print(f"{'warning' if args.allow_missing else 'error'}: not computed: {', '.join(table.missing)} "
              f"(n/a in {args.out / 'table.md'}; see the evaluation output above)", file=sys.stderr)
        return 0 if args.allow_missing else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
