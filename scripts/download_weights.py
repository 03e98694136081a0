"""Fetch released weights ahead of time, e.g. before going offline or onto a cluster node.

    python scripts/download_weights.py                      # the paper's model (difface_ffhq512)
    python scripts/download_weights.py --preset inpaint_ffhq256
    python scripts/download_weights.py --all                # every preset + Real-ESRGAN backgrounds
    python scripts/download_weights.py --weights-dir /data/difface-weights

Files go to `--weights-dir`, else $DIFFACE_WEIGHTS, else $XDG_CACHE_HOME/difface (~/.cache/difface),
where `inference.py` looks for them. Each download streams to `<file>.part` with a progress bar,
is renamed when complete, and is checked by a strict load into its network (a file that does
not fit is deleted). Files already present are not fetched again. Exit code 2 when a file
could not be fetched.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--preset", default="difface_ffhq512",
                       help="an inference preset (configs/inference/NAME.yaml) or a YAML file")
    which.add_argument("--all", action="store_true", help="every preset's files and the Real-ESRGAN files")
    p.add_argument("--weights-dir", default=None, help="target folder (default: $DIFFACE_WEIGHTS or the user cache)")
    args = p.parse_args(argv)

    from models.checkpoint import REGISTRY, WeightsError, default_weights_dir, load_weights, resolve_weights
    from difface.pipeline import ConfigError, load_config, locate_weights
    from difface.presets import preset_paths
    from models.rrdbnet import realesrgan

    names = [f.stem for f in preset_paths()] if args.all else [args.preset]
    print(f"weights folder: {Path(args.weights_dir or default_weights_dir()).absolute()}", file=sys.stderr)
    failed = 0
    for name in names:
        try:
            cfg = load_config(name)
            paths = locate_weights(cfg, args.weights_dir, download=True)
            print(f"{name}: " + ", ".join(str(p) for p in paths), file=sys.stderr)
        except (WeightsError, ConfigError) as e:
            print(f"error: {name}: {e}", file=sys.stderr)
            failed += 1
    if args.all:
        for spec in (s for s in REGISTRY.values() if s.subdir == "realesrgan"):
            scale = 4 if "x4" in spec.name else 2
            try:
                path = resolve_weights(spec.name, args.weights_dir, download=True,
                                       verify=lambda f, s=scale: load_weights(realesrgan(s), f, keys=spec.keys))
                print(f"{spec.name}: {path}", file=sys.stderr)
            except WeightsError as e:
                print(f"error: {e}", file=sys.stderr)
                failed += 1
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
