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
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm


from datapipe.image_io import (ImageReadError, hwc_to_tensor, list_images, read_image,  # noqa: E402
                               tensor_to_hwc, tensor_to_uint8, write_image)
from datapipe.mask_io import check_mask, write_mask  # noqa: E402
from datapipe.masks import (BoxMaskGenerator, ExpandMaskGenerator, HalfMaskGenerator,  # noqa: E402
                            IrregularMaskGenerator)

KINDS = ("box", "irregular", "expand", "half")
GENERATORS = {
    "box": BoxMaskGenerator(),
    "irregular": IrregularMaskGenerator(),
    "expand": ExpandMaskGenerator(masking_percent=0.5),
    "half": HalfMaskGenerator(masking_percent=0.5),
}


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


def block_kinds(count: int) -> list[str]:
    """The kind of each of ``count`` images: four consecutive blocks, sizes differing by <= 1."""
    sizes = [len(block) for block in np.array_split(np.arange(count), len(KINDS))]
    return [kind for kind, n in zip(KINDS, sizes) for _ in range(n)]


def load_square(path: Path, size: int) -> np.ndarray:
    """Read an image, centre-crop to a square, area-resize to size x size.

    Returns:
        size x size x 3 uint8 numpy array, RGB.
    """
    img = tensor_to_hwc(read_image(path))
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    img = img[top:top + side, left:left + side]
    if side != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return tensor_to_uint8(hwc_to_tensor(np.clip(img, 0.0, 1.0)))


def draw_mask(kind: str, size: int, rng: np.random.Generator, tries: int = 100) -> np.ndarray:
    """A mask of ``kind`` that leaves some pixels known: a mask covering the whole image (only
    possible for irregular strokes on small sizes) is redrawn from the same ``rng``."""
    for _ in range(tries):
        mask = GENERATORS[kind](size, size, rng)
        if not mask.all():
            return mask
    raise RuntimeError(f"{kind} masks cover the whole {size}x{size} image {tries} times in a row")


def make_sample(path: Path, index: int, kind: str, size: int, seed: int, out_dir: Path) -> float:
    """Write hq/, lq/ and mask/ for one image; returns its hole fraction."""
    hq = load_square(path, size)
    mask = draw_mask(kind, size, np.random.default_rng([seed, index]))
    fraction = check_mask(mask, hq.shape[:2], path.name)
    lq = hq * (1 - mask.astype(np.uint8))[:, :, None]
    name = path.stem + ".png"
    write_image(out_dir / "hq" / name, hq)
    write_image(out_dir / "lq" / name, lq)
    write_mask(out_dir / "mask" / name, mask)
    return fraction


def write_index(out_dir: Path, rows: list[tuple[str, str, float]]) -> None:
    """manifest.csv and infos/{kind}.txt for the images written."""
    with open(out_dir / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "kind", "hole_fraction"])
        writer.writerows((name, kind, f"{fraction:.6f}") for name, kind, fraction in rows)
    (out_dir / "infos").mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        names = [name for name, k, _ in rows if k == kind]
        (out_dir / "infos" / f"{kind}.txt").write_text("".join(f"{n}\n" for n in names))


def build_test_set(paths: list[Path], out_dir: Path, size: int, seed: int) -> tuple[list, list]:
    """Mask and write every image of ``paths`` (already cut to the wanted number).

    Returns:
        ``(rows, failures)``: rows (name, kind, hole_fraction) of the images written,
        failures (path, reason) of those skipped.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, failures = [], []
    kinds = block_kinds(len(paths))
    for index, (path, kind) in enumerate(tqdm(list(zip(paths, kinds)), desc="inpainting test set",
                                              unit="img", file=sys.stderr)):
        try:
            fraction = make_sample(path, index, kind, size, seed, out_dir)
        except ImageReadError as err:
            failures.append((path, str(err)))
            tqdm.write(f"skipped: {err}", file=sys.stderr)
            continue
        rows.append((path.stem + ".png", kind, fraction))
    write_index(out_dir, rows)
    return rows, failures


def select_images(hq_dir: Path, num_images: int) -> list[Path]:
    """The first ``num_images`` images of the sorted folder; duplicate output names raise."""
    paths = list_images(hq_dir)
    if not paths:
        raise SystemExit(f"error: no images found in '{hq_dir}'")
    if len(paths) < num_images:
        print(f"warning: '{hq_dir}' holds {len(paths)} images, fewer than --num-images "
              f"{num_images}; using all of them", file=sys.stderr)
    paths = paths[:num_images]
    clashes = sorted(stem for stem, n in Counter(p.stem for p in paths).items() if n > 1)
    if clashes:
        raise SystemExit(f"error: several input files share the names {clashes[:5]} "
                         f"(outputs are written as NAME.png)")
    return paths


def main(argv=None) -> int:
    args = parse_args(argv)
    paths = select_images(args.hq_dir, args.num_images)
    counts = Counter(block_kinds(len(paths)))
    print(f"hq_dir={args.hq_dir} out_dir={args.out_dir} size={args.size} images={len(paths)} "
          f"seed={args.seed} blocks=" + ", ".join(f"{k}:{counts[k]}" for k in KINDS))
    if args.dry_run:
        return 0
    rows, failures = build_test_set(paths, args.out_dir, args.size, args.seed)
    print(f"wrote {len(rows)} images to '{args.out_dir}'"
          + (f"; {len(failures)} skipped (unreadable)" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
