"""Build the face-inpainting test set (docs/method.md#inpainting-test-set; official
``scripts/prepare_testing_inpainting.py``).

    python scripts/make_inpainting_test_set.py --hq-dir celeba_test/hq --out-dir inpainting256

The HQ folder's images are listed **sorted by name** (the official code used an unsorted glob,
so its selection depended on the file system; we sort for determinism). Each image is centre
cropped to a square if it is not one, resized to ``--size`` x ``--size`` with area
interpolation (images already of that size are kept as they are) and rounded to 8 bits. The
first ``--num-images`` are split into four consecutive blocks of (nearly) equal size - box,
irregular, expand (masking_percent 0.5: only the central square of half the side stays
visible) and half (masking_percent 0.5: bottom or right half masked) - with the training
settings of ``datapipe/masks.py`` for box and irregular.

Image ``i`` of the list draws its mask from ``numpy.random.default_rng([seed, i])``, so a mask
does not depend on the other images. Written under ``--out-dir``:

    hq/NAME.png     the resized HQ image
    lq/NAME.png     the masked image: HQ with the hole pixels set to (0, 0, 0)
    mask/NAME.png   8-bit grey, 255 = hole, 0 = known
    manifest.csv    name, kind, hole_fraction
    infos/{box,irregular,expand,half}.txt   the names of each block, one per line

A mask that would cover the whole image (irregular strokes on small sizes) is redrawn from the
same generator; the official code kept it. An unreadable image is reported and skipped; the exit code is then 1.
The set itself is made by ``datapipe.testsets.make_inpainting_test``.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from datapipe.testsets import GENERATORS, KINDS, block_kinds, make_inpainting_test, select_inpainting_images


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, module docstring kept as written."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--hq-dir", required=True, type=Path,
                        help="folder of HQ face images (e.g. CelebA-Test HQ); listed sorted by name")
    parser.add_argument("--out-dir", required=True, type=Path,
                        help="output folder for lq/, hq/, mask/, infos/ and manifest.csv")
    parser.add_argument("--size", type=int, default=256, help="output side in pixels (area resize)")
    parser.add_argument("--num-images", type=int, default=2000,
                        help="use the first N images, split into four blocks box/irregular/expand/half")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the mask generators")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow writing into a non-empty --out-dir (files of the same name are "
                             "replaced, other files are left alone)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved settings and the block sizes, write nothing")
    args = parser.parse_args(argv)
    validate(parser, args)
    return args


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Catch user mistakes before any image is touched (parser.error exits with code 2)."""
    if args.num_images < 1:
        parser.error(f"--num-images must be >= 1, got {args.num_images}")
    if not args.hq_dir.is_dir():
        parser.error(f"--hq-dir '{args.hq_dir}' is not an existing folder")
    rng = np.random.default_rng(0)
    for kind, generator in GENERATORS.items():
        try:
            generator(args.size, args.size, rng)
        except ValueError as err:
            parser.error(f"--size {args.size} does not fit the {kind} masks: {err}")
    out = args.out_dir
    if out.exists() and not out.is_dir():
        parser.error(f"--out-dir '{out}' exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite and not args.dry_run:
        parser.error(f"--out-dir '{out}' is not empty; pass --overwrite to write into it")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        paths = select_inpainting_images(args.hq_dir, args.num_images)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    counts = Counter(block_kinds(len(paths)))
    print(f"hq_dir={args.hq_dir} out_dir={args.out_dir} size={args.size} images={len(paths)} "
          f"seed={args.seed} blocks=" + ", ".join(f"{k}:{counts[k]}" for k in KINDS))
    if args.dry_run:
        return 0
    rows, failures = make_inpainting_test(paths, args.out_dir, args.size, args.seed)
    print(f"wrote {len(rows)} images to '{args.out_dir}'"
          + (f"; {len(failures)} skipped (unreadable)" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
