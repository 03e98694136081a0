"""The held-out-faces harness of the evaluation scripts (scripts/reproduce_small.py,
scripts/solver_quality.py, scripts/auto_start.py, scripts/select_samples.py): load a held-out
split at the model size, degrade each face once with a seeded blind degradation (or one of
several families), restore sets with one DifFace per setting around networks loaded once, and
score them (PSNR / SSIM per image, FID against the HQ set).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from datapipe.degradations import BlindDegradation, BlindDegradationConfig
from datapipe.image_io import (ImageReadError, hwc_to_tensor, list_images, read_image, tensor_to_hwc,
                               tensor_to_uint8, write_image)
from difface.pipeline import build_difface, sampling_of
from difface.presets import data_root
from models import build_network
from models.checkpoint import load_weights, resolve_weights
from models.difface import DifFace, image_generator, resize


@dataclass
class Faces:
    """Held-out faces at the model size: keys (file names), hq (B, 3, S, S) RGB [0, 1] on 8-bit levels."""
    keys: list[str]
    hq: torch.Tensor
    skipped: list[str] = field(default_factory=list)

    @property
    def stems(self) -> list[str]:
        return [Path(k).stem for k in self.keys]


def pick(files: list[Path], count: int | None, how: str) -> list[Path]:
    """`count` files: the first ones in sorted order, or evenly `spread` over the sorted list."""
    if not count or count >= len(files):
        return files
    if how == "first":
        return files[:count]
    return [files[i] for i in np.unique(np.round(np.linspace(0, len(files) - 1, count)).astype(int))]


def load_heldout(folder: Path, size: int, max_images: int | None, select: str = "spread") -> Faces:
    """`max_images` readable images of `folder` (see `pick`), resized to `size` if needed."""
    keys, images, skipped = [], [], []
    for path in pick(list_images(folder), max_images, select):
        try:
            img = read_image(path)
        except ImageReadError as e:
            print(f"warning: skipped {e}", file=sys.stderr)
            skipped.append(path.name)
            continue
        if tuple(img.shape[-2:]) != (size, size):  # bicubic as the method's own resize, then 8-bit
            img = resize(img[None], (size, size))[0].clamp(0, 1)
        keys.append(path.name)
        images.append(torch.round(img * 255) / 255)
    stems = [Path(k).stem for k in keys]
    if len(set(stems)) != len(stems):
        raise ValueError(f"held-out files in {folder} share a name stem; rename them")
    if len(keys) < 2:
        raise ValueError(f"{folder} holds {len(keys)} readable images; FID needs at least 2")
    return Faces(keys, torch.stack(images), skipped)


def degradation_config(source: str | None, default: dict | None = None) -> BlindDegradationConfig:
    """Ranges from a training config's data.train.degradation (or a YAML of the bare block).

    Flip and greyscale are switched off: the ground truth must stay the held-out image.
    """
    from omegaconf import OmegaConf
    if source is None:
        block = dict(default)
    else:
        path = Path(source)
        cfg = OmegaConf.load(path if path.is_file() or path.is_absolute() else data_root() / path)
        node = OmegaConf.select(cfg, "data.train.degradation")
        block = OmegaConf.to_container(node if node is not None else cfg, resolve=True)
    block.update(use_hflip=False, gray_prob=0.0)
    try:
        return BlindDegradationConfig(**block)
    except TypeError as e:
        raise ValueError(f"degradation block of {source}: {e}") from None


def numpy_rng(seed: int, key: str, tag: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\x00{key}\x00{tag}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def degrade(faces: Faces, config: BlindDegradationConfig, seed: int, tag: str, out_dir: Path) -> torch.Tensor:
    """One seeded degradation per face, written to out_dir/<stem>.png (+ params.json); (B,3,S,S)."""
    degradation, lq, params = BlindDegradation(config), [], {}
    for key, stem, hq in zip(faces.keys, faces.stems, faces.hq):
        y, gt, drawn = degradation(tensor_to_hwc(hq), numpy_rng(seed, key, tag))
        assert np.array_equal(gt, tensor_to_hwc(hq)), "flip/greyscale must be off"
        lq.append(hwc_to_tensor(y))
        params[key] = drawn
        write_image(out_dir / f"{stem}.png", lq[-1])
    (out_dir / "params.json").write_text(json.dumps({"ranges": asdict(config), "images": params}, indent=1))
    return torch.stack(lq)


# Families of degradations at 64 px (blur sigma and downsampling of the 512 px training ranges / 8)
# the held-out faces are dealt to in turn (scripts/auto_start.py, scripts/select_samples.py): mild
# and severe mixes of every step of the blind degradation, and one strong step with the others quiet.
QUIET = dict(blur_sigma=[0.1, 0.4], downsample_range=[1.0, 1.5], noise_range=[0.0, 3.0], jpeg_range=[85.0, 100.0])
FAMILIES = {
    "mild": dict(blur_sigma=[0.1, 0.6], downsample_range=[0.8, 2.0], noise_range=[0.0, 5.0], jpeg_range=[70.0, 100.0]),
    "blur": dict(QUIET, blur_sigma=[1.2, 2.5]),
    "downsampling": dict(QUIET, downsample_range=[4.0, 8.0]),
    "noise": dict(QUIET, noise_range=[15.0, 30.0]),
    "jpeg": dict(QUIET, jpeg_range=[10.0, 30.0]),
    "severe": dict(blur_sigma=[1.0, 2.5], downsample_range=[4.0, 10.0], noise_range=[10.0, 25.0],
                   jpeg_range=[20.0, 60.0]),
}


def degrade_families(faces: Faces, seed: int, out: Path) -> tuple[torch.Tensor, list[str]]:
    """LQ faces (B, 3, S, S) and each face's family of FAMILIES (dealt in turn), written under out/lq/<family>/."""
    names = list(FAMILIES)
    family = [names[i % len(names)] for i in range(len(faces.keys))]
    lq = torch.empty_like(faces.hq)
    for name in names:
        idx = [i for i, f in enumerate(family) if f == name]
        subset = Faces([faces.keys[i] for i in idx], faces.hq[idx])
        config = degradation_config(None, dict(FAMILIES[name], blur_kernel_size=13))
        lq[idx] = degrade(subset, config, seed, name, out / "lq" / name)
    return lq, family


def to_uint8(batch: torch.Tensor) -> list[np.ndarray]:
    return [tensor_to_uint8(img) for img in batch.cpu()]


# --------------------------------------------------------------------------------------------
# Restoration: networks loaded once, one DifFace per setting
# --------------------------------------------------------------------------------------------

class Runner:
    """Builds the config's networks once and runs the method on image sets in batches."""

    def __init__(self, cfg, device: torch.device, batch_size: int, seed: int, weights_dir, download: bool):
        self.cfg, self.device, self.batch_size, self.seed = cfg, device, batch_size, seed
        self.base = build_difface(cfg, device, weights_dir, download)

    def method(self, start_step: int, steps: int | None = None, estimator=None) -> DifFace:
        """A DifFace sharing the loaded prior (and estimator unless given); the config's sampling."""
        s = sampling_of(self.cfg)
        sampling = replace(s, start_step=start_step, steps=s.steps if steps is None else steps)
        return DifFace(self.base.estimator if estimator is None else estimator, self.base.prior, self.base.schedule,
                       self.cfg.image_size, sampling, dtype=self.cfg.dtype)

    def _batches(self, n: int, desc: str):
        from tqdm import tqdm
        return tqdm(range(0, n, self.batch_size), desc=desc, unit="batch", file=sys.stderr, leave=False)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def restore(self, method: DifFace, lq: torch.Tensor, keys: list[str], desc: str,
                samples: list[int] | None = None):
        """(samples, estimates) as lists of (S, S, 3) uint8 RGB, and seconds per image."""
        samples = samples or [0] * len(keys)
        out, est = [], []
        self._sync()
        start = time.perf_counter()
        for i in self._batches(len(keys), desc):
            j = slice(i, i + self.batch_size)
            gens = [image_generator(self.seed, k, s) for k, s in zip(keys[j], samples[j])]
            result = method.restore(lq[j].to(self.device), generator=gens)
            out += to_uint8(result.sample)
            est += to_uint8(result.estimate)
        self._sync()
        return out, est, (time.perf_counter() - start) / len(keys)

    def estimate(self, method: DifFace, lq: torch.Tensor, desc: str):
        """The estimator alone (N = 0): list of (S, S, 3) uint8 RGB, seconds per image."""
        out = []
        self._sync()
        start = time.perf_counter()
        for i in self._batches(len(lq), desc):
            out += to_uint8(method.estimate(lq[i:i + self.batch_size].to(self.device)))
        self._sync()
        return out, (time.perf_counter() - start) / len(lq)


def build_estimator(cfg, weights: str, device: torch.device, weights_dir) -> torch.nn.Module:
    """The config's estimator network with other weights (the mild estimator)."""
    from omegaconf import OmegaConf
    net = build_network(cfg.estimator.name, OmegaConf.to_container(cfg.estimator.params, resolve=True))
    load_weights(net, resolve_weights(weights, weights_dir, download=False))
    return net.requires_grad_(False).eval().to(device)


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------

class Scorer:
    """PSNR / SSIM against the HQ faces (per image) and FID against the HQ set."""

    def __init__(self, hq: list[np.ndarray], device: torch.device, backbone: str):
        from metrics import build_metric
        from metrics.fid import FidMetric
        self.hq = hq
        self.psnr, self.ssim = build_metric("psnr"), build_metric("ssim")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.fid = FidMetric(device=str(device), backbone=backbone, method="fast")
        self.reference = self.fid.stats(hq)

    def __call__(self, label: str, images: list[np.ndarray], **info) -> dict:
        psnr = [self.psnr.measure(a, b).value for a, b in zip(images, self.hq)]
        ssim = [self.ssim.measure(a, b).value for a, b in zip(images, self.hq)]
        self.last_stats = self.fid.stats(images)  # features kept below 2048 images (KID uses them)
        fid = self.fid.distance(self.last_stats, self.reference)
        row = {"label": label, **info, "psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), "fid": fid,
               "psnr_std": float(np.std(psnr)), "ssim_std": float(np.std(ssim)),
               "per_image": {"psnr": psnr, "ssim": ssim}}
        print(f"  {label}: PSNR {row['psnr']:.2f}  SSIM {row['ssim']:.4f}  FID {fid:.2f}", file=sys.stderr)
        return row


def machine(device: torch.device) -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def number_list(text: str, kind: type = int) -> list:
    """'1,2,3' -> [1, 2, 3] as `kind` (an empty string gives []); argparse error otherwise."""
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None


def int_list(text: str) -> list[int]:
    return number_list(text, int)


def study_parser(doc: str, max_images: int) -> argparse.ArgumentParser:
    """A parser with the options the held-out studies share (scripts/auto_start.py,
    scripts/select_samples.py): --heldout, --out, --cfg, --max-images, --seed, --batch-size,
    --threads, --device, --fid-backbone."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heldout", type=Path, required=True, metavar="DIR", help="folder of held-out HQ faces")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="results folder")
    p.add_argument("--cfg", default="demo", help="inference preset or YAML (default: %(default)s)")
    p.add_argument("--max-images", type=int, default=max_images, help="held-out faces (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--fid-backbone", default="fid_helper", choices=["auto", "pytorch_fid", "fid_helper"])
    return p


def start_study(args: argparse.Namespace):
    """(config, held-out faces, device, Runner) of a study's `study_parser` arguments, with the torch
    threads set and the output folder made; None after printing why when one cannot be had."""
    from difface.pipeline import ConfigError, load_config
    from models.runtime import pick_device
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = load_config(args.cfg)
        faces = load_heldout(args.heldout, cfg.image_size, args.max_images)
        device = pick_device(args.device)
    except (ConfigError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    args.out.mkdir(parents=True, exist_ok=True)
    return cfg, faces, device, Runner(cfg, device, args.batch_size, args.seed, None, False)


def paired_intervals(psnr_a: np.ndarray, feat_a: np.ndarray, psnr_b: np.ndarray, feat_b: np.ndarray,
                     hq: np.ndarray, reps: int = 200, seed: int = 0, fid: bool = False,
                     per_image: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, list[float]]:
    """95% intervals of (a - b) in KID x 1000 and PSNR (and FID with `fid`, and the mean of each
    per-image score of `per_image`: name -> (a's values, b's values)) under a paired bootstrap over
    the faces: a and b restore the same faces, and each draw resamples the faces once, for the two
    sets and the HQ set (Inception features `hq`) alike."""
    from metrics.fid import FidStats, frechet_distance
    from metrics.kid import polynomial_mmd2
    rng = np.random.default_rng(seed)
    per_image = per_image or {}
    deltas = {"kid": [], "psnr": [], "fid": [], **{name: [] for name in per_image}}
    for _ in range(reps):
        i = rng.integers(0, len(hq), len(hq))
        deltas["kid"].append(1000 * (polynomial_mmd2(feat_a[i], hq[i]) - polynomial_mmd2(feat_b[i], hq[i])))
        deltas["psnr"].append(psnr_a[i].mean() - psnr_b[i].mean())
        for name, (a, b) in per_image.items():
            deltas[name].append(a[i].mean() - b[i].mean())
        if fid:
            target = FidStats.from_features(hq[i])
            deltas["fid"].append(frechet_distance(FidStats.from_features(feat_a[i]), target, method="fast")
                                 - frechet_distance(FidStats.from_features(feat_b[i]), target, method="fast"))
    return {metric: [float(v) for v in np.percentile(values, [2.5, 97.5])] for metric, values in deltas.items()
            if values}
