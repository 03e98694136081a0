"""inference.py end to end on CPU with tiny random-weight networks saved in the official formats."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from difface import cli as inference
from datapipe.image_io import write_image
from models import build_network

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("offline")


def _faces(folder: Path, names, size=32, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for name in names:
        write_image(folder / name, rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return folder


def _run(*args) -> int:
    return inference.main([str(a) for a in args])


def test_restores_a_folder_with_samples_manifest_and_estimates(tiny_cfg, tmp_path):
    src = _faces(tmp_path / "in", ["a.png", "b.jpg"])
    _faces(tmp_path / "in", ["c.png"], size=48)  # resized to 32 and back
    out = tmp_path / "out"
    assert _run("-i", src, "-o", out, "--aligned", "--cfg", tiny_cfg, "--num-samples", 2, "--save-estimate") == 0
    for stem in "abc":
        for k in range(2):
            assert (out / f"{stem}_s{k}.png").is_file()
        assert (out / "estimates" / f"{stem}.png").is_file()
    from datapipe.image_io import read_image
    assert read_image(out / "c_s0.png").shape == (3, 48, 48)
    assert not torch.equal(read_image(out / "a_s0.png"), read_image(out / "a_s1.png")), "samples must differ"
    manifest = json.loads(next(out.glob("manifest_*.json")).read_text())
    assert manifest["summary"]["done"] == 3 and manifest["summary"]["failed"] == 0
    assert manifest["config"]["name"] == "tiny test model"
    assert {Path(r["input"]).name for r in manifest["images"]} == {"a.png", "b.jpg", "c.png"}


def test_same_seed_is_bit_identical_across_batch_sizes(tiny_cfg, tmp_path):
    src = _faces(tmp_path / "in", [f"{i}.png" for i in range(5)])
    for bs in (1, 4):
        assert _run("-i", src, "-o", tmp_path / f"bs{bs}", "--aligned", "--cfg", tiny_cfg, "--batch-size", bs) == 0
    for i in range(5):
        a = (tmp_path / "bs1" / f"{i}.png").read_bytes()
        b = (tmp_path / "bs4" / f"{i}.png").read_bytes()
        assert a == b, f"face {i} differs between batch sizes 1 and 4"


def test_overwrite_is_refused_without_the_flag(tiny_cfg, tmp_path):
    src = _faces(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"user's file")
    assert _run("-i", src, "-o", out, "--aligned", "--cfg", tiny_cfg) == 0
    assert (out / "a.png").read_bytes() == b"user's file"
    assert _run("-i", src, "-o", out, "--aligned", "--cfg", tiny_cfg, "--overwrite") == 0
    assert (out / "a.png").read_bytes() != b"user's file"


def test_recursive_folders_and_name_collisions(tiny_cfg, tmp_path):
    src = _faces(tmp_path / "in", ["a.png", "a.jpg", "sub/b.png", "sub/deeper/c.png"])
    out = tmp_path / "out"
    assert _run("-i", src, "-o", out, "--aligned", "--cfg", tiny_cfg, "--recursive") == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["a_jpg.png", "a_png.png", "sub/b.png", "sub/deeper/c.png"]
    flat = tmp_path / "flat"
    assert _run("-i", src, "-o", flat, "--aligned", "--cfg", tiny_cfg) == 0
    assert sorted(p.name for p in flat.rglob("*.png")) == ["a_jpg.png", "a_png.png"]


def test_dry_run_prints_the_plan_and_builds_nothing(tiny_cfg, tmp_path, capsys):
    src = _faces(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    assert _run("-i", src, "-o", out, "--aligned", "--cfg", tiny_cfg, "--dry-run", "--eta", 0.25, "seed=7") == 0
    text = capsys.readouterr().out
    assert "eta: 0.25" in text and "seed: 7" in text and "a.png" in text
    assert not out.exists()


def test_bad_inputs_are_reported_and_the_rest_goes_on(tiny_cfg, tmp_path, capsys):
    src = _faces(tmp_path / "in", ["good.png"])
    (src / "empty.png").write_bytes(b"")
    (src / "text.jpg").write_text("not an image")
    good = (src / "good.png").read_bytes()
    (src / "truncated.png").write_bytes(good[: len(good) // 2])
    _faces(src, ["tiny.png"], size=8)
    rgba = np.concatenate([np.full((32, 32, 3), 120, np.uint8), np.full((32, 32, 1), 128, np.uint8)], 2)
    import cv2
    cv2.imwrite(str(src / "alpha.png"), rgba)
    cv2.imwrite(str(src / "grey.png"), np.full((32, 32), 90, np.uint8))
    cv2.imwrite(str(src / "deep.png"), np.full((32, 32, 3), 30000, np.uint16))
    out = tmp_path / "out"
    assert _run("-i", src, "-o", out, "--aligned", "--cfg", tiny_cfg) == 1
    err = capsys.readouterr().err
    for name in ("empty.png", "text.jpg", "truncated.png", "tiny.png"):
        assert name in err and not (out / name).exists()
    assert "alpha" in err.lower()
    for name in ("good.png", "alpha.png", "grey.png", "deep.png"):
        assert (out / name).is_file(), name
    assert "failed 4" in err


@pytest.mark.parametrize("case", ["missing", "empty", "same"])
def test_clear_errors_before_any_model_is_built(tmp_path, capsys, case):
    (tmp_path / "empty").mkdir()
    _faces(tmp_path / "faces", ["a.png"])
    args = {"missing": (tmp_path / "nope", tmp_path / "o"), "empty": (tmp_path / "empty", tmp_path / "o"),
            "same": (tmp_path / "faces", tmp_path / "faces")}[case]
    # The official preset's weights are absent here: reaching model building would be a WeightsError.
    assert _run("-i", args[0], "-o", args[1], "--aligned", "--no-download",
                "--weights-dir", tmp_path / "w") == 2
    err = capsys.readouterr().err
    assert {"missing": "does not exist", "empty": "no images", "same": "must differ"}[case] in err


def test_missing_weights_and_bad_config_values(tiny_cfg, tmp_path, capsys):
    src = _faces(tmp_path / "in", ["a.png"])
    assert _run("-i", src, "-o", tmp_path / "o", "--aligned", "--no-download", "--weights-dir", tmp_path / "w",
                "--cfg", "difface_ffhq512") == 2
    err = capsys.readouterr().err
    assert "swinir_restoration512_L1.pth" in err and "iddpm_ffhq512_ema500000.pth" in err and "by hand" in err
    assert _run("-i", src, "-o", tmp_path / "o", "--aligned", "--cfg", tiny_cfg, "--start-step", 1000) == 2
    assert "sampling.start_step" in capsys.readouterr().err
    assert _run("-i", src, "-o", tmp_path / "o", "--aligned", "--cfg", tiny_cfg, "no_such_key=1") == 2
    assert "no_such_key" in capsys.readouterr().err


def test_help_runs():
    proc = subprocess.run([sys.executable, str(REPO / "inference.py"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--start-step" in proc.stdout and "--num-samples" in proc.stdout


def test_missing_registry_weights_are_downloaded_and_verified(registry_cfg, serve_weights, tmp_path):
    """Registry names resolve under --weights-dir and download from a server on 127.0.0.1."""
    cfg, served = registry_cfg
    with serve_weights(served):
        src = _faces(tmp_path / "in", ["a.png"])
        weights = tmp_path / "weights"
        assert _run("-i", src, "-o", tmp_path / "out", "--aligned", "--cfg", cfg, "--weights-dir", weights) == 0
        assert (weights / "estimator" / "swinir_restoration512_L1.pth").is_file()
        assert (weights / "diffusion" / "iddpm_ffhq512_ema500000.pth").is_file()
        assert not list(weights.rglob("*.part"))
        assert (tmp_path / "out" / "a.png").is_file()


# ---- whole photos ---------------------------------------------------------------------------

def test_whole_photos_faces_are_restored_and_pasted(tiny_cfg, tmp_path, face_images):
    import shutil

    from datapipe.image_io import read_image
    src = tmp_path / "photos"
    src.mkdir()
    shutil.copy(face_images / "lq_whole" / "dfdnet_testwhole" / "test1.jpg", src)
    shutil.copy(face_images / "lq_whole" / "codeformer_whole_imgs" / "00.jpg", src)  # four people
    grey = (read_image(src / "test1.jpg").mean(0) * 255).numpy().astype(np.uint8)
    import cv2
    cv2.imwrite(str(src / "grey.png"), grey)
    cv2.imwrite(str(src / "landscape.png"), np.tile(np.linspace(0, 255, 300, dtype=np.uint8), (200, 1)))
    cv2.imwrite(str(src / "dot.png"), np.zeros((1, 1, 3), np.uint8))
    out = tmp_path / "out"
    assert _run("-i", src, "-o", out, "--cfg", tiny_cfg, "--save-faces", "--draw-box", "--allow-downscale") == 1
    manifest = json.loads(next(out.glob("manifest_*.json")).read_text())
    records = {Path(r["input"]).name: r for r in manifest["images"]}
    assert len(records["test1.jpg"]["faces"]) >= 1 and len(records["grey.png"]["faces"]) >= 1
    assert len(records["00.jpg"]["faces"]) >= 4
    assert records["landscape.png"]["status"] == "no face" and records["landscape.png"]["faces"] == []
    dot = records.pop("dot.png")  # a 1x1 image holds no face: refused, not enlarged into a 1024x1024 output
    assert dot["status"] == "failed" and "too small to hold a face" in dot["error"]
    assert not (out / "restored_image" / "dot.png").exists()
    for name, record in records.items():
        w, h = record["size"]
        factor = max(1.0, 512 / min(w, h))
        expected = (round(h * factor) * 2, round(w * factor) * 2)
        assert read_image(out / "restored_image" / (Path(name).stem + ".png")).shape[-2:] == expected, name
    assert (out / "cropped_faces" / "00_00.png").is_file() and (out / "restored_faces" / "00_03.png").is_file()
    grey_out = read_image(out / "restored_image" / "grey.png")
    assert torch.equal(grey_out[0], grey_out[1]) and torch.equal(grey_out[1], grey_out[2]), "grey input, tinted output"
    # faces of several photos in one batch (4 + 1 + 1 faces, photos without a face between): same files
    batched = tmp_path / "batched"
    assert _run("-i", src, "-o", batched, "--cfg", tiny_cfg, "--save-faces", "--draw-box", "--allow-downscale",
                "--batch-size", 3) == 1
    files = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert len(files) > 10 and files == sorted(p.relative_to(batched) for p in batched.rglob("*.png"))
    for path in files:
        assert (out / path).read_bytes() == (batched / path).read_bytes(), path


def test_whole_photo_limits_and_missing_detector(tiny_cfg, tmp_path, capsys):
    src = _faces(tmp_path / "in", ["big.png"], size=100)
    assert _run("-i", src, "-o", tmp_path / "o", "--cfg", tiny_cfg, "--max-pixels", 5000) == 1
    assert "megapixels" in capsys.readouterr().err
    try:
        import facexlib  # noqa: F401
    except ImportError:
        assert _run("-i", src, "-o", tmp_path / "o2", "--cfg", tiny_cfg, "--detector", "retinaface") == 2
        assert "facexlib" in capsys.readouterr().err


def test_face_detectors_are_pooled_one_per_concurrent_use(tiny_cfg):
    import threading

    import difface
    restorer = difface.Restorer(str(tiny_cfg), device="cpu")
    with restorer.face_detector() as first:
        pass
    seen = []

    def use():
        with restorer.face_detector() as detector:
            seen.append(detector)

    worker = threading.Thread(target=use)
    worker.start()
    worker.join()
    assert seen == [first], "a thread taking its turn reuses the idle detector (no new 120 MB per thread)"
    with restorer.face_detector() as a, restorer.face_detector() as b:
        assert a is first and b is not first, "two at once: two detectors"
    with restorer.face_detector() as c, restorer.face_detector() as d, restorer.face_detector() as e:
        assert {id(c), id(d)} == {id(a), id(b)} and e not in (a, b)
    other = difface.Restorer(str(tiny_cfg), device="cpu", det_threshold=0.5)
    with other.face_detector() as detector:
        assert detector.score_threshold == 0.5


# ---- inpainting -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_inpaint_cfg(tiny_cfg, tmp_path_factory) -> Path:
    from tests.test_inpainting import TINY_LAMA
    root = tmp_path_factory.mktemp("tiny_inpaint")
    torch.save(build_network("lama", TINY_LAMA).state_dict(), root / "lama.pth")
    cfg = yaml.safe_load(tiny_cfg.read_text())
    cfg.update(task="inpainting", name="tiny inpainting model",
               estimator={"name": "lama", "params": TINY_LAMA, "weights": str(root / "lama.pth")})
    cfg["sampling"].update(start_step=480, eta=1.0)
    path = root / "inpaint.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_inpainting_black_holes_white_scribbles_and_mask_files(tiny_inpaint_cfg, tmp_path, face_images, capsys):
    from datapipe.image_io import read_image
    from datapipe.mask_io import detect_black_holes, detect_white_scribbles

    black = face_images / "masked" / "difface_inpainting_256"
    out = tmp_path / "black"
    assert _run("-i", black, "-o", out, "--aligned", "--cfg", tiny_inpaint_cfg) == 0
    for src in sorted(black.glob("*.png")):
        y, res = read_image(src), read_image(out / src.name)
        known = detect_black_holes(y).expand_as(y) == 0
        assert torch.equal(res[known], (y[known] * 255).round() / 255), f"{src.name}: known pixels changed"
        assert (res[~known] > 0).float().mean() > 0.5, f"{src.name}: the hole was not filled"

    white = face_images / "masked" / "codeformer_masked_faces"
    out = tmp_path / "white"
    assert _run("-i", white, "-o", out, "--aligned", "--cfg", tiny_inpaint_cfg, "--mask-style", "white") == 0
    for src in sorted(white.glob("*.png")):
        hole = detect_white_scribbles(read_image(src)).expand(3, -1, -1) == 1
        assert (read_image(out / src.name)[hole] < 0.98).float().mean() > 0.5, f"{src.name}: scribbles kept"

    faces = _faces(tmp_path / "faces", ["a.png", "b.png", "c.png", "d.png"])
    masks = tmp_path / "masks"
    masks.mkdir()
    hole = np.zeros((32, 32), np.uint8)
    hole[8:20, 8:24] = 255
    import cv2
    cv2.imwrite(str(masks / "a.png"), hole)
    cv2.imwrite(str(masks / "b.png"), np.zeros((32, 32), np.uint8))      # covers nothing
    cv2.imwrite(str(masks / "c.png"), np.full((32, 32), 255, np.uint8))  # covers everything
    cv2.imwrite(str(masks / "d.png"), np.zeros((16, 16), np.uint8))      # wrong size
    out = tmp_path / "files"
    assert _run("-i", faces, "-o", out, "--aligned", "--cfg", tiny_inpaint_cfg, "--mask", masks) == 1
    err = capsys.readouterr().err
    assert (out / "a.png").is_file() and not any((out / f"{n}.png").exists() for n in "bcd")
    for name in ("b.png", "c.png", "d.png"):
        assert name in err


def test_task_inpainting_selects_the_official_inpainting_preset(tmp_path, capsys):
    src = _faces(tmp_path / "in", ["a.png"])
    assert _run("-i", src, "-o", tmp_path / "o", "--aligned", "--task", "inpainting", "--dry-run") == 0
    text = capsys.readouterr().out
    assert "lama_inpainting256" in text and "start_step: 480" in text and "eta: 1.0" in text
    assert _run("-i", src, "-o", tmp_path / "o", "--task", "inpainting", "--dry-run") == 2
    assert "--aligned" in capsys.readouterr().err


def test_help_names_every_registered_sampler():
    """--help keeps torch out (no registry import), so its sampler list must follow the registry."""
    from models.samplers import SAMPLERS
    text = subprocess.run([sys.executable, str(REPO / "inference.py"), "--help"], capture_output=True, text=True).stdout
    import re
    block = re.search(r"--sampler NAME\s+(.*?)\n  -", text, re.S).group(1)
    assert set(re.findall(r"\b(?:ddim|ddpm|dpmpp\w*)\b", block)) == set(SAMPLERS), block

