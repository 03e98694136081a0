"""scripts/make_test_set.py replays the official CelebA-Test synthesis
(docs/method.md#celeba-test-degradation) bit for bit:
the ``random.seed(10000); random.choice`` sig_y stream and one sequential legacy ``np.random``
noise stream on BGR images, computed here by the official procedure step by step."""
import csv
import importlib.util
import math
import random
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from datapipe.degradations import bivariate_gaussian_kernel

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> int:
    spec = importlib.util.spec_from_file_location("make_test_set", REPO / "scripts" / "make_test_set.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(list(args))


def official_lq(hq_paths: list[Path]) -> tuple[list[np.ndarray], list[int]]:
    """prepare_testing_restoration.py step by step, for the first len(hq_paths) images."""
    random.seed(10000)
    np.random.seed(10000)
    out, sig_ys = [], []
    grid = [(qf, sf, nf, sig_x, theta) for qf in (30, 40, 50, 60, 70) for sf in range(4, 41, 4)
            for nf in (1, 5, 10, 15, 20) for sig_x in (4, 8, 12, 16) for theta in (0, math.pi / 4, math.pi / 2,
                                                                                  3 * math.pi / 4)]
    for path, (qf, sf, nf, sig_x, theta) in zip(hq_paths, grid):
        sig_y = random.choice([4, 8, 12, 16])
        im = cv2.imread(str(path), cv2.IMREAD_COLOR).astype(np.float32) / 255.0  # BGR
        h, w = im.shape[:2]
        im = cv2.filter2D(im, -1, bivariate_gaussian_kernel(41, sig_x, sig_y, theta))
        im = cv2.resize(im, (int(w // sf), int(h // sf)), interpolation=cv2.INTER_LINEAR)
        noise = np.float32(np.random.randn(*im.shape)) * nf / 255.0  # basicsr add_gaussian_noise
        im = np.clip(im + noise, 0, 1)
        _, enc = cv2.imencode(".jpg", np.clip(im, 0, 1) * 255.0, [int(cv2.IMWRITE_JPEG_QUALITY), int(qf)])
        im = np.float32(cv2.imdecode(enc, 1)) / 255.0
        im = cv2.resize(im, (w, h), interpolation=cv2.INTER_LINEAR)
        out.append(np.clip((im * 255.0).round(), 0, 255).astype(np.uint8))
        sig_ys.append(sig_y)
    return out, sig_ys


@pytest.fixture(scope="module")
def hq_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hq")
    rng = np.random.default_rng(5)
    for i in range(20):
        img = cv2.GaussianBlur((rng.random((48, 48, 3)) * 255).astype(np.uint8), (5, 5), 1.5)
        cv2.imwrite(str(folder / f"{i:05d}.png"), img)
    return folder


def test_lq_images_match_the_official_streams_bit_for_bit(hq_folder, tmp_path):
    assert _run("-i", str(hq_folder), "-o", str(tmp_path), "--size", "48", "--max-images", "20") == 0
    sources = sorted(hq_folder.glob("*.png"))
    expected, sig_ys = official_lq(sources)
    rows = list(csv.DictReader(open(tmp_path / "manifest.csv")))
    assert [float(r["sig_y"]) for r in rows] == sig_ys
    assert [int(r["index"]) for r in rows] == list(range(20))
    assert {(r["seed"], r["size"], r["resize"]) for r in rows} == {("10000", "48", "none")}
    for src, ref in zip(sources, expected):
        ours = cv2.imread(str(tmp_path / "lq" / src.name), cv2.IMREAD_COLOR)
        assert np.array_equal(ours, ref), src.name
        assert np.array_equal(cv2.imread(str(tmp_path / "hq" / src.name)), cv2.imread(str(src)))


def test_workers_give_the_same_images(hq_folder, tmp_path):
    assert _run("-i", str(hq_folder), "-o", str(tmp_path / "a"), "--size", "48", "--max-images", "6") == 0
    cmd = [sys.executable, str(REPO / "scripts" / "make_test_set.py"), "-i", str(hq_folder), "-o",
           str(tmp_path / "b"), "--size", "48", "--max-images", "6", "--workers", "2"]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    for p in (tmp_path / "a" / "lq").iterdir():
        assert p.read_bytes() == (tmp_path / "b" / "lq" / p.name).read_bytes()


def test_fewer_than_4000_images_need_max_images(hq_folder, tmp_path, capsys):
    assert _run("-i", str(hq_folder), "-o", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "4000" in err and "--max-images" in err
    assert not (tmp_path / "manifest.csv").exists()
