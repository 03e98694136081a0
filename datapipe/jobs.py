"""Which input file goes to which output files: planned before any model is built.

Rules: outputs are PNG; sub-folders of a recursive run are mirrored; two inputs with the same
stem (`a.png`, `a.jpg`) keep their extension in the name (`a_png.png`, `a_jpg.png`) so that
nothing is silently lost; several samples get `_s<k>`.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .image_io import is_image_file, list_images


class PlanError(ValueError):
    """The input or output path cannot be used; raised before any work starts."""


@dataclass
class Job:
    """One input image and the files it produces; `record` collects what the manifest reports."""

    source: Path
    key: str                 # the input's relative path: names its random stream and its outputs
    stem: Path               # relative output stem, without extension or sample suffix
    outputs: list[Path]
    estimate: Path | None = None
    record: dict = field(default_factory=dict)


def list_inputs(src: Path, out: Path, recursive: bool) -> tuple[Path, list[Path]]:
    """The root the inputs are relative to, and the sorted input files."""
    if not src.exists():
        raise PlanError(f"input path does not exist: {src}")
    if src.is_file():
        if not is_image_file(src):
            raise PlanError(f"input file is not an image type we read: {src}")
        return src.parent, [src]
    if src.resolve() == out.resolve():
        raise PlanError(f"the output folder must differ from the input folder: {out}")
    files = [f for f in list_images(src, recursive=recursive) if out.resolve() not in f.resolve().parents]
    if not files:
        raise PlanError(f"no images found in {src}" + ("" if recursive else " (use --recursive for sub-folders)"))
    return src, files


def plan_jobs(src: Path, out: Path, recursive: bool, num_samples: int, save_estimate: bool = False,
              subdir: str = "") -> list[Job]:
    """One job per input; outputs under `out/subdir`, estimates under `out/estimates`."""
    if out.exists() and not out.is_dir():
        raise PlanError(f"output path exists and is not a folder: {out}")
    root, files = list_inputs(src, out, recursive)
    by_stem = defaultdict(list)
    for f in files:
        by_stem[f.relative_to(root).with_suffix("").as_posix().lower()].append(f)
    jobs = []
    for f in files:
        rel = f.relative_to(root)
        stem = rel.with_suffix("")
        if len(by_stem[stem.as_posix().lower()]) > 1:
            stem = stem.with_name(f"{stem.name}_{f.suffix.lstrip('.').lower()}")
        jobs.append(Job(source=f, key=rel.as_posix(), stem=stem,
                        outputs=[out / subdir / p for p in sample_names(stem, num_samples)],
                        estimate=(out / "estimates" / stem.with_suffix(".png")) if save_estimate else None))
    return jobs


def sample_names(stem: Path, num_samples: int, suffix: str = "") -> list[Path]:
    """`stem<suffix>.png`, or `stem<suffix>_s<k>.png` for several samples."""
    base = stem.with_name(stem.name + suffix)
    if num_samples == 1:
        return [base.with_suffix(".png")]
    return [base.with_name(f"{base.name}_s{k}").with_suffix(".png") for k in range(num_samples)]
