"""scripts/reproduce.py: the table pipeline end to end on a tiny model, and the Fig. 4 curves."""
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _reproduce(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "reproduce.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO)


def test_curves_are_written_and_contract(tmp_path):
    proc = _reproduce("curves", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "kappa_alpha.png").stat().st_size > 1000
    rows = list(csv.DictReader((tmp_path / "kappa_alpha.csv").open()))
    assert len(rows) == 1000
    kappa = np.array([float(r["kappa_N"]) for r in rows])
    alpha = np.array([float(r["alpha_N"]) for r in rows])
    assert abs(alpha[400] - 0.193572 ** 0.5) < 1e-6  # sqrt(abar_400), SPEC §2.7
    assert (np.diff(kappa) < 0).all() and (kappa[1:] < alpha[1:]).all()


def test_celeba_table_pipeline_on_a_tiny_model(tiny_cfg, tmp_path, shared_data):
    hq = shared_data / "hq_aligned" / "celebahq_1024_stargan_v2"
    proc = _reproduce("ablation-n", "--hq", hq, "--out", tmp_path, "--cfg", tiny_cfg, "--max-images", 2,
                      "--size", 64, "--metrics", "psnr,ssim", "--values", "100,300", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "table.md").read_text()
    assert "| 100 |" in table and "| 300 |" in table and "n/a" not in table
    assert len(list((tmp_path / "N_300" / "restored").glob("*.png"))) == 2
