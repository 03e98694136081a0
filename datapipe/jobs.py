"""Which input file goes to which output files: planned, and checked, before any model is built.

Rules:
* output names keep the input's full stem (`John.Smith.png` -> `John.Smith.png`, never `John.png`);
* sub-folders of a recursive run are mirrored;
* two inputs with the same stem (`a.png`, `a.jpg`) keep their extension in the name (`a_png`,
  `a_jpg`); any collision left after that (e.g. with a real `a_png.png`) gets `_2`, `_3`, ...;
* several samples get `_s<k>`;
* side outputs (`estimates/`, `cmp/`, or a folder the caller names in `also_writes`) go to
  their own top-level folders of the output; a restoration that would land in one of them (an
  aligned run with `--recursive` over an input sub-folder named `cmp/` or `estimates/`) is a
  :class:`PlanError` naming the sub-folder: side outputs and restorations never share a folder,
  so neither can overwrite the other;
* no planned output is ever an input file, and the output folder must be writable: both are
  :class:`PlanError` before anything runs; an input folder inside the output folder is refused
  with that reason (files inside the output folder are outputs, never read as inputs);
* an output folder named like an image file (`-o result.png`) gives a :class:`PlanWarning`: it
  is created as a folder;
* a job is finished (`Job.finished`) only when every file it plans exists, side outputs
  included: adding `--save-cmp` to a finished run, or a file whose side output failed, is
  worked on again.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .image_io import IMAGE_EXTENSIONS, is_image_file, list_images

EXTENSIONS = ("auto", "png", "jpg")  # --ext: auto = jpg for JPEG inputs, png for everything else


class PlanError(ValueError):
    """The input or output path cannot be used; raised before any work starts."""


class PlanWarning(UserWarning):
    """The plan works but is likely not what was meant (e.g. an output folder named `x.png`)."""


@dataclass
class Job:
    """One input image and the files it produces; `record` collects what the manifest reports."""

    source: Path
    key: str                 # the input's relative path: names its random stream and its outputs
    stem: Path               # relative output stem, without extension or sample suffix
    outputs: list[Path]
    estimate: Path | None = None
    cmp: Path | None = None  # input | restored side by side
    record: dict = field(default_factory=dict)

    @property
    def all_outputs(self) -> list[Path]:
        """Every file the job writes: its restorations, then its estimate and comparison if requested."""
        return self.outputs + [p for p in (self.estimate, self.cmp) if p is not None]

    @property
    def missing(self) -> list[Path]:
        """The planned files that do not exist yet."""
        return [p for p in self.all_outputs if not p.is_file()]

    @property
    def finished(self) -> bool:
        """True when every requested output exists: a run may skip the job (unless overwriting)."""
        return not self.missing

    def paths(self, out: Path) -> dict:
        """The manifest's `input` and `outputs`, relative to the output folder `out` (manifests
        stay valid when the folder moves)."""
        def rel(path: Path) -> str:
            return Path(os.path.relpath(path.absolute(), out.absolute())).as_posix()
        return {"input": rel(self.source), "outputs": [rel(p) for p in self.outputs]}


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
    if out.resolve() in src.resolve().parents:
        raise PlanError(f"the input folder {src} lies inside the output folder {out}; files inside the output "
                        f"folder are outputs and never read as inputs: choose an output folder outside {src}")
    found = list_images(src, recursive=recursive)
    files = [f for f in found if out.resolve() not in f.resolve().parents]
    if found and not files:
        raise PlanError(f"no inputs in {src}: the {len(found)} image(s) found all lie inside the output folder "
                        f"{out} (outputs of a run, never read as inputs)")
    if not files:
        raise PlanError(f"no images found in {src}" + ("" if recursive else " (use --recursive for sub-folders)"))
    return src, files


def output_suffix(source: Path, ext: str) -> str:
    """The output file extension for an input: '.png', '.jpg', or (auto) '.jpg' for JPEG inputs."""
    if ext not in EXTENSIONS:
        raise PlanError(f"invalid output extension {ext!r}; allowed: {', '.join(EXTENSIONS)}")
    if ext == "auto":
        return ".jpg" if source.suffix.lower() in (".jpg", ".jpeg") else ".png"
    return f".{ext}"


def plan_jobs(src: Path, out: Path, recursive: bool, num_samples: int, save_estimate: bool = False,
              subdir: str = "", ext: str = "png", save_cmp: bool = False,
              also_writes: tuple[str, ...] = ()) -> list[Job]:
    """One job per input; outputs under `out/subdir`, estimates under `out/estimates`, comparisons
    under `out/cmp`; `also_writes` names other top-level side folders the caller writes (e.g.
    `cropped_faces`). Raises PlanError for unusable paths, for an output that is an input and
    for a restoration inside a side folder; warns (PlanWarning) for an output named like an image."""
    if out.exists() and not out.is_dir():
        raise PlanError(f"output path exists and is not a folder: {out}")
    if not out.exists() and out.suffix.lower() in IMAGE_EXTENSIONS:
        warnings.warn(PlanWarning(f"the output '{out}' looks like an image file name, but it names a folder: "
                                  f"the folder {out} is created and the results are written inside it"),
                      stacklevel=2)
    root, files = list_inputs(src, out, recursive)
    stems = unique_stems(root, files)
    jobs = []
    for f, stem in zip(files, stems):
        suffix = output_suffix(f, ext)
        jobs.append(Job(source=f, key=f.relative_to(root).as_posix(), stem=stem,
                        outputs=[out / subdir / p for p in sample_names(stem, num_samples, ext=suffix)],
                        estimate=out / "estimates" / with_ext(stem, suffix) if save_estimate else None,
                        cmp=out / "cmp" / with_ext(stem, suffix) if save_cmp else None))
    side = [(name, flag) for name, flag, on in (("estimates", "--save-estimate", save_estimate),
                                                 ("cmp", "--save-cmp", save_cmp)) if on]
    check_side_folders(jobs, out, side + [(name, "") for name in also_writes])
    check_not_inputs(jobs, files)
    return jobs


def check_side_folders(jobs: list[Job], out: Path, side: list[tuple[str, str]]) -> None:
    """PlanError if a restoration would be written inside a side folder `out/<name>` of this run
    (`side`: (folder name, the option that asks for it, or '')). Restorations have unique stems
    among themselves, side outputs within their folder, so with this no two planned files are
    the same file."""
    for job in jobs:
        for path in job.outputs:
            top = path.relative_to(out).parts[0].lower()
            for name, flag in side:
                if top == name.lower():
                    raise PlanError(
                        f"the input sub-folder '{Path(job.key).parts[0]}/' would be mirrored into {out / name}, "
                        f"where this run writes its {name} side outputs ({job.source} would give {path}); "
                        f"restorations and side outputs never share a folder: rename that sub-folder or restore "
                        f"it in a run of its own" + (f", or leave out {flag}" if flag else ""))


def unique_stems(root: Path, files: list[Path]) -> list[Path]:
    """Relative output stems, one per file, pairwise different (case-insensitively)."""
    def full_stem(f: Path) -> Path:
        rel = f.relative_to(root)
        return rel.with_name(rel.stem)

    by_stem = defaultdict(list)
    for f in files:
        by_stem[full_stem(f).as_posix().lower()].append(f)
    stems = []
    for f in files:
        stem = full_stem(f)
        if len(by_stem[stem.as_posix().lower()]) > 1:
            stem = stem.with_name(f"{stem.name}_{f.suffix.lstrip('.').lower()}")
        stems.append(stem)
    taken, result = set(), []
    for stem in stems:
        candidate, n = stem, 2
        while candidate.as_posix().lower() in taken:
            candidate, n = stem.with_name(f"{stem.name}_{n}"), n + 1
        taken.add(candidate.as_posix().lower())
        result.append(candidate)
    return result


def with_ext(stem: Path, suffix: str) -> Path:
    """`stem` + `suffix`, never cutting the stem at a dot (unlike Path.with_suffix)."""
    return stem.with_name(stem.name + suffix)


def sample_names(stem: Path, num_samples: int, suffix: str = "", ext: str = ".png") -> list[Path]:
    """`stem<suffix><ext>`, or `stem<suffix>_s<k><ext>` for several samples."""
    base = stem.with_name(stem.name + suffix)
    if num_samples == 1:
        return [with_ext(base, ext)]
    return [with_ext(base.with_name(f"{base.name}_s{k}"), ext) for k in range(num_samples)]


def check_not_inputs(jobs: list[Job], inputs: list[Path]) -> None:
    """PlanError if any planned output file is one of the input files."""
    sources = {p.resolve() for p in inputs}
    for job in jobs:
        for path in job.all_outputs:
            if path.resolve() in sources:
                raise PlanError(f"the output {path} would overwrite the input {path.resolve()}; "
                                f"choose another output folder")


def check_writable(out: Path) -> None:
    """PlanError unless `out` is, or can be created as, a writable folder. Nothing is left behind:
    an existing folder is probed with a temporary file; a missing one through its nearest
    existing parent."""
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise PlanError(f"cannot create the output folder {out}: {probe} is not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".difface-write-test-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        where = f"the output folder {out}" if probe == out else f"{probe} (to create the output folder {out})"
        raise PlanError(f"cannot write to {where}: {e.strerror or e}") from None


def summarise(jobs: list[Job]) -> dict:
    """Counts of the jobs by status, and seconds per image and per video frame of those restored."""
    counts = {s: sum(j.record.get("status") == s for j in jobs) for s in ("done", "no face", "skipped", "failed")}
    done = [j.record for j in jobs if j.record.get("status") in ("done", "no face")]
    images, frames = [r for r in done if r.get("kind") != "video"], [r for r in done if r.get("kind") == "video"]
    counts["seconds_per_image"] = round(sum(r["seconds"] for r in images) / len(images), 3) if images else None
    counts["seconds_per_frame"] = (round(sum(r["seconds"] for r in frames) / max(1, sum(r["frames"] for r in frames)), 3)
                                   if frames else None)
    return counts
