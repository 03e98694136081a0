"""scripts/reproduce_small.py end to end on the tiny random-weight model (32x32, 4 faces)."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _script():
    """The script as a module (run in-process: no second interpreter start)."""
    if "reproduce_small" not in sys.modules:
        spec = importlib.util.spec_from_file_location("reproduce_small", REPO / "scripts" / "reproduce_small.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["reproduce_small"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["reproduce_small"]


def _faces(folder: Path, count: int = 4, size: int = 32) -> None:
    """Smooth random colour images (low-frequency patterns), so the degradations change them."""
    from datapipe.image_io import write_image
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        f = rng.uniform(1, 4, size=(3, 2))
        img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (f[c, 0] * xx + f[c, 1] * yy) + i) for c in range(3)], -1)
        write_image(folder / f"face_{i}.png", (img * 255).round().astype(np.uint8))


def _mild_estimator(path: Path, cfg: Path) -> None:
    """Other random weights for the tiny config's estimator network."""
    import yaml
    from models import build_network
    torch.manual_seed(1)
    torch.save(build_network("swinir", yaml.safe_load(cfg.read_text())["estimator"]["params"]).state_dict(), path)


def _all_finite(obj) -> bool:
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_all_finite(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


@pytest.fixture(scope="module")
def run(tiny_cfg, tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce_small")
    _faces(root / "heldout")
    _mild_estimator(root / "mild.pth", tiny_cfg)
    severe = root / "severe.yaml"  # a bare degradation block for 32 px images
    severe.write_text("blur_kernel_size: 9\nblur_sigma: [1.0, 2.0]\ndownsample_range: [3.0, 6.0]\n"
                      "noise_range: [10.0, 25.0]\njpeg_range: [20.0, 60.0]\n")
    out = root / "out"
    code = _script().main(["--heldout", root / "heldout", "--out", out, "--cfg", tiny_cfg, "--device", "cpu",
                           "--mild-estimator", root / "mild.pth", "--severe-from", severe,
                           "--n-values", "0,200", "--steps-values", "4,2", "--diversity-samples", 3,
                           "--diversity-images", 2, "--grid-images", 3, "--batch-size", 3])
    return code, out


def test_writes_every_output(run):
    code, out = run
    assert code == 0
    for name in ("results.md", "results.json", "tradeoff.png", "steps.png", "grid.png", "diversity.png"):
        assert (out / name).stat().st_size > 500, name
    assert sorted(p.name for p in (out / "lq").glob("*.png")) == [f"face_{i}.png" for i in range(4)]
    assert len(list((out / "lq_severe").glob("*.png"))) == 4
    md = (out / "results.md").read_text()
    for text in ("## 1.", "## 2.", "## 3.", "## 4.", "DifFace N = 200", "biased upward", "tiny test model"):
        assert text in md, text


def test_json_structure_and_finite_numbers(run):
    report = json.loads((run[1] / "results.json").read_text())
    assert {"meta", "tradeoff", "robustness", "diversity", "steps"} <= set(report)
    assert _all_finite(report)
    rows = report["tradeoff"]["rows"]
    assert [r["N"] for r in rows] == [None, 0, 200]  # LQ, estimator (N = 0), DifFace
    assert rows[2]["evaluations"] == 3  # the tiny config's sampling.steps
    for row in rows + report["robustness"]["rows"] + report["steps"]["rows"]:
        assert {"psnr", "ssim", "fid"} <= set(row) and len(row["per_image"]["psnr"]) == 4
    assert [r["label"] for r in report["robustness"]["rows"]] == [
        "severe degraded input (LQ)", "mild estimator alone", "mild estimator + DifFace N = 400",
        "config estimator alone", "config estimator + DifFace N = 400"]
    assert report["robustness"]["degradation"]["blur_kernel_size"] == 9
    steps = report["steps"]["rows"]
    assert [r["steps"] for r in steps] == [4, 2] and [r["evaluations"] for r in steps] == [4, 2]
    assert all(r["seconds_per_image"] > 0 for r in steps)


def test_difface_samples_differ_while_the_estimator_does_not(run):
    diversity = json.loads((run[1] / "results.json").read_text())["diversity"]
    assert diversity["samples"] == 3 and len(diversity["per_image"]) == 2
    assert diversity["difface"] > 0
    assert diversity["estimator"] == 0


def test_existing_results_are_not_overwritten_without_the_flag(run, tiny_cfg):
    out = run[1]
    before = (out / "results.json").read_text()
    assert _script().main(["--heldout", out.parent / "heldout", "--out", out, "--cfg", tiny_cfg]) == 2
    assert (out / "results.json").read_text() == before


def test_lq_set_is_fixed_by_the_seed(run, tmp_path):
    """The degraded inputs depend on (seed, file name) only: a second draw is identical."""
    module = _script()
    out = run[1]
    from datapipe.image_io import read_image
    faces = module.load_heldout(out.parent / "heldout", 32, None)
    config = module.degradation_config(str(REPO / "configs" / "train" / "demo_estimator.yaml"))
    lq = module.degrade(faces, config, 0, "standard", tmp_path)
    assert torch.equal(lq[2], read_image(out / "lq" / "face_2.png"))


def test_bad_settings_fail_before_building(tiny_cfg, tmp_path):
    module = _script()
    _faces(tmp_path / "heldout", count=2)
    common = ["--heldout", tmp_path / "heldout", "--out", tmp_path / "out", "--cfg", tiny_cfg]
    assert module.main(common + ["--only", "5"]) == 2
    assert module.main(common + ["--steps-values", "500"]) == 2  # more steps than N = 400
    assert module.main(common + ["--mild-estimator", tmp_path / "missing.pth"]) == 2
    assert module.main(common + ["--dry-run", "--mild-estimator", "none"]) == 0
    assert not (tmp_path / "out").exists()
