"""Resizing a folder of images to square training sizes, in parallel (data preparation scripts)."""
from __future__ import annotations

import sys
from multiprocessing import Pool
from pathlib import Path
from typing import Callable, Iterable, Optional

from tqdm import tqdm

from .datasets import resize_square
from .image_io import ImageReadError, ImageWriteError, hwc_to_tensor, read_image, tensor_to_hwc, write_image


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
