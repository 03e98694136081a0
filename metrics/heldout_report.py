"""The report of the small-scale reproduction on held-out faces (scripts/reproduce_small.py):
results.md (settings and one table per experiment), results.json (every number, non-finite ones
as null), the metric plots (tradeoff.png, steps.png) and the labelled image grids it draws.

The report is a dict: ``meta`` (date, machine, model and weight files, settings, notes) and
one entry per experiment run (``tradeoff``, ``robustness``, ``diversity``, ``steps``), each
holding rows of scores as ``metrics.heldout.Scorer`` makes them.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

def image_rows(rows: list[tuple[str, list[np.ndarray]]], scale: int = 2, label_width: int = 150) -> np.ndarray:
    """A labelled grid: one row per (label, images), each image upscaled by `scale` (nearest)."""
    import cv2
    lines = []
    for label, images in rows:
        strip = np.concatenate([im.repeat(scale, 0).repeat(scale, 1) for im in images], 1)
        tag = np.full((strip.shape[0], label_width, 3), 255, np.uint8)
        for j, word in enumerate(label.split("\n")):
            cv2.putText(tag, word, (4, 16 + 16 * j), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        lines.append(np.concatenate([tag, strip], 1))
    width = max(line.shape[1] for line in lines)
    return np.concatenate([np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0)), constant_values=255)
                           for line in lines], 0)


def plot_panels(out: Path, name: str, rows: list[dict], x: str, xlabel: str, panels, baseline: dict | None = None,
                log_x: bool = False) -> str:
    """One PNG of metric panels against `x`; `panels` = [(row key, title)], `baseline` a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs = [r[x] for r in rows]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, (key, title) in zip(axes, panels):
        ax.plot(xs, [r[key] for r in rows], "o-", label="estimator (N = 0) / DifFace" if baseline else None)
        if baseline:
            ax.axhline(baseline[key], color="grey", ls="--", label="LQ input")
        if log_x:
            ax.set_xscale("log")
            ax.set_xticks(xs, [str(v) for v in xs])
        ax.set(xlabel=xlabel, title=title)
        ax.grid(alpha=0.3)
    if baseline:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / name, dpi=120)
    plt.close(fig)
    return name


def plot_tradeoff(result: dict, out: Path) -> str:
    lq, *rows = result["rows"]
    return plot_panels(out, "tradeoff.png", rows, "N", "start step N",
                       [("psnr", "PSNR (dB) ↑"), ("ssim", "SSIM ↑"), ("fid", "FID ↓ (small set: biased)")], lq)


def plot_steps(result: dict, out: Path) -> str:
    return plot_panels(out, "steps.png", result["rows"], "steps", f"DDIM steps (N = {result['N']})",
                       [("psnr", "PSNR (dB) ↑"), ("fid", "FID ↓"), ("seconds_per_image", "seconds / image")],
                       log_x=True)


# --------------------------------------------------------------------------------------------
# Tables and files
# --------------------------------------------------------------------------------------------

def weight_file(path) -> dict:
    """A weight file as the report records it: path, first 16 hex digits of its SHA-256, size."""
    path = Path(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return {"path": str(path), "sha256_16": digest, "bytes": path.stat().st_size}


def describe(d: dict) -> str:
    """Degradation ranges in words."""
    text = (f"blur sigma {d['blur_sigma']} ({'/'.join(d['kernel_list'])} Gaussian, {d['blur_kernel_size']}x"
            f"{d['blur_kernel_size']}), downsampling x{d['downsample_range']} (bilinear)")
    text += f", noise sigma {d['noise_range']}/255" if d["noise_range"] else ", no noise"
    return text + (f", JPEG quality {d['jpeg_range']}" if d["jpeg_range"] else ", no JPEG")


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
           ["| " + " | ".join(map(str, r)) + " |" for r in rows]


def metric_cells(r: dict) -> list[str]:
    return [fmt(r["psnr"]), fmt(r["ssim"], 4), fmt(r["fid"]), fmt(r.get("seconds_per_image"), 3)]


def markdown(report: dict) -> str:
    m, s = report["meta"], report["meta"]["settings"]
    sampling, mach = s["sampling"], m["machine"]
    mild = m["model"].get("mild_estimator")
    lines = [f"# DifFace at small scale: {m['model']['name']}", "",
             f"- date: {m['date']}",
             f"- machine: {mach['cpu']} ({mach['cpu_count']} CPUs, {mach['torch_threads']} torch threads), "
             f"device {mach['device']}{' ' + mach['gpu'] if 'gpu' in mach else ''}; "
             f"torch {mach['torch']}, Python {mach['python']}, {mach['platform']}",
             f"- model: `{m['model']['config']}` (image size {m['model']['image_size']}); estimator "
             f"`{m['model']['estimator']['path']}`, prior `{m['model']['prior']['path']}`"
             + (f", mild estimator `{mild['path']}`" if mild else ""),
             f"- held-out: `{s['heldout']}`, {s['images']} images ({s['select']} over the sorted files) at "
             f"{m['model']['image_size']} px"
             + (f" ({len(s['skipped'])} unreadable files skipped)" if s["skipped"] else ""),
             f"- degradation: ranges from `{s['degradation_from']}`: {describe(s['degradation'])}",
             f"- sampling: start step N = {sampling['start_step']} of {s['diffusion_steps']}, grid {sampling['grid']}, "
             f"steps {sampling['steps']}, eta {sampling['eta']}, sampler {sampling['sampler']}, official start "
             f"{sampling['official_start']}; seed {s['seed']}, batch size {s['batch_size']}, dtype {s['dtype']}",
             f"- FID backbone: {s['fid_backbone']}",
             f"- command: `{s['command']}`", ""]
    if "tradeoff" in report:
        rows = [[r["label"], fmt(r["N"]), r["evaluations"], *metric_cells(r)] for r in report["tradeoff"]["rows"]]
        lines += ["## 1. Fidelity vs realism: the start step N", "",
                  *table(["method", "N", "network evals", "PSNR ↑", "SSIM ↑", "FID ↓", "s / image"], rows), "",
                  "![trade-off](tradeoff.png)", ""]
    if "robustness" in report:
        rows = [[r["label"], *metric_cells(r)] for r in report["robustness"]["rows"]]
        lines += ["## 2. Robustness: estimators on severe degradations", "",
                  f"Severe ranges (`{s['severe_from']}`): {describe(report['robustness']['degradation'])}. "
                  "'mild': trained on mild degradations only; 'config': the config's estimator.", "",
                  *table(["method", "PSNR ↑", "SSIM ↑", "FID ↓", "s / image"], rows), ""]
    if "diversity" in report:
        d = report["diversity"]
        rows = [[p["image"], fmt(p["estimator"], 3), fmt(p["difface"], 3)] for p in d["per_image"]]
        rows.append(["**mean**", fmt(d["estimator"], 3), fmt(d["difface"], 3)])
        lines += [f"## 3. Diversity: pixel spread over {d['samples']} samples (N = {d['N']})", "",
                  *table(["input", "estimator", "DifFace"], rows), "", "![diversity](diversity.png)", ""]
    if "steps" in report:
        rows = [[r["steps"], r["evaluations"], *metric_cells(r)] for r in report["steps"]["rows"]]
        lines += [f"## 4. Sampling steps (N = {report['steps']['N']})", "",
                  *table(["steps", "network evals", "PSNR ↑", "SSIM ↑", "FID ↓", "s / image"], rows), "",
                  "![steps](steps.png)", ""]
    lines += ["## Images", "", "Rows: LQ, estimator, DifFace at the config's N, HQ (x2, nearest).", "",
              "![grid](grid.png)", "", "## Notes", ""] + [f"- {n}" for n in report["meta"]["notes"]]
    return "\n".join(lines) + "\n"


def write_reports(out: Path, report: dict) -> None:
    (out / "results.json").write_text(json.dumps(finite(report), indent=1))
    (out / "results.md").write_text(markdown(report))


def finite(obj):
    """JSON-safe copy: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj
