"""Prepare FFHQ for training: 1024 -> 512 (area resampling), file lists, a fixed validation split.

    python scripts/prepare_ffhq.py -i FFHQ/images1024x1024 -o data/ffhq [--size 512] [--workers 8]

Writes ``<out>/images<S>x<S>/<name>.png`` (sub-folders kept), ``<out>/ffhq<S>.txt`` (all images,
sorted; the list the estimator config reads), and ``ffhq<S>_train.txt`` / ``ffhq<S>_val.txt``:
a split fixed by ``--seed`` with ``--num-val`` validation images. List entries are relative to
the list file's folder. Existing outputs are kept (re-running resumes) unless ``--overwrite``.
Unreadable inputs are reported and skipped; the exit code is 1 if any were.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from datapipe.folders import resize_all
from datapipe.image_io import list_images


def write_list(path: Path, files: list[Path]) -> None:
    """One path per line, relative to the list's folder."""
    path.write_text("".join(f"{f.relative_to(path.parent).as_posix()}\n" for f in files))


def split(files: list[Path], num_val: int, seed: int) -> tuple[list[Path], list[Path]]:
    """A fixed (seeded) random split: (train, val), both sorted."""
    if not 0 <= num_val <= len(files):
        raise ValueError(f"--num-val {num_val} must lie in [0, {len(files)}]")
    order = np.random.default_rng(seed).permutation(len(files))
    val = sorted(files[i] for i in order[:num_val])
    train = sorted(files[i] for i in order[num_val:])
    return train, val


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-i", "--input", required=True, help="FFHQ folder (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--size", type=int, default=512, help="output side length")
    p.add_argument("--num-val", type=int, default=500, help="validation images")
    p.add_argument("--seed", type=int, default=1234, help="seed of the train/val split")
    p.add_argument("--workers", type=int, default=0, help="worker processes (0 = none)")
    p.add_argument("--overwrite", action="store_true", help="rewrite images that exist already")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    src_root, out = Path(args.input), Path(args.output)
    sources = list_images(src_root, recursive=True)
    folder = out / f"images{args.size}x{args.size}"
    pairs = [(s, (folder / s.relative_to(src_root)).with_suffix(".png")) for s in sources]
    failed = resize_all(pairs, args.size, args.workers, args.overwrite)
    done = sorted(dst for _, dst in pairs if dst.exists())
    train, val = split(done, args.num_val, args.seed)
    stem = f"ffhq{args.size}"
    write_list(out / f"{stem}.txt", done)
    write_list(out / f"{stem}_train.txt", train)
    write_list(out / f"{stem}_val.txt", val)
    print(f"{len(done)} images in {folder}; lists {stem}.txt, {stem}_train.txt ({len(train)}), "
          f"{stem}_val.txt ({len(val)}) in {out}; {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
