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
``--overwrite``.
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


from datapipe.datasets import resize_square  # noqa: E402
from datapipe.degradations import (FaceTestParams, bivariate_gaussian_kernel, blur,  # noqa: E402
                                   celeba_test_grid, jpeg, resize_bilinear, round_to_uint8_levels)
from datapipe.image_io import (ImageReadError, hwc_to_tensor, list_images, read_image,  # noqa: E402
                               tensor_to_hwc, write_image)

GRID_SIZE = 4000
FIELDS = ("name", "index", "sf", "sig_x", "sig_y", "theta", "nf", "qf", "seed", "size", "resize")


def official_draws(seed: int, num: int, size: int) -> tuple[list[FaceTestParams], list[tuple]]:
    """The first ``num`` grid combinations with the official sig_y, and the legacy NumPy state
    before each image's noise draw (the ``(h', w', 3)`` draws of a ``size`` x ``size`` image)."""
    stream = np.random.RandomState(seed)
    params, states = [], []
    for prm in celeba_test_grid(seed)[:num]:
        params.append(prm)
        states.append(stream.get_state())
        stream.randn(int(size // prm.sf), int(size // prm.sf), 3)  # advance past this image's noise
    return params, states


def degrade_official(hq_bgr: np.ndarray, prm: FaceTestParams, noise_state: tuple) -> np.ndarray:
    """The official ``face_degradation`` with its noise from the legacy stream at ``noise_state``.

    Args:
        hq_bgr: HxWx3 float32 BGR in [0, 1].
    Returns:
        HxWx3 float32 BGR LQ image, multiples of 1/255.
    """
    h, w = hq_bgr.shape[:2]
    kernel = bivariate_gaussian_kernel(41, prm.sig_x, prm.sig_y, prm.theta)
    down = resize_bilinear(blur(hq_bgr, kernel), (int(w // prm.sf), int(h // prm.sf)))
    stream = np.random.RandomState()
    stream.set_state(noise_state)
    noise = np.float32(stream.randn(*down.shape)) * prm.nf / 255.0  # basicsr add_gaussian_noise
    noisy = np.clip(down + noise, 0.0, 1.0)
    return round_to_uint8_levels(resize_bilinear(jpeg(noisy, int(prm.qf), bgr=True), (w, h)))


def resize_method(shape: tuple, size: int) -> str:
    """How :func:`resize_square` brings an image of ``shape`` to ``size`` x ``size``."""
    h, w = shape[:2]
    if (h, w) == (size, size):
        return "none"
    return ("area" if size < min(h, w) else "cubic") + "+centre-crop"


def degrade_one(job: tuple) -> tuple[Optional[str], str]:
    """(k, src, out, size, params, noise state): write lq/ and hq/ PNGs; return (error or None,
    resize method)."""
    k, src, out, size, prm, state = job
    try:
        img = tensor_to_hwc(read_image(src))
    except ImageReadError as err:
        return str(err), ""
    method, hq = resize_method(img.shape, size), resize_square(img, size)
    lq = degrade_official(np.ascontiguousarray(hq[..., ::-1]), prm, state)[..., ::-1]
    name = Path(src).stem + ".png"
    write_image(Path(out) / "hq" / name, hwc_to_tensor(hq))
    write_image(Path(out) / "lq" / name, hwc_to_tensor(np.ascontiguousarray(lq)))
    return None, method


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
    if args.max_images is not None and not 1 <= args.max_images <= GRID_SIZE:
        print(f"error: --max-images must lie in 1..{GRID_SIZE}, got {args.max_images}", file=sys.stderr)
        return 2
    try:
        sources = list_images(args.input, recursive=False)
    except NotADirectoryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.max_images is None and len(sources) < GRID_SIZE:
        print(f"error: {args.input} holds {len(sources)} images; the CelebA-Test grid needs {GRID_SIZE} "
              f"(one per combination). Pass --max-images N for a partial set", file=sys.stderr)
        return 2
    if len(sources) > (args.max_images or GRID_SIZE):
        print(f"note: {len(sources)} images; using the first {args.max_images or GRID_SIZE} in sorted order")
    sources = sources[:args.max_images or GRID_SIZE]
    names = [s.stem for s in sources]
    if len(set(names)) != len(names):
        print("error: two input images share a stem; names must be unique", file=sys.stderr)
        return 2
    params, states = official_draws(args.seed, len(sources), args.size)
    jobs = [(k, str(s), str(out), args.size, params[k], states[k]) for k, s in enumerate(sources)]
    if args.workers > 0:
        with Pool(args.workers) as pool:
            results = list(tqdm(pool.imap(degrade_one, jobs, chunksize=8), total=len(jobs), desc="degrade"))
    else:
        results = [degrade_one(job) for job in tqdm(jobs, desc="degrade")]
    errors = [err for err, _ in results]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        for (k, src, *_), (err, method) in zip(jobs, results):
            if err is None:
                writer.writerow([Path(src).stem + ".png", k, *params[k], args.seed, args.size, method])
    for err in filter(None, errors):
        print(f"skipped: {err}", file=sys.stderr)
    print(f"{errors.count(None)} pairs in {out}/lq and {out}/hq ({args.size}x{args.size}), manifest.csv")
    return 1 if any(errors) else 0


if __name__ == "__main__":
    sys.exit(main())
