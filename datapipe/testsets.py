"""The paper's two synthetic test sets, written to a folder: CelebA-Test (blind restoration) and
the face-inpainting set. `scripts/make_test_set.py` and `scripts/make_inpainting_test_set.py` are
their command lines (and say the recipes in full); `scripts/reproduce.py` calls these functions.

CelebA-Test (docs/method.md#celeba-test-degradation): image k of the sorted list is resized to
the test size and degraded with combination k of the journal grid, drawing sig_y and the noise
from the official streams (`random.seed(seed)`, one sequential legacy `np.random.seed(seed)`
stream), so the default seed 10000 gives the official LQ images. Writes `lq/`, `hq/` and
`manifest.csv`.

Inpainting (docs/method.md#inpainting-test-set): the first images of the sorted list, centre
cropped and area resized, split into four blocks (box, irregular, expand, half); image i draws
its mask from `numpy.random.default_rng([seed, i])`. Writes `hq/`, `lq/` (holes black), `mask/`
(255 = hole), `manifest.csv` and `infos/<kind>.txt`.
"""
from __future__ import annotations

import csv
import sys
from collections import Counter
from multiprocessing import Pool
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from .datasets import resize_square
from .degradations import (FaceTestParams, bivariate_gaussian_kernel, blur, celeba_test_grid, jpeg,
                           resize_bilinear, round_to_uint8_levels)
from .image_io import (ImageReadError, hwc_to_tensor, list_images, read_image, tensor_to_hwc, tensor_to_uint8,
                       write_image)
from .mask_io import check_mask, write_mask
from .masks import BoxMaskGenerator, ExpandMaskGenerator, HalfMaskGenerator, IrregularMaskGenerator

# --------------------------------------------------------------------------------------------
# CelebA-Test
# --------------------------------------------------------------------------------------------

GRID_SIZE = 4000
FIELDS = ("name", "index", "sf", "sig_x", "sig_y", "theta", "nf", "qf", "seed", "size", "resize")


def celeba_test_sources(folder: Path, max_images: int | None, log: Callable[[str], None] = print) -> list[Path]:
    """The sorted images of `folder` that make the set: all 4000 grid combinations, or the first
    `max_images` (a note goes to `log` when images are left out). Raises ValueError (naming the
    problem) for a partial set without `max_images`, a `max_images` outside 1..4000, a missing
    folder or two images sharing a stem."""
    if max_images is not None and not 1 <= max_images <= GRID_SIZE:
        raise ValueError(f"--max-images must lie in 1..{GRID_SIZE}, got {max_images}")
    try:
        sources = list_images(folder, recursive=False)
    except NotADirectoryError as err:
        raise ValueError(str(err)) from None
    if max_images is None and len(sources) < GRID_SIZE:
        raise ValueError(f"{folder} holds {len(sources)} images; the CelebA-Test grid needs {GRID_SIZE} "
                         f"(one per combination). Pass --max-images N for a partial set")
    if len(sources) > (max_images or GRID_SIZE):
        log(f"note: {len(sources)} images; using the first {max_images or GRID_SIZE} in sorted order")
    sources = sources[:max_images or GRID_SIZE]
    if len({s.stem for s in sources}) != len(sources):
        raise ValueError("two input images share a stem; names must be unique")
    return sources


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


def degrade_one(job: tuple) -> tuple[str | None, str]:
    """(k, src, out, size, params, noise state): write lq/ and hq/ PNGs; return (error or None,
    resize method)."""
    _, src, out, size, prm, state = job
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


def make_celeba_test(sources: list[Path], out: Path, size: int = 512, seed: int = 10000,
                     workers: int = 0) -> list[str]:
    """Degrade `sources` (image k with grid combination k) into `out`; returns the errors of the
    images that could not be read (the others are written, and listed in manifest.csv)."""
    out = Path(out)
    params, states = official_draws(seed, len(sources), size)
    jobs = [(k, str(s), str(out), size, params[k], states[k]) for k, s in enumerate(sources)]
    if workers > 0:
        with Pool(workers) as pool:
            results = list(tqdm(pool.imap(degrade_one, jobs, chunksize=8), total=len(jobs), desc="degrade"))
    else:
        results = [degrade_one(job) for job in tqdm(jobs, desc="degrade")]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        for (k, src, *_), (err, method) in zip(jobs, results):
            if err is None:
                writer.writerow([Path(src).stem + ".png", k, *params[k], seed, size, method])
    return [err for err, _ in results if err is not None]


# --------------------------------------------------------------------------------------------
# Face inpainting
# --------------------------------------------------------------------------------------------

KINDS = ("box", "irregular", "expand", "half")
GENERATORS = {
    "box": BoxMaskGenerator(),
    "irregular": IrregularMaskGenerator(),
    "expand": ExpandMaskGenerator(masking_percent=0.5),
    "half": HalfMaskGenerator(masking_percent=0.5),
}


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


def select_inpainting_images(hq_dir: Path, num_images: int,
                             log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> list[Path]:
    """The first ``num_images`` images of the sorted folder (fewer, with a warning, when the folder
    holds fewer). Raises ValueError for an empty folder or two images sharing a stem."""
    paths = list_images(hq_dir)
    if not paths:
        raise ValueError(f"no images found in '{hq_dir}'")
    if len(paths) < num_images:
        log(f"warning: '{hq_dir}' holds {len(paths)} images, fewer than --num-images {num_images}; "
            f"using all of them")
    paths = paths[:num_images]
    clashes = sorted(stem for stem, n in Counter(p.stem for p in paths).items() if n > 1)
    if clashes:
        raise ValueError(f"several input files share the names {clashes[:5]} (outputs are written as NAME.png)")
    return paths


def make_inpainting_test(paths: list[Path], out_dir: Path, size: int = 256, seed: int = 12345) -> tuple[list, list]:
    """Mask and write every image of ``paths`` (already cut to the wanted number).

    Returns:
        ``(rows, failures)``: rows (name, kind, hole_fraction) of the images written,
        failures (path, reason) of those skipped.
    """
    out_dir = Path(out_dir)
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
