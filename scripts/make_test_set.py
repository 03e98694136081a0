"""Synthesise the CelebA-Test set exactly as the official script does
(docs/method.md#celeba-test-degradation).

    python scripts/make_test_set.py -i CelebA-HQ/test -o data/celeba_test [--size 512] [--max-images N]

Image k of the sorted input list (4000 images; fewer only with ``--max-images``) is resized
to ``--size`` (area resampling when shrinking, cubic when enlarging, centre crop; untouched
when already that size, as the official 512 inputs) and degraded with combination k of the
journal grid (qf -> sf -> nf -> sig_x -> theta): blur (aniso Gaussian, 41x41) -> bilinear down
by sf -> Gaussian noise nf/255 -> JPEG qf -> bilinear up -> 8-bit, on the BGR image.

Randomness replays the official ``prepare_testing_restoration.py``: ``random.seed(seed)`` and
one ``random.choice([4, 8, 12, 16])`` per image for sig_y, and one sequential legacy NumPy
stream (``np.random.seed(seed)``) drawing ``np.float32(np.random.randn(h', w', 3)) * nf / 255``
per image in loop order. With the default seed 10000 the LQ images are those of the official
script. Writes ``lq/<stem>.png``, ``hq/<stem>.png`` and ``manifest.csv`` (name, grid index,
sf, sig_x, sig_y, theta, nf, qf, seed, size, resize). Existing outputs are an error unless
``--overwrite``. The synthesis itself is ``datapipe.testsets.make_celeba_test``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from datapipe.testsets import celeba_test_sources, make_celeba_test


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-i", "--input", required=True, help="folder of HQ face images (sorted by name)")
    p.add_argument("-o", "--output", required=True, help="output folder (gets lq/, hq/, manifest.csv)")
    p.add_argument("--size", type=int, default=512, help="side length of the HQ images")
    p.add_argument("--max-images", type=int, default=None,
                   help="a partial set: the first N images and combinations (default: all 4000, required)")
    p.add_argument("--seed", type=int, default=10000, help="seed of the sig_y and noise streams (official 10000)")
    p.add_argument("--workers", type=int, default=0, help="worker processes (0 = none)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty output folder")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.output)
    if (out / "manifest.csv").exists() and not args.overwrite:
        print(f"error: {out} already holds a test set; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        sources = celeba_test_sources(Path(args.input), args.max_images)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    errors = make_celeba_test(sources, out, args.size, args.seed, args.workers)
    for err in errors:
        print(f"skipped: {err}", file=sys.stderr)
    print(f"{len(sources) - len(errors)} pairs in {out}/lq and {out}/hq ({args.size}x{args.size}), manifest.csv")
    return 1 if any(errors) else 0


if __name__ == "__main__":
    sys.exit(main())
