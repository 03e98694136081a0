"""Prepare UTKFace (aligned & cropped, 200x200 JPEG) as a small training set.

    python scripts/prepare_utkface.py -i UTKFACE/utkface_aligned_200.tar \\
        -o data/utkface128 --size 128 [--num-val 500] [--workers 4]

The input is the tar (images under ``utkface_aligned_200/``) or a folder. Images are resized
to ``--size`` with area resampling and written as PNG: the last ``--num-val`` files in sorted
order go to ``<out>/val/``, the others to ``<out>/train/``. Output names drop the
``.jpg.chip.jpg`` suffix (``1_0_0_20161219140623097.png``). Existing outputs are kept unless
``--overwrite``; unreadable files are reported and skipped (exit code 1).
"""
from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Optional


from datapipe.folders import resize_all  # noqa: E402

from datapipe.image_io import is_image_file, list_images  # noqa: E402


def extract_images(tar_path: Path, into: Path, max_images: Optional[int] = None) -> Path:
    """Extract the image members of a tar (the first ``max_images`` by file name; no links,
    no absolute paths) into ``into``."""
    with tarfile.open(tar_path) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and is_image_file(m.name)]
        members = sorted(members, key=lambda m: Path(m.name).name)[:max_images]
        tar.extractall(into, members=members, filter="data")
    return into


def output_name(path: Path) -> str:
    """``age_gender_race_date.jpg.chip.jpg`` -> ``age_gender_race_date.png``."""
    return path.name.split(".")[0] + ".png"


def plan(sources: list[Path], out: Path, num_val: int) -> list[tuple[Path, Path]]:
    """(src, dst) pairs: the last ``num_val`` sorted sources go to val/, the rest to train/."""
    sources = sorted(sources, key=lambda p: p.name)
    if not 0 <= num_val <= len(sources):
        raise ValueError(f"--num-val {num_val} must lie in [0, {len(sources)}]")
    names = [output_name(s) for s in sources]
    if len(set(names)) != len(names):
        raise ValueError("two input files map to the same output name; rename them first")
    cut = len(sources) - num_val
    return [(s, out / ("train" if i < cut else "val") / n) for i, (s, n) in enumerate(zip(sources, names))]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-i", "--input", required=True, help="utkface_aligned_200.tar or a folder of images")
    p.add_argument("-o", "--output", required=True, help="output folder (gets train/ and val/)")
    p.add_argument("--size", type=int, default=128, help="output side length (e.g. 64 or 128)")
    p.add_argument("--num-val", type=int, default=500, help="last N sorted files for validation")
    p.add_argument("--max-images", type=int, default=None, help="use only the first N sorted inputs")
    p.add_argument("--workers", type=int, default=0, help="worker processes (0 = none)")
    p.add_argument("--overwrite", action="store_true", help="rewrite images that exist already")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    src, out = Path(args.input), Path(args.output)
    with tempfile.TemporaryDirectory() as tmp:
        root = extract_images(src, Path(tmp), args.max_images) if src.is_file() else src
        sources = sorted(list_images(root, recursive=True), key=lambda p: p.name)[:args.max_images]
        pairs = plan(sources, out, args.num_val)
        failed = resize_all(pairs, args.size, args.workers, args.overwrite)
    n_val = sum(1 for _, d in pairs if d.parent.name == "val")
    print(f"{len(pairs) - n_val} training images in {out / 'train'}, {n_val} validation images in "
          f"{out / 'val'} ({args.size}x{args.size}); {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
