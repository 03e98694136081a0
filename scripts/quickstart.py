"""Run the pipeline on the bundled examples with the bundled demo model (offline, CPU, about a minute).

    python scripts/quickstart.py [--out results/quickstart] [--device auto]

Restores the aligned example faces (`examples/faces`, 100 px FFHQ-framed crops) into OUT/faces
(the estimator's output f(y) into OUT/faces/estimates) and the example group photo
(`examples/photos`, whole-photo mode) into OUT/photos/restored_image, with each face's input and
restored crops in OUT/photos/cropped_faces and OUT/photos/restored_faces. The files are the ones
`inference.py --cfg demo` writes. The inputs are at the demo's own scale (64 px faces): the demo is
a demonstration of the pipeline, not a restorer; restore your own faces with the paper's model
(`python inference.py -i FACES -o OUT`, the default).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import difface
from datapipe.image_io import list_images, write_image

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("results/quickstart"), help="output folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    args = p.parse_args(argv)
    restorer = difface.Restorer("demo", device=args.device)
    print(restorer.describe(), file=sys.stderr)
    faces, photos = args.out / "faces", args.out / "photos"
    for path in list_images(REPO / "examples" / "faces"):
        res = restorer.restore(path, aligned=True)
        write_image(faces / path.name, res.image)
        write_image(faces / "estimates" / path.name, res.estimate)
    for path in list_images(REPO / "examples" / "photos"):
        res = restorer.restore(path)
        write_image(photos / "restored_image" / f"{path.stem}.png", res.image)
        for k, face in enumerate(res.faces):
            write_image(photos / "cropped_faces" / f"{path.stem}_{k:02d}.png", face.crop)
            write_image(photos / "restored_faces" / f"{path.stem}_{k:02d}.png", face.restored[0])
        print(f"{path.name}: {res.photo.describe(restorer.cfg.image_size)}", file=sys.stderr)
    print(f"results in {faces} (aligned faces; estimates/ holds the estimator's output) and "
          f"{photos}/restored_image", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
