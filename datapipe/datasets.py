"""Training and validation datasets: HQ face folders, on-the-fly degraded pairs, paired folders,
masked images for inpainting.

A sample is a dict of ``(3, H, W)`` float32 RGB tensors in ``[0, 1]`` (``'hq'``, and ``'lq'`` for
pairs) plus ``'index'`` (or ``'name'`` for paired folders); the inpainting datasets add
``'mask'``, ``(1, H, W)`` float32 in {0, 1} with 1 = hole. Diffusion space ``[-1, 1]`` is the
objective's business, not the data's.

Randomness (flip, degradation, mask) comes from a ``numpy.random.Generator`` made for each
sample from ``(seed, rank, epoch, index)`` (:func:`sample_rng`). The sampler hands the dataset keys
``(index, epoch)`` (:class:`ResumableSampler`), so a sample is the same whichever DataLoader
worker loads it and however many workers there are; different indices (hence different workers
in one epoch), epochs and ranks give independent streams. The worker id itself is deliberately
not part of the seed: the batch-to-worker assignment restarts with every DataLoader iterator, so
it would make a resumed run differ from an uninterrupted one.

A file that cannot be read is reported once (per process) and replaced by the next readable
image, so one corrupt file in 70k never stops a long run.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np
from torch.utils.data import Dataset, DistributedSampler

from .degradations import BlindDegradation, BlindDegradationConfig
from .image_io import ImageReadError, hwc_to_tensor, list_images, read_image, tensor_to_hwc
from .mask_io import apply_mask, detect_black_holes, find_mask, mask_to_tensor, read_mask
from .masks import MASK_GENERATORS, BoxMaskGenerator, IrregularMaskGenerator, MixedMaskGenerator

log = logging.getLogger(__name__)


@dataclass
class MaskConfig:
    """Masks of the inpainting datasets (1 = hole).

    ``kind``: a :data:`~datapipe.masks.MASK_GENERATORS` name; ``mixed`` (default) draws a kind
    with probabilities proportional to ``params.weights`` (official: irregular / box /
    outpainting, 1/3 each), any other name uses ``params.<kind>`` alone. ``params``: every
    generator's parameters, defaulting to the official LaMa training settings
    (docs/method.md#mask-generators).
    ``ref_size``: the image side the pixel parameters are meant for (256: FFHQ-256); on other
    sizes stroke lengths/widths, box sizes and margin are scaled by min(H, W) / ref_size
    (None = take them as given). Box sizes and margin are then clipped so that a box fits the
    image; fractions (outpainting, expand, half) are size-free. ``root`` (``inpainting_paired``
    only): a folder of mask files named like the LQ images (white = hole); None = the holes are
    the exact-zero pixels of LQ, as officially.
    """

    kind: str = "mixed"
    ref_size: Optional[int] = 256
    params: MixedMaskGenerator = field(default_factory=MixedMaskGenerator)
    root: Optional[str] = None


@dataclass
class DatasetConfig:
    """One dataset block of a training config; ``name`` picks the class in :data:`DATASETS`.

    hq_images / blind_pairs / inpainting read ``root`` (a folder, searched recursively if
    ``recursive``) or ``file_list`` (a text file, one image path per line, relative to the
    list's folder); paired / inpainting_paired read ``lq_root`` and ``hq_root`` and match files
    by stem. ``size``: images are resized (shorter side, area resampling when shrinking) and
    centre-cropped to size x size when they are not already that size; None keeps them as they
    are. ``max_images``: a subset drawn by a shuffle seeded with the run's seed (not the first
N files). ``mask``: the masks of inpainting / inpainting_paired (:class:`MaskConfig`).
    """

    name: str = "blind_pairs"
    root: Optional[str] = None
    file_list: Optional[str] = None
    recursive: bool = True
    size: Optional[int] = None
    hflip: bool = False
    max_images: Optional[int] = None
    lq_root: Optional[str] = None
    hq_root: Optional[str] = None
    degradation: BlindDegradationConfig = field(default_factory=BlindDegradationConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)


# --------------------------------------------------------------------------------------------
# Helpers: seeds, keys, file lists, resizing
# --------------------------------------------------------------------------------------------


def sample_rng(seed: int, rank: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample: a function of (seed, rank, epoch, index) only."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(rank), int(epoch), int(index)]))


def split_key(key) -> tuple[int, int]:
    """(index, epoch) from a sampler key; a plain index means epoch 0."""
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return int(key), 0


def read_file_list(path: str | Path) -> list[Path]:
    """Image paths of a text list: one per line, '#' comments and blank lines skipped.

    Relative paths are taken relative to the list file's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file list '{path}' does not exist")
    paths = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line)
            paths.append(p if p.is_absolute() else path.parent / p)
    return paths


def seeded_subset(items: list, max_images: Optional[int], seed: int = 0) -> list:
    """``max_images`` items drawn by a shuffle seeded with ``seed``, kept in their original order
    (all of them when there are not more). Not the first N: sorted test sets (e.g. the
    CelebA-Test grid, ordered by JPEG quality) would give a one-sided subset."""
    if max_images is None or max_images >= len(items):
        return list(items)
    chosen = np.random.default_rng(np.random.SeedSequence([int(seed), 1729])).permutation(len(items))[:max_images]
    return [items[i] for i in sorted(chosen)]


def image_paths(root: Optional[str], file_list: Optional[str], recursive: bool,
                max_images: Optional[int] = None, seed: int = 0) -> list[Path]:
    """The images of a folder (sorted) or of a file list (in list order); at most ``max_images``
    of them, drawn by :func:`seeded_subset`."""
    if (root is None) == (file_list is None):
        raise ValueError(f"give exactly one of root ({root!r}) and file_list ({file_list!r})")
    paths = list_images(root, recursive) if root is not None else read_file_list(file_list)
    paths = seeded_subset(paths, max_images, seed)
    if not paths:
        raise ValueError(f"no images found in {root if root is not None else file_list}")
    return paths


def resize_square(img: np.ndarray, size: Optional[int]) -> np.ndarray:
    """HxWx3 float32 -> size x size: shorter side to ``size`` (area when shrinking, cubic when
    enlarging), then a centre crop. Unchanged when ``size`` is None or already met."""
    h, w = img.shape[:2]
    if size is None or (h == size and w == size):
        return img
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    img = np.clip(cv2.resize(img, (new_w, new_h), interpolation=interp), 0.0, 1.0)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return np.ascontiguousarray(img[top:top + size, left:left + size])


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


class HQImages(Dataset):
    """HQ images, resized/cropped to ``size``, optionally flipped: ``{'hq', 'index'}``.

    Unreadable files are logged once and replaced by the next readable image (in list order).
    """

    def __init__(self, paths: list[Path], size: Optional[int] = None, hflip: bool = False,
                 seed: int = 0, rank: int = 0):
        self.paths = list(paths)
        self.size, self.hflip, self.seed, self.rank = size, hflip, seed, rank
        self.bad: set[int] = set()

    @classmethod
    def from_config(cls, cfg: DatasetConfig, seed: int = 0, rank: int = 0) -> "HQImages":
        paths = image_paths(cfg.root, cfg.file_list, cfg.recursive, cfg.max_images, seed)
        return cls(paths, cfg.size, cfg.hflip, seed, rank)

    def __len__(self) -> int:
        return len(self.paths)

    def rng(self, key) -> np.random.Generator:
        index, epoch = split_key(key)
        return sample_rng(self.seed, self.rank, epoch, index)

    def load(self, index: int) -> tuple[int, np.ndarray]:
        """(index actually used, HxWx3 float32 RGB [0, 1] resized image), skipping bad files."""
        for step in range(len(self.paths)):
            i = (index + step) % len(self.paths)
            if i in self.bad:
                continue
            try:
                return i, resize_square(tensor_to_hwc(read_image(self.paths[i])), self.size)
            except ImageReadError as err:
                self.bad.add(i)
                log.warning("skipping unreadable training image (reported once): %s", err)
        raise RuntimeError(f"none of the {len(self.paths)} images could be read (first: {self.paths[0]})")

    def hq_array(self, key, rng: np.random.Generator) -> tuple[int, np.ndarray]:
        """Load the image of ``key`` and flip it with ``rng`` when ``hflip`` is on."""
        index, img = self.load(split_key(key)[0])
        if self.hflip and rng.random() < 0.5:
            img = np.ascontiguousarray(img[:, ::-1])
        return index, img

    def __getitem__(self, key) -> dict:
        index, img = self.hq_array(key, self.rng(key))
        return {"hq": hwc_to_tensor(img), "index": index}


class BlindPairs(Dataset):
    """(LQ, HQ) pairs made on the fly by the blind degradation
    (docs/method.md#training-degradation): ``{'lq', 'hq', 'index'}``."""

    def __init__(self, images: HQImages, degradation: BlindDegradation):
        self.images, self.degradation = images, degradation

    @classmethod
    def from_config(cls, cfg: DatasetConfig, seed: int = 0, rank: int = 0) -> "BlindPairs":
        return cls(HQImages.from_config(cfg, seed, rank), BlindDegradation(cfg.degradation))

    def __len__(self) -> int:
        return len(self.images)

    def pair(self, key) -> tuple[np.ndarray, np.ndarray, dict]:
        """(lq, hq, params) as HxWx3 float32 RGB arrays, with the degradation's drawn parameters."""
        rng = self.images.rng(key)
        index, hq = self.images.hq_array(key, rng)
        lq, hq, params = self.degradation(hq, rng)
        params["index"] = index
        return lq, hq, params

    def __getitem__(self, key) -> dict:
        lq, hq, params = self.pair(key)
        return {"lq": hwc_to_tensor(lq), "hq": hwc_to_tensor(hq), "index": params["index"]}


class PairedFolders(Dataset):
    """Validation pairs from an LQ folder and an HQ folder, matched by file stem:
    ``{'lq', 'hq', 'name'}``. LQ images are resized to the HQ size when they differ (bicubic)."""

    def __init__(self, lq_root: str, hq_root: str, size: Optional[int] = None,
                 max_images: Optional[int] = None, seed: int = 0):
        lq = {p.stem: p for p in list_images(lq_root, recursive=False)}
        hq = {p.stem: p for p in list_images(hq_root, recursive=False)}
        missing = sorted(set(lq) - set(hq))
        if missing:
            raise ValueError(f"{len(missing)} LQ images in {lq_root} have no HQ image of the same "
                             f"stem in {hq_root}, e.g. {missing[:3]}")
        self.names = seeded_subset(sorted(lq), max_images, seed)
        if not self.names:
            raise ValueError(f"no images found in {lq_root}")
        self.lq, self.hq, self.size = lq, hq, size

    @classmethod
    def from_config(cls, cfg: DatasetConfig, seed: int = 0, rank: int = 0) -> "PairedFolders":
        return cls(cfg.lq_root, cfg.hq_root, cfg.size, cfg.max_images, seed)

    def __len__(self) -> int:
        return len(self.names)

    def hq_array(self, name: str) -> np.ndarray:
        """The HQ image of ``name``: HxWx3 float32 RGB [0, 1], resized/cropped to ``size``."""
        return resize_square(tensor_to_hwc(read_image(self.hq[name])), self.size)

    def __getitem__(self, key) -> dict:
        name = self.names[split_key(key)[0]]
        hq = self.hq_array(name)
        lq = tensor_to_hwc(read_image(self.lq[name]))
        if lq.shape != hq.shape:
            lq = np.clip(cv2.resize(lq, hq.shape[1::-1], interpolation=cv2.INTER_CUBIC), 0.0, 1.0)
        return {"lq": hwc_to_tensor(lq), "hq": hwc_to_tensor(hq), "name": name}


class RandomPairs(Dataset):
    """Uniform-noise (LQ, HQ) images of ``size`` (``max_images`` of them, default 1024), for
    benchmarks and smoke tests without data: ``{'lq', 'hq', 'index'}``; seeded per sample."""

    def __init__(self, size: int, length: int = 1024, seed: int = 0, rank: int = 0):
        self.size, self.length, self.seed, self.rank = size, length, seed, rank

    @classmethod
    def from_config(cls, cfg: DatasetConfig, seed: int = 0, rank: int = 0) -> "RandomPairs":
        return cls(cfg.size, cfg.max_images or 1024, seed, rank)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key) -> dict:
        index, epoch = split_key(key)
        rng = sample_rng(self.seed, self.rank, epoch, index)
        lq, hq = rng.random((2, self.size, self.size, 3), dtype=np.float32)
        return {"lq": hwc_to_tensor(lq), "hq": hwc_to_tensor(hq), "index": index}


# --------------------------------------------------------------------------------------------
# Inpainting: HQ images with random masks (training), masked pairs (validation)
# --------------------------------------------------------------------------------------------


def fit_mask_generator(generator, height: int, width: int, ref_size: Optional[int]):
    """``generator`` for an H x W image: pixel parameters (stroke length/width, box sizes and
    margin) scaled by min(H, W) / ``ref_size`` (None or a factor of 1: unchanged), then box sizes
    and margin clipped so that a box fits; fraction parameters unchanged. At the reference size
    the official generators come back as they are (a 256 image is roomy enough for their boxes)."""
    side = min(height, width)
    factor = 1.0 if ref_size is None else side / ref_size

    def px(value: int, low: int) -> int:
        return value if factor == 1.0 else max(low, round(value * factor))

    if isinstance(generator, MixedMaskGenerator):
        return replace(generator, irregular=fit_mask_generator(generator.irregular, height, width, ref_size),
                       box=fit_mask_generator(generator.box, height, width, ref_size))
    if isinstance(generator, IrregularMaskGenerator):
        return replace(generator, max_len=px(generator.max_len, 1), max_width=px(generator.max_width, 1))
    if isinstance(generator, BoxMaskGenerator):
        margin = min(px(generator.margin, 0), max(0, (side - 2) // 2))
        room = side - 2 * margin - 1  # the longest side the generator allows with this margin
        high = max(1, min(px(generator.bbox_max_size, 1), room))
        low = min(px(generator.bbox_min_size, 1), high)
        return replace(generator, margin=margin, bbox_min_size=low, bbox_max_size=high)
    return generator


def mask_generator(cfg: MaskConfig):
    """The generator ``cfg.kind`` names, with its parameters from ``cfg.params``."""
    return cfg.params if cfg.kind == "mixed" else getattr(cfg.params, cfg.kind)


class InpaintingImages(Dataset):
    """HQ images with random masks (official ``InpaintingDataSet``,
    docs/method.md#training-the-lama-estimator):
    ``{'lq': hq * (1 - mask), 'mask': (1, H, W) {0, 1}, 'hq', 'index'}``; the hole pixels of lq
    are exactly 0. The mask is drawn from the sample's generator (after the optional flip), with
    the generator fitted to the image size (:func:`fit_mask_generator`)."""

    def __init__(self, images: HQImages, generator, ref_size: Optional[int] = 256):
        self.images, self.generator, self.ref_size = images, generator, ref_size
        self.fitted: dict[tuple[int, int], object] = {}

    @classmethod
    def from_config(cls, cfg: DatasetConfig, seed: int = 0, rank: int = 0) -> "InpaintingImages":
        return cls(HQImages.from_config(cfg, seed, rank), mask_generator(cfg.mask), cfg.mask.ref_size)

    def __len__(self) -> int:
        return len(self.images)

    def draw_mask(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """HxW float32 {0, 1} mask from ``rng``, by the generator fitted to H x W."""
        if (height, width) not in self.fitted:
            self.fitted[height, width] = fit_mask_generator(self.generator, height, width, self.ref_size)
        return self.fitted[height, width](height, width, rng)

    def __getitem__(self, key) -> dict:
        rng = self.images.rng(key)
        index, hq = self.images.hq_array(key, rng)
        mask = mask_to_tensor(self.draw_mask(hq.shape[0], hq.shape[1], rng))
        hq = hwc_to_tensor(hq)
        return {"lq": apply_mask(hq, mask), "mask": mask, "hq": hq, "index": index}


class InpaintingPairs(Dataset):
    """Validation inpainting pairs (official: CelebA-Test lq/hq): masked LQ and HQ folders
    matched by stem, ``{'lq', 'mask', 'hq', 'name'}``. The mask is where LQ is exactly 0 in all
    three channels (official) or, given ``mask_root``, the mask file of the LQ image's stem
    (white = hole; all are looked up here, so a missing one fails before training). The mask is
    taken at LQ's resolution; if LQ's size differs from HQ's, LQ is resized (bicubic) and the
    mask (nearest). LQ's hole pixels are then set exactly to 0."""

    def __init__(self, pairs: PairedFolders, mask_root: Optional[str] = None):
        self.pairs = pairs
        self.masks = None if mask_root is None else {
            name: find_mask(pairs.lq[name], mask_root) for name in pairs.names}

    @classmethod
    def from_config(cls, cfg: DatasetConfig, seed: int = 0, rank: int = 0) -> "InpaintingPairs":
        return cls(PairedFolders.from_config(cfg, seed, rank), cfg.mask.root)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key) -> dict:
        name = self.pairs.names[split_key(key)[0]]
        hq = self.pairs.hq_array(name)
        lq = read_image(self.pairs.lq[name])
        mask = detect_black_holes(lq) if self.masks is None else read_mask(self.masks[name], lq.shape[-2:])
        if lq.shape[-2:] != hq.shape[:2]:
            size = (hq.shape[1], hq.shape[0])
            lq = hwc_to_tensor(np.clip(cv2.resize(tensor_to_hwc(lq), size, interpolation=cv2.INTER_CUBIC), 0, 1))
            mask = mask_to_tensor(cv2.resize(mask[0].numpy(), size, interpolation=cv2.INTER_NEAREST))
        return {"lq": apply_mask(lq, mask), "mask": mask, "hq": hwc_to_tensor(hq), "name": name}


DATASETS: dict[str, type] = {
    "hq_images": HQImages,
    "blind_pairs": BlindPairs,
    "paired": PairedFolders,
    "random": RandomPairs,
    "inpainting": InpaintingImages,
    "inpainting_paired": InpaintingPairs,
}


def check_dataset_config(cfg: DatasetConfig, key: str = "data") -> None:
    """Config-time checks (no file access): the name is known and its required fields are set."""
    if cfg.name not in DATASETS:
        raise ValueError(f"{key}.name={cfg.name!r} is not a dataset; allowed: {sorted(DATASETS)}")
    if cfg.name in ("hq_images", "blind_pairs", "inpainting") and (cfg.root is None) == (cfg.file_list is None):
        raise ValueError(f"dataset {cfg.name!r} needs exactly one of {key}.root ({cfg.root!r}) and "
                         f"{key}.file_list ({cfg.file_list!r})")
    if cfg.name in ("paired", "inpainting_paired") and (cfg.lq_root is None or cfg.hq_root is None):
        raise ValueError(f"dataset {cfg.name!r} needs {key}.lq_root and {key}.hq_root")
    if cfg.mask.kind not in MASK_GENERATORS:
        raise ValueError(f"{key}.mask.kind={cfg.mask.kind!r} is not a mask generator; "
                         f"allowed: {sorted(MASK_GENERATORS)}")
    if cfg.mask.ref_size is not None and cfg.mask.ref_size < 1:
        raise ValueError(f"{key}.mask.ref_size must be >= 1 or null, got {cfg.mask.ref_size}")
    if cfg.name == "random" and cfg.size is None:
        raise ValueError(f"dataset 'random' needs {key}.size")
    if cfg.size is not None and cfg.size < 1:
        raise ValueError(f"{key}.size must be >= 1, got {cfg.size}")


def build_dataset(cfg: DatasetConfig, seed: int = 0, rank: int = 0) -> Dataset:
    """The dataset named ``cfg.name``; an unknown name or missing field raises before any file is read."""
    check_dataset_config(cfg)
    return DATASETS[cfg.name].from_config(cfg, seed, rank)


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


class ResumableSampler(DistributedSampler):
    """torch's DistributedSampler (same shuffle and rank partition) yielding ``(index, epoch)``
    keys, able to start part-way through an epoch: ``set_epoch(epoch, start)`` skips the first
    ``start`` keys of this rank, so a resumed run sees exactly the data of an uninterrupted one.
    Works without a process group (give ``num_replicas`` and ``rank``)."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((int(i), self.epoch) for i in islice(super().__iter__(), self.start, None))

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)
