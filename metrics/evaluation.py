"""Evaluate a folder of restored faces: per-image metrics against GT, FID against a reference.

The library side of ``scripts/evaluate.py``. Restored and GT files are matched by name stem;
a restored image whose size differs from its GT is resized to the GT size (with a warning).
The restored folder may be the output folder of a whole-photo run of ``inference.py``: when it
holds no image itself, its ``restored_image/`` sub-folder is used (and said so); when neither
holds one, the error names the sub-folders that do. Writes into ``out``:

* ``per_image.csv``: one row per matched pair, one column per per-image metric, ``notes``;
* ``summary.json``: ``{metric: {"mean", "n", "weights", ...}}``;
* ``summary.md``: the same as a Markdown table.

Metrics are reported under the names they were asked by (``lmd``, or its alias ``lmd_dlib68``).
FID from fewer than :data:`FID_MIN_IMAGES` images carries a ``warning`` (in the log, in
``summary.json`` and in ``summary.md``): the estimate is biased upwards on small sets.

A metric whose weights are missing is reported and skipped; the others still run. The exit
code (``EvalResult.exit_code``) is non-zero when a requested metric or an image failed.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from . import METRICS, MetricUnavailable, build_metric
from .common import list_images, read_rgb_uint8
from .fid import FidStats

OUTPUT_FILES = ("per_image.csv", "summary.json", "summary.md")
RUN_SUBFOLDER = "restored_image"  # where a whole-photo run of inference.py writes its restorations
FID_MIN_IMAGES = 50  # below this, FID numbers are warned about


@dataclass
class EvalConfig:
    """What to evaluate; see ``scripts/evaluate.py --help`` for each field."""
    restored: Path
    out: Path
    gt: Path | None = None
    metrics: list[str] = field(default_factory=lambda: ["psnr", "ssim", "lpips", "fid", "id_dlib", "lmd"])
    fid_ref: Path | None = None
    device: str = "cpu"
    max_images: int | None = None
    crop_border: int = 0
    arcface: Path | None = None
    fid_backbone: str = "auto"
    fid_method: str = "sqrtm"
    save_fid_stats: Path | None = None
    overwrite: bool = False


@dataclass
class EvalResult:
    summary: dict
    unavailable: dict  # metric key -> message
    failures: list  # "file: reason"
    exit_code: int


def validate(cfg: EvalConfig) -> None:
    """Raise ``ValueError`` naming the problem, before any model is built."""
    unknown = [m for m in cfg.metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; allowed: {', '.join(METRICS)}")
    if not cfg.metrics:
        raise ValueError("no metric requested")
    for what, folder in (("--restored", cfg.restored), ("--gt", cfg.gt)):
        if folder is not None and not Path(folder).is_dir():
            raise ValueError(f"{what} folder not found: {folder}")
    if cfg.gt is None:
        paired = [m for m in cfg.metrics if m != "fid"]
        if paired:
            raise ValueError(f"metrics {paired} need ground truth (--gt); without it only 'fid' is possible")
        if cfg.fid_ref is None and cfg.save_fid_stats is None:
            raise ValueError("without --gt, FID needs a reference: --fid-ref DIR_OR_NPZ")
    if cfg.fid_ref is not None and not Path(cfg.fid_ref).exists():
        raise ValueError(f"--fid-ref not found: {cfg.fid_ref}")
    if cfg.max_images is not None and cfg.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {cfg.max_images}")
    existing = [f for f in OUTPUT_FILES if (Path(cfg.out) / f).exists()]
    if existing and not cfg.overwrite:
        raise ValueError(f"{cfg.out} already holds {existing}; pass --overwrite to replace them")


def find_restored(folder: Path) -> tuple[Path, str | None]:
    """The folder whose images are evaluated, and a note when it is not ``folder`` itself.

    ``folder`` when it holds images; else its ``restored_image/`` (a whole-photo run's output
    folder) when that does. Raises ``ValueError`` naming the sub-folders that hold images
    when neither does.
    """
    folder = Path(folder)
    if list_images(folder):
        return folder, None
    run = folder / RUN_SUBFOLDER
    if run.is_dir() and list_images(run):
        return run, f"{folder} holds no image; evaluating {run} (the restorations of a whole-photo run)"
    holding = sorted(d.name for d in folder.iterdir() if d.is_dir() and list_images(d))
    hint = f"; its sub-folder(s) {', '.join(d + '/' for d in holding)} hold images: point --restored at one" \
        if holding else ""
    raise ValueError(f"no images in {folder}{hint}")


def _by_stem(files: list[Path], folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in files:
        if f.stem in out:
            raise ValueError(f"two files with the name stem '{f.stem}' in {folder}: {out[f.stem].name}, {f.name}")
        out[f.stem] = f
    return out


def match_pairs(restored: Path, gt: Path) -> tuple[list[tuple[str, Path, Path]], list[str], list[str]]:
    """Pair files by name stem. Returns ``(pairs, stems only in restored, stems only in gt)``."""
    r, g = _by_stem(list_images(restored), restored), _by_stem(list_images(gt), gt)
    pairs = [(s, r[s], g[s]) for s in sorted(r.keys() & g.keys())]
    return pairs, sorted(r.keys() - g.keys()), sorted(g.keys() - r.keys())


def build_metrics(cfg: EvalConfig, log: Callable[[str], None]):
    """Build the requested metrics once. Returns ``(metrics by key, unavailable key -> message)``."""
    built, unavailable, names = {}, {}, {}
    for key in cfg.metrics:
        try:
            m = build_metric(key, cfg.device, crop_border=cfg.crop_border, arcface_path=cfg.arcface,
                             fid_backbone=cfg.fid_backbone, fid_method=cfg.fid_method)
        except MetricUnavailable as e:
            unavailable[key] = str(e)
            log(f"[skipped] metric '{key}' unavailable: {e}")
            continue
        if m.name in names:  # 'lmd' and 'lmd_dlib68' are one metric
            log(f"[note] '{key}' is the metric '{names[m.name]}' already requested; reported once, "
                f"as '{names[m.name]}'")
            continue
        built[key], names = m, {**names, m.name: key}
    return built, unavailable


def _fit_to(img: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Resize ``(H, W, 3)`` uint8 to ``shape[:2]``: area when shrinking, bicubic when enlarging."""
    h, w = shape[:2]
    interp = cv2.INTER_AREA if img.shape[0] > h and img.shape[1] > w else cv2.INTER_CUBIC
    return cv2.resize(img, (w, h), interpolation=interp)


def _measure_pairs(pairs, pair_metrics, fid, fid_on_gt, log):
    """Per-image loop. Returns ``(rows, restored feats, gt feats, failures, n_resized)``."""
    rows, feats_r, feats_g, failures, n_resized = [], [], [], [], 0
    for stem, r_path, g_path in tqdm(pairs, desc="evaluate", unit="img"):
        try:
            restored = read_rgb_uint8(r_path)
            gt = read_rgb_uint8(g_path) if g_path is not None else None
        except Exception as e:  # per-file problem: report, skip, go on
            failures.append(f"{stem}: cannot read ({e})")
            log(f"[error] {stem}: cannot read ({e})")
            continue
        if gt is not None and restored.shape != gt.shape:
            if n_resized == 0:
                log(f"[warning] {r_path.name} is {restored.shape[1]}x{restored.shape[0]}, GT is "
                    f"{gt.shape[1]}x{gt.shape[0]}: restored images are resized to the GT size")
            restored, n_resized = _fit_to(restored, gt.shape), n_resized + 1
        row, notes = {"name": stem}, []
        for key, m in pair_metrics.items():
            try:
                res = m.measure(restored, gt)
            except Exception as e:
                failures.append(f"{stem}: {key} failed ({e})")
                log(f"[error] {stem}: {key} failed ({e})")
                res = None
            row[key] = float("nan") if res is None else res.value
            if res is not None and res.note:
                notes.append(f"{key}: {res.note}")
        row["notes"] = "; ".join(notes)
        rows.append(row)
        if fid is not None:
            feats_r.append(fid.features([restored]))
            if fid_on_gt:
                feats_g.append(fid.features([gt]))
    return rows, feats_r, feats_g, failures, n_resized


def _summarise(rows, pair_metrics) -> dict:
    summary = {}
    for key, m in pair_metrics.items():
        vals = np.array([r[key] for r in rows], dtype=np.float64)
        vals = vals[~np.isnan(vals)]  # NaN: failed or excluded (ArcFace 'identical' pairs)
        mean = float(vals.mean()) if len(vals) else float("nan")
        summary[key] = {"mean": mean, "n": int(len(vals)), "weights": m.weights,
                        "higher_is_better": m.higher_is_better}
    return summary


def _fid_warning(restored: int, reference: int) -> str | None:
    """The warning an FID from ``restored`` images against a ``reference`` set (0: size unknown) carries."""
    small = [f"{n} {what} images" for n, what in ((restored, "restored"), (reference, "reference"))
             if 0 < n < FID_MIN_IMAGES]
    if not small:
        return None
    return (f"FID from {' and '.join(small)}: below {FID_MIN_IMAGES} the estimate is strongly biased upwards "
            f"and noisy; compare it only with FIDs of sets of the same size (published numbers use thousands)")


def _fid_summary(cfg, fid, feats_r, feats_g, log) -> dict | None:
    if len(feats_r) < 2:
        raise ValueError(f"FID needs at least 2 restored images, got {len(feats_r)}")
    stats_r = FidStats.from_features(np.concatenate(feats_r), fid.features.backbone)
    if cfg.save_fid_stats is not None:
        stats_r.save(cfg.save_fid_stats)
        log(f"saved FID statistics of the restored set to {cfg.save_fid_stats}")
    if cfg.fid_ref is not None:
        ref, ref_desc = fid.reference(cfg.fid_ref), f"reference: {cfg.fid_ref}"
    elif feats_g:
        ref, ref_desc = FidStats.from_features(np.concatenate(feats_g), fid.features.backbone), "reference: GT set"
    else:
        return None  # statistics saved only
    result = {"mean": fid.distance(stats_r, ref), "n": stats_r.n, "weights": f"{fid.weights}; {ref_desc}",
              "higher_is_better": False, "reference": str(cfg.fid_ref or "gt")}
    if warning := _fid_warning(stats_r.n, ref.n):
        log(f"[warning] {warning}")
        result["warning"] = warning
    return result


def _fmt(v: float) -> str:
    return f"{v:.6f}" if math.isfinite(v) else str(v)


def write_reports(out: Path, rows: list[dict], summary: dict, header_lines: list[str]) -> None:
    """Write ``per_image.csv``, ``summary.json`` and ``summary.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    columns = ["name"] + [k for k in (rows[0] if rows else {}) if k not in ("name", "notes")] + ["notes"]
    with open(out / "per_image.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([_fmt(r[c]) if isinstance(r[c], float) else r[c] for c in columns])
    clean = {k: {kk: (None if isinstance(vv, float) and not math.isfinite(vv) else vv) for kk, vv in v.items()}
             for k, v in summary.items()}
    (out / "summary.json").write_text(json.dumps(clean, indent=2) + "\n")
    lines = ["# Evaluation summary", ""] + [f"- {h}" for h in header_lines] + [
        "", "| metric | mean | n | better | weights |", "|---|---|---|---|---|"]
    for k, v in summary.items():
        better = "higher" if v.get("higher_is_better") else "lower"
        lines.append(f"| {k} | {_fmt(v['mean'])} | {v['n']} | {better} | {v['weights']} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def evaluate(cfg: EvalConfig, log: Callable[[str], None] = print) -> EvalResult:
    """Run the whole evaluation described by ``cfg`` (see module docstring)."""
    validate(cfg)
    restored, note = find_restored(Path(cfg.restored))
    if note:
        log(f"[note] {note}")
    if cfg.gt is not None:
        pairs, only_r, only_g = match_pairs(restored, Path(cfg.gt))
        for what, stems in (("restored", only_r), ("gt", only_g)):
            if stems:
                log(f"[warning] {len(stems)} {what} file(s) without a partner: {', '.join(stems[:10])}"
                    + (" ..." if len(stems) > 10 else ""))
        if not pairs:
            raise ValueError(f"no file names match between {restored} and {cfg.gt}")
    else:
        pairs = [(p.stem, p, None) for p in list_images(restored)]
    pairs = pairs[:cfg.max_images]
    built, unavailable = build_metrics(cfg, log)
    fid = built.pop("fid", None)
    rows, feats_r, feats_g, failures, n_resized = _measure_pairs(
        pairs, built, fid, fid_on_gt=fid is not None and cfg.fid_ref is None and cfg.gt is not None, log=log)
    summary = _summarise(rows, built)
    if fid is not None:
        try:
            fid_result = _fid_summary(cfg, fid, feats_r, feats_g, log)
        except (ValueError, MetricUnavailable, OSError) as e:
            unavailable["fid"], fid_result = f"FID failed: {e}", None
            log(f"[error] FID failed: {e}")
        if fid_result is not None:
            summary[fid.name] = fid_result
    header = [f"restored: {restored}", f"gt: {cfg.gt}", f"pairs evaluated: {len(rows)} of {len(pairs)}",
              f"restored resized to GT size: {n_resized}"]
    header += [f"unavailable: {k}: {v}" for k, v in unavailable.items()]
    header += [f"warning: {k}: {v['warning']}" for k, v in summary.items() if v.get("warning")]
    write_reports(Path(cfg.out), rows, summary, header)
    code = 1 if unavailable or failures else 0
    return EvalResult(summary, unavailable, failures, code)
