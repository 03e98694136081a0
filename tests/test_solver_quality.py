"""scripts/solver_quality.py: the selection rules and the paired bootstrap, on synthetic scores."""
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _script():
    if "solver_quality" not in sys.modules:
        spec = importlib.util.spec_from_file_location("solver_quality", REPO / "scripts" / "solver_quality.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["solver_quality"] = module
        spec.loader.exec_module(module)
    return sys.modules["solver_quality"]


def _row(label, evaluations, fid, kid, psnr, sampler="dpmpp_2m", dtype="fp32", **extra):
    return dict(label=label, evaluations=evaluations, fid=fid, kid_x1000=kid, psnr=psnr, sampler=sampler,
                dtype=dtype, **extra)


def test_choose_takes_the_fewest_evaluations_no_worse_than_the_reference():
    sq = _script()
    ref = _row("DDIM", 100, 110.0, 40.0, 18.9, sampler="ddim")
    rows = [_row("K = 8", 8, 111.0, 39.0, 18.9),  # FID worse
            _row("K = 10", 10, 109.0, 39.0, 18.6),  # PSNR 0.3 dB below
            _row("bf16 K = 10", 10, 100.0, 30.0, 19.0, dtype="bf16"),  # not an fp32 row
            _row("K = 12", 12, 109.5, 40.0, 18.75),
            _row("K = 15", 15, 105.0, 35.0, 19.0)]
    assert sq.choose(ref, rows, 0.2)["label"] == "K = 12"
    assert sq.choose(ref, rows[:3], 0.2) is None


def test_within_noise_reads_the_bootstrap_intervals():
    sq = _script()
    rows = [_row("K = 8", 8, 0, 0, 0, kid_delta_ci=[0.5, 9.0], psnr_delta_ci=[-0.1, 0.1]),  # KID surely worse
            _row("K = 10", 10, 0, 0, 0, kid_delta_ci=[-1.0, 6.0], psnr_delta_ci=[-0.5, -0.3]),  # PSNR surely lower
            _row("K = 12", 12, 0, 0, 0, kid_delta_ci=[-1.0, 6.0], psnr_delta_ci=[-0.3, -0.1],
                 fid_delta_ci=[0.4, 5.0]),  # FID surely worse (where bootstrapped)
            _row("K = 15", 15, 0, 0, 0, kid_delta_ci=[-1.0, 6.0], psnr_delta_ci=[-0.3, -0.1],
                 fid_delta_ci=[-0.4, 5.0])]
    assert sq.within_noise(rows, 0.2)["label"] == "K = 15"
    assert sq.within_noise(rows[:3], 0.2) is None


def test_paired_bootstrap_interval_is_zero_for_a_copy_and_positive_for_a_shifted_set():
    sq = _script()
    rng = np.random.default_rng(0)
    hq = rng.normal(size=(200, 16))
    scores = sq.Scores.__new__(sq.Scores)
    scores.base = SimpleNamespace(reference=SimpleNamespace(features=hq))
    close = hq + 0.3 * rng.normal(size=hq.shape)
    psnr = rng.normal(20, 1, 200)
    scores.kept = {"ref": (psnr, close), "same": (psnr.copy(), close.copy()),
                   "far": (psnr - 1.0, close + 1.0)}
    ref = {"label": "ref"}
    same, far = {"label": "same"}, {"label": "far"}
    scores.compare(same, ref, reps=50, fid=True)
    scores.compare(far, ref, reps=50, fid=True)
    assert same["kid_delta_ci"] == [0.0, 0.0] and same["psnr_delta_ci"] == [0.0, 0.0]
    assert same["fid_delta_ci"] == [0.0, 0.0]
    assert far["kid_delta_ci"][0] > 0 and far["fid_delta_ci"][0] > 0 and np.allclose(far["psnr_delta_ci"], [-1, -1])


def test_saved_rows_are_read_back_only_with_the_same_settings(tmp_path, capsys):
    sq = _script()
    images = [np.full((4, 4, 3), i, dtype=np.uint8) for i in range(3)]
    settings = {"sampler": "dpmpp_2m", "timesteps": [400, 200, 0], "keys": ["a", "b", "c"], "eta": 0.0}
    path = tmp_path / "rows" / "N400 dpmpp_2m K = 3.npz"
    assert sq.load_row(path, settings) == (None, None)
    sq.save_row(path, settings, images, 0.25)
    back, seconds = sq.load_row(path, dict(settings))
    assert seconds == 0.25 and len(back) == 3 and all(np.array_equal(a, b) for a, b in zip(back, images))
    assert sq.load_row(path, dict(settings, timesteps=[400, 100, 0])) == (None, None)
    assert "other settings" in capsys.readouterr().err

