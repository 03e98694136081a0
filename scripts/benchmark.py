"""Speed and memory of DifFace restoration with a preset's networks on random weights.

    python scripts/benchmark.py --steps 10 --batch-size 1 --device cpu --dtype fp32

No weight file is needed: the networks of the config are built with random weights, which
cost the same time as trained ones. Reports seconds per face (warm runs after one warm-up),
the time of one prior evaluation, an extrapolation to the config's default number of steps,
and the peak memory (CUDA: peak allocated; CPU: peak resident set of the process).
"""
from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import build_network  # noqa: E402
from models.diffusion import DiffusionSchedule  # noqa: E402
from models.difface import DifFace  # noqa: E402
from models.pipeline import load_config, pick_device  # noqa: E402


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def build(cfg, device, steps: int | None, dtype: str) -> DifFace:
    nets = []
    for spec in (cfg.estimator, cfg.prior):
        net = build_network(spec.name, dict(spec.params)).eval().requires_grad_(False).to(device)
        nets.append(net)
    schedule = DiffusionSchedule.from_name(cfg.diffusion.schedule, cfg.diffusion.steps)
    s = cfg.sampling
    return DifFace(nets[0], nets[1], schedule, image_size=cfg.image_size, start_step=s.start_step,
                   grid=s.grid, steps=steps if steps is not None else s.steps, eta=s.eta, dtype=dtype)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="difface_ffhq512", help="inference preset or YAML")
    p.add_argument("--steps", type=int, default=None, help="prior evaluations per face (default: the config's)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--repeats", type=int, default=1, help="timed runs after one warm-up run")
    p.add_argument("--no-warmup", action="store_true", help="time the first run too (slow CPUs)")
    args = p.parse_args(argv)

    cfg = load_config(args.cfg)
    device = pick_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    method = build(cfg, device, args.steps, args.dtype)
    n_steps = len(method.timesteps)
    default_steps = len(DifFace(None, None, method.schedule, cfg.image_size, cfg.sampling.start_step,
                                cfg.sampling.grid, cfg.sampling.steps).timesteps)
    y = torch.rand(args.batch_size, 3, cfg.image_size, cfg.image_size, device=device)
    gen = torch.Generator().manual_seed(0)

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    def restore():
        method.restore(y, generator=gen)

    if not args.no_warmup:
        timed(restore)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = min(timed(restore) for _ in range(args.repeats))
    estimator = timed(lambda: method.estimate(y))
    per_face = seconds / args.batch_size
    per_step = max(seconds - estimator, 0.0) / n_steps / args.batch_size
    print(f"machine: {machine(device)}; torch {torch.__version__}")
    print(f"config: {cfg.name}; {cfg.image_size}x{cfg.image_size}; dtype {args.dtype}; batch {args.batch_size}")
    print(f"prior evaluations per face: {n_steps}")
    print(f"seconds per face: {per_face:.3f}")
    print(f"estimator: {estimator / args.batch_size:.3f} s per face; prior: {per_step:.3f} s per evaluation per face")
    print(f"extrapolated to {default_steps} evaluations: "
          f"{estimator / args.batch_size + per_step * default_steps:.3f} s per face")
    print(f"peak memory: {peak_memory_gb(device):.2f} GiB ({'allocated' if device.type == 'cuda' else 'process RSS'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
