#!/usr/bin/env python
"""Speed and memory of DifFace restoration: samplers, precisions, compilation, batch sizes.

    python scripts/benchmark.py                      # CPU default: a few minutes
    python scripts/benchmark.py --baseline ../main   # + forward times of another checkout's networks
    python scripts/benchmark.py --batch-sizes 1,8 --modes fp32,bf16,compile
    python scripts/benchmark.py --cache-depths 1,2,3,4,5,6,7 --forward-only   # cost of partial evaluations

The networks of --cfg are built with random weights (they cost the same time as trained ones).
For every precision mode and batch size the estimator and the prior are timed (min of
--repeats warm runs; compilation and warm-up excluded, the compile time is reported). One
table then gives, side by side for each sampling setting (--cfg's, the paper's DDIM-100, and
--fast-cfg's): network evaluations per face and seconds per face = (estimator + evaluations x
prior) / batch. A setting with cached deep features (sampling.cache_depth, docs/deep_cache.md)
also gets its partial evaluations timed and counted: seconds per face = (estimator + full x
prior + partial x partial prior) / batch, and full-evaluation equivalents per face = full +
partial x (MACs of a partial / of a full evaluation). The samplers' own arithmetic is under
0.1% of a step, so this equals a full restoration; --end-to-end also times a real restoration
(the fast preset as shipped, then in each mode) to show it. Peak memory: CUDA peak allocated;
CPU peak growth of the process's resident set from before the first call.

--cache-depths D,D: the cost of a partial UNet evaluation (deep-feature caching, docs/deep_cache.md)
at each branch depth: multiply-accumulates (counted, batch 1) and seconds (fp32, batch 1,
interleaved with the full forward), each also as a fraction of a full evaluation.

--baseline PATH / --official PATH import `models/unet.py:UNetModel` and `models/swinir.py:SwinIR`
from another checkout (today's main, or the official DifFace code) under a private package
name, load the same random weights and time both forwards interleaved in this process
(fp32, batch 1), with the maximum output difference.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import platform
import sys
import threading
import time
import types
from pathlib import Path

import torch
from omegaconf import OmegaConf


from models import build_network  # noqa: E402
from models.deep_cache import CachedUNet, cached_unet, evaluation_macs  # noqa: E402
from models.difface import DTYPES, DifFace, SamplingConfig  # noqa: E402
from models.diffusion import DiffusionSchedule  # noqa: E402
from difface.pipeline import ConfigError, load_config, sampling_of  # noqa: E402
from models.runtime import pick_device, pick_dtype  # noqa: E402
from models.runtime import configure_backends, prepare_network  # noqa: E402

MODES = ("fp32", "bf16", "fp16", "compile")
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------

def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or "cpu"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory (GiB) while the block runs: CUDA peak allocated, else peak RSS growth (Linux)."""

    def __init__(self, device: torch.device):
        self.device, self.gib, self._stop = device, 0.0, threading.Event()

    def _poll(self, start: int) -> None:
        peak = start
        while not self._stop.wait(0.002):
            peak = max(peak, _rss())
        self.gib = (max(peak, _rss()) - start) / 2 ** 30

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.path.exists("/proc/self/statm"):
            self._thread = threading.Thread(target=self._poll, args=(_rss(),), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.gib = torch.cuda.max_memory_allocated(self.device) / 2 ** 30
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def interleaved(fns: dict, repeats: int, device: torch.device) -> dict:
    """Min seconds of each callable over `repeats` rounds, the callables alternating within a round."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], timed(fn, device))
    return best


# --------------------------------------------------------------------------------------------
# Networks of another checkout
# --------------------------------------------------------------------------------------------

def import_networks(checkout: str | Path, tag: str) -> dict:
    """{'unet': UNetModel, 'swinir': SwinIR} from `checkout/models/{unet,swinir}.py`.

    The checkout's `models` folder is loaded as the package `_bench_<tag>` (its __init__ is not
    run), so its relative imports work and nothing collides with this project's `models`.
    """
    folder = Path(checkout).expanduser().resolve() / "models"
    missing = [f for f in ("unet.py", "swinir.py") if not (folder / f).is_file()]
    if missing:
        raise ValueError(f"{checkout}: no {', '.join('models/' + m for m in missing)} (expected a DifFace checkout)")
    name = f"_bench_{tag}"
    package = types.ModuleType(name)
    package.__path__ = [str(folder)]
    sys.modules[name] = package
    sys.path.insert(0, str(folder.parent))  # the official code also imports top-level helpers
    try:
        return {"unet": importlib.import_module(f"{name}.unet").UNetModel,
                "swinir": importlib.import_module(f"{name}.swinir").SwinIR}
    finally:
        sys.path.remove(str(folder.parent))


def forward_comparison(cfg, others: dict, device: torch.device, repeats: int, times: dict | None = None) -> list[str]:
    """Markdown rows: our forward (fp32, channels_last) vs each other checkout's, same weights and
    input; `times` collects the seconds as {(checkout tag, 'unet' | 'swinir'): s}."""
    rows = []
    torch.manual_seed(0)
    for kind, spec in (("unet", cfg.prior), ("swinir", cfg.estimator)):
        ours = build_network(spec.name, dict(spec.params)).eval().requires_grad_(False)
        for p in ours.parameters():  # no zero-initialised layers: every path does real work
            torch.nn.init.normal_(p, std=0.02)
        x = torch.rand(1, 3, cfg.image_size, cfg.image_size, device=device)
        args = (x * 2 - 1, torch.tensor([200], device=device)) if kind == "unet" else (x,)
        fns, outs = {}, {}
        for tag, classes in others.items():
            net = classes[kind](**dict(spec.params)).eval().requires_grad_(False)
            net.load_state_dict(ours.state_dict(), strict=True)
            net = net.to(device)
            fns[tag] = (lambda n=net: n(*args))
        fast = prepare_network(ours.to(device), device, channels_last=True)
        fns["this checkout"] = lambda: fast(*args)
        with torch.no_grad():
            for tag, fn in fns.items():
                outs[tag] = fn()
        with torch.inference_mode():
            best = interleaved(fns, repeats, device)
        for tag, seconds in best.items():
            if times is not None:
                times[tag, kind] = seconds
        for tag in others:
            diff = (outs["this checkout"].float() - outs[tag].float()).abs().max().item()
            rows.append(f"| {kind} {cfg.image_size} | {tag} | {best[tag]:.3f} | {best['this checkout']:.3f} | "
                        f"{best[tag] / best['this checkout']:.2f}x | {diff:.1e} |")
    return rows


def cache_cost(cfg, depths: list[int], device: torch.device, repeats: int) -> list[str]:
    """Markdown rows: MACs and seconds of the full UNet evaluation and of a partial one per depth."""
    macs = evaluation_macs(cfg.prior.params, cfg.image_size, depths)
    torch.manual_seed(0)
    unet = prepare_network(build_network(cfg.prior.name, dict(cfg.prior.params)).eval().requires_grad_(False)
                           .to(device), device)
    x = torch.rand(1, 3, cfg.image_size, cfg.image_size, device=device) * 2 - 1
    t = torch.tensor([200], device=device)
    fns, shapes = {None: lambda: unet(x, t)}, {None: "-"}
    with torch.inference_mode():
        for depth in depths:
            net = CachedUNet(unet, depth)
            deep = net(x, t)[1]
            fns[depth] = lambda net=net, deep=deep: net(x, t, deep)
            shapes[depth] = "x".join(str(n) for n in deep.shape[1:])
        for fn in fns.values():  # warm-up
            fn()
        best = interleaved(fns, repeats, device)
    rows = []
    for depth in fns:
        rows.append(f"| {'full' if depth is None else depth} | {shapes[depth]} | {macs[depth] / 1e9:.1f} | "
                    f"{macs[depth] / macs[None]:.3f} | {best[depth]:.3f} | {best[depth] / best[None]:.3f} |")
    return rows


# --------------------------------------------------------------------------------------------
# Restoration settings
# --------------------------------------------------------------------------------------------

def settings(cfg, fast_cfg) -> list[dict]:
    """The sampling of --cfg and of --fast-cfg (once if equal): label, prior evaluations per face,
    how many of them are partial, and at which branch depth (None: no caching)."""
    rows = []
    for c in (cfg, fast_cfg):
        s = sampling_of(c)
        full = s.full_evaluations(c.diffusion.steps)
        label = f"{s.sampler}" + (f" K = {s.steps}" if s.steps else f", grid {s.grid}") + f", N = {s.start_step}"
        if s.cache_depth is not None:
            label += f", cache depth {s.cache_depth} ({full.count(False)} partial)"
        row = dict(label=label, evals=len(full), partial=full.count(False), depth=s.cache_depth)
        if row not in rows:
            rows.append(row)
    return rows


def equivalents(row: dict, macs: dict) -> float:
    """Full-evaluation equivalents per face: full evaluations + partial ones x their MAC fraction."""
    if row["depth"] is None:
        return float(row["evals"])
    return row["evals"] - row["partial"] + row["partial"] * macs[row["depth"]] / macs[None]


def networks(cfg, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    nets = [build_network(spec.name, dict(spec.params)).eval().requires_grad_(False).to(device)
            for spec in (cfg.estimator, cfg.prior)]
    return nets[0], nets[1]


def time_mode(cfg, mode: str, batch: int, device: torch.device, repeats: int, depths=()) -> dict:
    """Estimator and prior seconds per call at `batch` (and a partial prior evaluation at each of
    `depths`, key ('partial', depth)), peak memory, compile seconds."""
    estimator, prior = networks(cfg, device)
    compile_ = mode == "compile"
    estimator = prepare_network(estimator, device, compile=compile_)
    prior = prepare_network(prior, device, compile=compile_)
    dtype = "fp32" if mode == "compile" else mode
    autocast = (torch.autocast(device.type, dtype=DTYPES[dtype]) if dtype != "fp32" else contextlib.nullcontext())
    y = torch.rand(batch, 3, cfg.image_size, cfg.image_size, device=device)
    t = torch.full((batch,), 200, device=device)
    with torch.inference_mode(), autocast, PeakMemory(device) as peak:
        warm = timed(lambda: (estimator(y), prior(y * 2 - 1, t)), device)
        fns = {"estimator": lambda: estimator(y), "prior": lambda: prior(y * 2 - 1, t)}
        for depth in depths:
            net = cached_unet(prior, depth)
            deep = net(y * 2 - 1, t)[1]
            net(y * 2 - 1, t, deep)  # warm-up (and compilation) of the partial evaluation
            fns["partial", depth] = lambda net=net, deep=deep: net(y * 2 - 1, t, deep)
        best = interleaved(fns, repeats, device)
    return {**best, "peak_gib": peak.gib, "warmup": warm}


def seconds_per_face(row: dict, r: dict, batch: int) -> float:
    """(estimator + full evaluations x prior + partial evaluations x partial prior) / batch."""
    partial = r["partial", row["depth"]] if row["depth"] is not None else 0.0
    return (r["estimator"] + (row["evals"] - row["partial"]) * r["prior"] + row["partial"] * partial) / batch


def end_to_end(cfg, steps_cfg, device: torch.device) -> tuple[float, int, str]:
    """Seconds of one real restoration (batch 1, after a warm-up) with `steps_cfg`'s sampling and
    precision (as inference.py picks it for `device`, with its low_precision_from_step), its
    evaluations and the precision."""
    estimator, prior = networks(cfg, device)
    dtype, _ = pick_dtype(steps_cfg.dtype, device)
    method = DifFace(prepare_network(estimator, device), prepare_network(prior, device),
                     DiffusionSchedule.from_name(cfg.diffusion.schedule, cfg.diffusion.steps), cfg.image_size,
                     sampling_of(steps_cfg), dtype=dtype, low_precision_from_step=steps_cfg.low_precision_from_step)
    y = torch.rand(1, 3, cfg.image_size, cfg.image_size, device=device)
    warm = DifFace(method.estimator, method.prior, method.schedule, cfg.image_size,
                   SamplingConfig(start_step=method.start_step, steps=1))
    warm.restore(y, generator=torch.Generator().manual_seed(0))  # first-call set-up is not timed
    seconds = timed(lambda: method.restore(y, generator=torch.Generator().manual_seed(0)), device)
    if dtype != "fp32" and steps_cfg.low_precision_from_step is not None:
        dtype += f" at t >= {steps_cfg.low_precision_from_step}, else fp32"
    return seconds, len(method.timesteps), dtype


def process_seconds(cfg, fast_cfg: str, device: torch.device, threads: int | None, repeats: int = 1) -> float:
    """Wall seconds of `python inference.py --cfg FAST --aligned` on one 512 px face, from process
    start to file written (the minimum of `repeats` runs), with random weights saved as the released
    files are (SwinIR under 'params_ema', the UNet's keys with the 'module.' prefix of its training
    run) and passed as estimator.weights / prior.weights overrides."""
    import subprocess
    import tempfile
    estimator, prior = networks(cfg, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save({"params_ema": estimator.state_dict()}, tmp / "swinir.pth")
        torch.save({f"module.{k}": v for k, v in prior.state_dict().items()}, tmp / "unet.pth")
        (tmp / "in").mkdir()
        (tmp / "in" / "face.jpg").write_bytes((REPO / "tests/fixtures/faces/hq_aligned/ffhq_512/00000.jpg").read_bytes())
        command = [sys.executable, str(REPO / "inference.py"), "--cfg", fast_cfg, "--aligned", "-i", str(tmp / "in"),
                   "-o", str(tmp / "out"), "--device", device.type, f"estimator.weights={tmp / 'swinir.pth'}",
                   f"prior.weights={tmp / 'unet.pth'}"]
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run([*command, "--overwrite"], check=True, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            seconds.append(time.perf_counter() - start)
        if not list((tmp / "out").rglob("face*.png")):
            raise RuntimeError(f"{' '.join(command)} wrote no face")
    return min(seconds)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def mode_list(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"unknown mode(s) {bad or text!r}; allowed: {', '.join(MODES)}")
    return modes


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", default="difface_ffhq512", help="inference preset or YAML (default: %(default)s)")
    p.add_argument("--fast-cfg", default="difface_ffhq512_fast", help="the few-step preset (default: %(default)s)")
    p.add_argument("--modes", type=mode_list, default=["fp32", "bf16"],
                   help=f"precision/compile modes among {','.join(MODES)} (default: fp32,bf16)")
    p.add_argument("--batch-sizes", type=int_list, default=[1], help="(default: 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per network, the min is kept (default: 3)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--baseline", default=None, metavar="PATH", help="another checkout of this project")
    p.add_argument("--official", default=None, metavar="PATH", help="a checkout of the official DifFace code")
    p.add_argument("--forward-only", action="store_true",
                   help="only the forward comparison with other checkouts and the --cache-depths table")
    p.add_argument("--cache-depths", type=int_list, default=[], metavar="D,D",
                   help="cost of a partial UNet evaluation at these branch depths (default: none)")
    p.add_argument("--end-to-end", action="store_true",
                   help="also time one real restoration (the fast preset; on CUDA also --cfg's) in the preset's "
                        "precision and in each of --modes")
    p.add_argument("--process", action="store_true",
                   help="also time the command line on one face with the fast preset, process start to file "
                        "written (random weights in the released files' format), against the paper setting "
                        "(estimator once + 100 prior evaluations) of this code and, with --official, of the "
                        "official code's networks, timed in the same run")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg, fast_cfg = load_config(args.cfg), load_config(args.fast_cfg)
        device = pick_device(args.device)
        levels = len(cfg.prior.params.get("channel_mult", ()))
        if args.cache_depths and max(args.cache_depths) > levels:
            raise ValueError(f"--cache-depths {max(args.cache_depths)}: the prior has {levels} resolution levels")
        others = {}
        for tag, path in (("baseline", args.baseline), ("official", args.official)):
            if path:
                others[f"{tag} ({path})"] = import_networks(path, tag)
    except (ConfigError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    configure_backends(device)
    print(f"machine: {machine(device)}; torch {torch.__version__}; {cfg.image_size}x{cfg.image_size} faces, "
          f"random weights; min of {args.repeats}\n")
    forwards: dict = {}
    if others or args.process:
        print("| network | other checkout | its forward (s) | ours (s) | speed-up | max abs diff |")
        print("|---|---|---|---|---|---|")
        for row in forward_comparison(cfg, others, device, args.repeats, forwards):
            print(row, flush=True)
        print()
    if args.process:
        seconds = process_seconds(cfg, args.fast_cfg, device, args.threads, args.repeats)
        print(f"| {args.fast_cfg}: inference.py on one face, process start to file written (min of "
              f"{args.repeats}) | {seconds:.1f} s |")
        print("|---|---|")
        for tag in dict.fromkeys(t for t, _ in forwards):
            paper = forwards[tag, "swinir"] + 100 * forwards[tag, "unet"]
            print(f"| paper setting with the networks of {tag}: estimator + 100 prior evaluations | {paper:.1f} s "
                  f"= {paper / seconds:.2f}x the fast preset's run |")
        print()
    if args.cache_depths:
        print("| evaluation (branch depth) | deep feature C x H x W | GMAC | of full | s (fp32, batch 1) | of full |")
        print("|---|---|---|---|---|---|")
        for row in cache_cost(cfg, args.cache_depths, device, args.repeats):
            print(row, flush=True)
        print()
    if args.forward_only:
        return 0
    rows = settings(cfg, fast_cfg)
    depths = sorted({row["depth"] for row in rows if row["depth"] is not None})
    macs = evaluation_macs(cfg.prior.params, cfg.image_size, depths) if depths else {}
    print("| setting | evals / face | full-eval equivalents | mode | batch | s / face | estimator s | prior s / eval "
          "| partial s / eval | peak GiB | warm-up s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        for batch in args.batch_sizes:
            r = time_mode(cfg, mode, batch, device, args.repeats, depths)
            for row in rows:
                partial = f"{r['partial', row['depth']]:.3f}" if row["depth"] is not None else "-"
                print(f"| {row['label']} | {row['evals']} | {equivalents(row, macs):.1f} | {mode} | {batch} | "
                      f"{seconds_per_face(row, r, batch):.2f} | {r['estimator']:.3f} | {r['prior']:.3f} | {partial} | "
                      f"{r['peak_gib']:.2f} | {r['warmup']:.1f} |", flush=True)
    if args.end_to_end:
        print("\n| end to end (batch 1) | evals | precision | s / face | full-eval equivalents |")
        print("|---|---|---|---|---|")
        for c in (fast_cfg,) if device.type == "cpu" else (cfg, fast_cfg):  # 100 evaluations: minutes on a CPU
            # the preset's own precision first, then each mode as `--dtype MODE` runs the preset and,
            # where the preset keeps low-noise steps in fp32, that mode throughout
            modes = [c.dtype, *(m for m in args.modes if m != "compile")]
            variants = [(m, c.low_precision_from_step) for m in modes] + [(m, None) for m in modes]
            for precision, from_step in dict.fromkeys((m, None if m == "fp32" else t) for m, t in variants):
                variant = OmegaConf.merge(c, {"dtype": precision, "low_precision_from_step": from_step})
                seconds, evals, used = end_to_end(cfg, variant, device)
                row = settings(variant, variant)[0]
                print(f"| {c.name} | {evals} | {used} | {seconds:.2f} | {equivalents(row, macs):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
