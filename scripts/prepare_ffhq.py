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
from multiprocessing import Pool
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datapipe.datasets import resize_square  # noqa: E402
from datapipe.image_io import ImageReadError, ImageWriteError, list_images, read_image, tensor_to_hwc  # noqa: E402
from datapipe.image_io import hwc_to_tensor, write_image  # noqa: E402


def resize_file(job: tuple[str, str, int, bool]) -> Optional[str]:
    """(src, dst, size, overwrite): write dst = src resized/cropped to size x size (area when
    shrinking). Returns an error message, or None on success / when dst exists already."""
    src, dst, size, overwrite = job
    if Path(dst).exists() and not overwrite:
        return None
    try:
        img = resize_square(tensor_to_hwc(read_image(src)), size)
        write_image(dst, hwc_to_tensor(img))
    except (ImageReadError, ImageWriteError) as err:
        return str(err)
    return None


def run_jobs(fn: Callable, jobs: list, workers: int, desc: str) -> list:
    """``[fn(job) for job in jobs]`` with a progress bar, in ``workers`` processes if > 0."""
    if workers <= 0:
        return [fn(job) for job in tqdm(jobs, desc=desc)]
    with Pool(workers) as pool:
        return list(tqdm(pool.imap(fn, jobs, chunksize=16), total=len(jobs), desc=desc))


def resize_all(pairs: Iterable[tuple[Path, Path]], size: int, workers: int, overwrite: bool) -> int:
    """Resize every (src, dst) pair; report failures; return how many failed."""
    jobs = [(str(src), str(dst), size, overwrite) for src, dst in pairs]
    errors = [e for e in run_jobs(resize_file, jobs, workers, f"resize to {size}") if e]
    for err in errors:
        print(f"skipped: {err}", file=sys.stderr)
    return len(errors)


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
