"""Run the pipeline on the bundled examples with the bundled demo model (offline, CPU, about a minute).

    python scripts/quickstart.py [--out results/quickstart] [extra inference.py options]

Runs `inference.py --cfg demo` twice: on the aligned example faces (`examples/faces`, 100 px FFHQ-framed
crops, --aligned) and on the example group photo (`examples/photos`, whole-photo mode), writing to
OUT/faces and OUT/photos. The inputs are at the demo's own scale (64 px faces): the demo is a
demonstration of the pipeline, not a restorer; restore your own faces with the paper's model
(`python inference.py -i FACES -o OUT`, the default).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from difface import cli

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("results/quickstart"), help="output folder")
    args, extra = p.parse_known_args(argv)
    runs = [[str(REPO / "examples" / "faces"), str(args.out / "faces"), "--aligned", "--save-estimate"],
            [str(REPO / "examples" / "photos"), str(args.out / "photos"), "--save-faces"]]
    codes = [cli.main(["-i", src, "-o", out, "--cfg", "demo", *flags, *extra]) for src, out, *flags in runs]
    print(f"results in {args.out}/faces (aligned faces, estimates/ holds the estimator's output) "
          f"and {args.out}/photos/restored_image", file=sys.stderr)
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
