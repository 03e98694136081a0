"""Synthesise the CelebA-Test set (SPEC §6.2) from any folder of HQ faces.

    python scripts/make_test_set.py -i CelebA-HQ/test -o data/celeba_test [--size 512] [--max-images N]

Image k of the sorted input list is resized to ``--size`` (area resampling) and degraded with
combination k of the 4000-entry journal grid (qf -> sf -> nf -> sig_x -> theta; sig_y drawn per
image from ``--seed``): blur (aniso Gaussian, 41x41) -> bilinear down by sf -> Gaussian noise nf
-> JPEG qf -> bilinear up -> 8-bit. Writes ``lq/<stem>.png``, ``hq/<stem>.png`` and
``manifest.csv`` (name, sf, sig_x, sig_y, theta, nf, qf). The noise of image k comes from a
generator seeded with (seed, k), so any subset is reproducible. Existing outputs are an error
unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import csv
import sys
from multiprocessing import Pool
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datapipe.datasets import resize_square  # noqa: E402
from datapipe.degradations import FaceTestParams, celeba_test_grid, face_test_degradation  # noqa: E402
from datapipe.image_io import (ImageReadError, hwc_to_tensor, list_images, read_image,  # noqa: E402
                               tensor_to_hwc, write_image)

FIELDS = ("name", "sf", "sig_x", "sig_y", "theta", "nf", "qf")


def degrade_one(job: tuple[int, str, str, int, int, FaceTestParams]) -> Optional[str]:
    """(k, src, out, size, seed, params): write lq/ and hq/ PNGs; return an error or None."""
    k, src, out, size, seed, prm = job
    try:
        hq = resize_square(tensor_to_hwc(read_image(src)), size)
    except ImageReadError as err:
        return str(err)
    rng = np.random.default_rng([seed, k])
    lq = face_test_degradation(hq, prm.sf, prm.sig_x, prm.sig_y, prm.theta, prm.nf, prm.qf,
                               rng=rng, bgr=False)["lq"]
    name = Path(src).stem + ".png"
    write_image(Path(out) / "hq" / name, hwc_to_tensor(hq))
    write_image(Path(out) / "lq" / name, hwc_to_tensor(lq))
    return None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-i", "--input", required=True, help="folder of HQ face images (sorted by name)")
    p.add_argument("-o", "--output", required=True, help="output folder (gets lq/, hq/, manifest.csv)")
    p.add_argument("--size", type=int, default=512, help="side length of the HQ images")
    p.add_argument("--max-images", type=int, default=None, help="use only the first N images (at most 4000)")
    p.add_argument("--seed", type=int, default=10000, help="seed of sig_y draws and noise")
    p.add_argument("--workers", type=int, default=0, help="worker processes (0 = none)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty output folder")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.output)
    if (out / "manifest.csv").exists() and not args.overwrite:
        print(f"error: {out} already holds a test set; pass --overwrite to replace it", file=sys.stderr)
        return 2
    grid = celeba_test_grid(np.random.default_rng(args.seed))
    sources = list_images(args.input, recursive=False)[:args.max_images]
    if len(sources) > len(grid):
        print(f"note: {len(sources)} images, the grid has {len(grid)}; using the first {len(grid)}")
        sources = sources[:len(grid)]
    names = [s.stem for s in sources]
    if len(set(names)) != len(names):
        print("error: two input images share a stem; names must be unique", file=sys.stderr)
        return 2
    jobs = [(k, str(s), str(out), args.size, args.seed, grid[k]) for k, s in enumerate(sources)]
    if args.workers > 0:
        with Pool(args.workers) as pool:
            errors = list(tqdm(pool.imap(degrade_one, jobs, chunksize=8), total=len(jobs), desc="degrade"))
    else:
        errors = [degrade_one(job) for job in tqdm(jobs, desc="degrade")]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        for (k, src, *_), err in zip(jobs, errors):
            if err is None:
                writer.writerow([Path(src).stem + ".png", *grid[k]])
    for err in filter(None, errors):
        print(f"skipped: {err}", file=sys.stderr)
    print(f"{errors.count(None)} pairs in {out}/lq and {out}/hq ({args.size}x{args.size}), manifest.csv")
    return 1 if any(errors) else 0


if __name__ == "__main__":
    sys.exit(main())
