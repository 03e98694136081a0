"""Training throughput (iterations/s, images/s) of configs, on random data, CPU or GPU.

    python scripts/benchmark_train.py                                  # the two tiny configs
    python scripts/benchmark_train.py --cfg configs/train/estimator_swinir_ffhq512.yaml \\
        configs/train/diffusion_ffhq512.yaml --steps 20 data.batch_size=8

Each config runs the real ``Trainer.train_step`` (micro-batches, AMP, clipping, EMA, optimizer)
on one pre-loaded batch of uniform noise of the config's image size, so the numbers are the
model's speed without data loading. Prints the machine (CPU model, GPU name) first.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from training import load_config

REPO = Path(__file__).resolve().parents[1]
TINY = [str(REPO / "configs" / "train" / f"tiny_{kind}.yaml") for kind in ("estimator", "prior")]


def trainer_class():
    """`Trainer` of the checkout's trainer.py (an entry script, not an installed module)."""
    spec = importlib.util.spec_from_file_location("trainer", REPO / "trainer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Trainer


def machine() -> str:
    """CPU model and thread count, plus the GPU name when CUDA is available."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"CPU: {cpu} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"
    if torch.cuda.is_available():
        text += f"; GPU: {torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return text


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark(cfg_path: str, overrides: list[str], steps: int, warmup: int) -> dict:
    """Time ``steps`` optimizer steps after ``warmup`` ones; returns the numbers."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = OmegaConf.merge(OmegaConf.load(cfg_path), OmegaConf.from_dotlist(list(overrides)))
        size = OmegaConf.select(raw, "data.train.size", default=None) or 64
        cfg = load_config(cfg_path, [f"data.train.size={size}", *overrides, "data.train.name=random",
                                     "data.train.root=null", "data.train.file_list=null", "data.val=null",
                                     "data.num_workers=0", "log.tensorboard=false", f"out_dir={tmp}"])
        trainer = trainer_class()(cfg)
        batch = next(iter(trainer.loader))
        device = trainer.dist.device
        for _ in range(warmup):
            trainer.train_step(batch)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(batch)
        _sync(device)
        seconds = time.perf_counter() - start
        trainer.close()
    mem = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
    return {"config": Path(cfg_path).stem, "model": cfg.model.name, "objective": cfg.objective.name,
            "device": str(device), "amp": cfg.amp, "size": size, "batch": cfg.data.batch_size,
            "micro": cfg.data.micro_batch, "it_s": steps / seconds,
            "img_s": steps * cfg.data.batch_size / seconds, "peak_gib": mem}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cfg", nargs="+", default=TINY, help="training configs to time")
    p.add_argument("overrides", nargs="*", default=[], help="key=value overrides applied to every config")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    return p.parse_intermixed_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    print(machine())
    print(f"{'config':<28} {'model':<7} {'objective':<9} {'device':<7} {'amp':<5} {'size':>5} "
          f"{'batch':>5} {'micro':>5} {'it/s':>9} {'img/s':>9} {'peak GiB':>8}")
    for path in args.cfg:
        r = benchmark(path, args.overrides, args.steps, args.warmup)
        print(f"{r['config']:<28} {r['model']:<7} {r['objective']:<9} {r['device']:<7} {r['amp']:<5} "
              f"{r['size']:>5} {r['batch']:>5} {r['micro']:>5} {r['it_s']:>9.3f} {r['img_s']:>9.2f} "
              f"{r['peak_gib']:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
