"""scripts/reproduce.py: the table pipeline end to end on a tiny model, and the Fig. 4 curves."""
import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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
    assert abs(alpha[400] - 0.193572 ** 0.5) < 1e-6  # sqrt(abar_400), docs/method.md#diffusion-schedule
    assert (np.diff(kappa) < 0).all() and (kappa[1:] < alpha[1:]).all()


def _ablation_n(tiny_cfg, out: Path, hq: Path, values: str) -> subprocess.CompletedProcess:
    return _reproduce("ablation-n", "--hq", hq, "--out", out, "--cfg", tiny_cfg, "--max-images", 2,
                      "--size", 64, "--metrics", "ssim,psnr", "--values", values, "--device", "cpu")


def test_ablation_n_table_on_a_tiny_model(tiny_cfg, tmp_path, face_images):
    proc = _ablation_n(tiny_cfg, tmp_path, face_images / "hq_aligned" / "celebahq_256", "100,300")
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "table.md").read_text()
    assert "| N | PSNR | SSIM |" in table  # the paper's names and order
    assert "| 100 |" in table and "| 300 |" in table and "n/a" not in table
    assert "- N: 100, 300" in table and "- model: tiny test model" in table and "- sampler: ddim" in table
    assert len(list((tmp_path / "N_300" / "restored").glob("*.png"))) == 2


def test_ablation_n_at_n_0_is_the_estimator_alone(tiny_cfg, tmp_path, face_images):
    proc = _ablation_n(tiny_cfg, tmp_path, face_images / "hq_aligned" / "celebahq_256", "0")
    assert "IndexError" not in proc.stderr  # reproduce.py now reports the crash instead of hiding it
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| 0 |" in (tmp_path / "table.md").read_text()


# ---- the orchestration, with the project's commands replaced by a recorder ----------------------

def _module():
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake(monkeypatch):
    """reproduce.py with call() recording commands and writing what each command would write."""
    module = _module()
    calls, scores = [], {"psnr": 30.0, "ssim": 0.8, "lpips": 0.2, "ids_arcface": 40.0, "lmd_dlib68": 3.0,
                         "fid": 50.0}

    def fake_call(script, *args, allowed=(0,)):
        args = [str(a) for a in args]
        calls.append((script, args))
        opt = dict(zip(args, args[1:]))
        if script.endswith("make_test_set.py"):
            (Path(opt["-o"]) / "lq").mkdir(parents=True, exist_ok=True)
        elif script == "inference.py":
            out = Path(opt["-o"])
            out.mkdir(parents=True, exist_ok=True)
            config = {"name": "fake model", "sampling": {"start_step": int(opt.get("--start-step", 400)),
                                                         "eta": 0.5, "sampler": "ddim", "steps": None}}
            (out / "manifest_1.json").write_text(json.dumps({"config": config}))
        elif script.endswith("evaluate.py"):
            out = Path(opt["--out"])
            out.mkdir(parents=True, exist_ok=True)
            summary = {k: {"mean": v, "n": 2, "weights": "w-" + k} for k, v in scores.items()}
            (out / "summary.json").write_text(json.dumps(summary))
        return 0

    monkeypatch.setattr(module, "call", fake_call)
    module.recorded, module.scores = calls, scores
    return module


def test_table_has_the_papers_columns_and_settings_and_cfg_and_arcface_are_passed(fake, tmp_path):
    code = fake.main(["celeba-test", "--hq", str(tmp_path), "--out", str(tmp_path / "r"), "--device", "cpu",
                      "--arcface", "arc.pth"])
    assert code == 0
    table = (tmp_path / "r" / "table.md").read_text()
    assert "| method | PSNR | SSIM | LPIPS | IDS | LMD | FID |" in table
    assert "| DifFace | 30.0000 | 0.8000 | 0.2000 | 40.0000 | 3.0000 | 50.0000 |" in table
    for line in ("- model: fake model", "- N: 400", "- eta: 0.5", "- sampler: ddim", "- steps: all grid points",
                 "- FID backbone: w-fid"):
        assert line in table, line
    inference = [a for s, a in fake.recorded if s == "inference.py"][0]
    assert inference[inference.index("--cfg") + 1] == "difface_ffhq512"
    evaluate = [a for s, a in fake.recorded if s.endswith("evaluate.py")][0]
    assert evaluate[evaluate.index("--arcface") + 1] == "arc.pth"


def test_inpainting_passes_its_own_cfg_explicitly(fake, tmp_path):
    (tmp_path / "testset" / "lq").mkdir(parents=True)
    assert fake.main(["inpainting", "--hq", str(tmp_path), "--out", str(tmp_path), "--device", "cpu"]) == 0
    inference = [a for s, a in fake.recorded if s == "inference.py"][0]
    assert inference[inference.index("--cfg") + 1] == "inpaint_ffhq256"


def test_columns_match_exactly_and_a_missing_one_fails_unless_allowed(fake, tmp_path, capsys):
    fake.scores.clear()
    fake.scores.update({"psnr_y": 31.0, "id_dlib": 0.4, "ssim": 0.8})  # neither 'psnr' nor 'id'
    args = ["celeba-test", "--hq", str(tmp_path), "--out", str(tmp_path / "r"), "--device", "cpu",
            "--metrics", "psnr,ssim,id", "--arcface", "arc.pth"]
    assert fake.main(args) == 1
    assert "not computed: PSNR (DifFace), IDS (DifFace)" in capsys.readouterr().err
    assert "| DifFace | n/a | 0.8000 | n/a |" in (tmp_path / "r" / "table.md").read_text()
    assert fake.main(args + ["--allow-missing"]) == 0


def test_ids_without_arcface_is_a_usage_error(fake, tmp_path, capsys):
    assert fake.main(["celeba-test", "--hq", str(tmp_path), "--out", str(tmp_path), "--metrics", "psnr,id"]) == 2
    assert "--arcface" in capsys.readouterr().err and not fake.recorded


def test_realworld_honours_max_images(fake, tmp_path):
    folder = tmp_path / "wider"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.png").write_bytes(b"x")
    code = fake.main(["realworld", "--set", f"wider={folder}", "--fid-ref", "ref.npz", "--out", str(tmp_path / "r"),
                      "--max-images", "2", "--device", "cpu"])
    assert code == 0
    inference = [a for s, a in fake.recorded if s == "inference.py"][0]
    staged = Path(inference[inference.index("-i") + 1])
    assert sorted(p.name for p in staged.iterdir()) == ["0.png", "1.png"]
    assert "| set | FID |" in (tmp_path / "r" / "table.md").read_text()


def test_a_crashing_step_is_fatal_with_its_message(tmp_path, capsys):
    module = _module()
    crash = tmp_path / "crash.py"
    crash.write_text("import sys\nprint('restoring...', file=sys.stderr)\n"
                     "raise RuntimeError('boom: CUDA out of memory')\n")
    with pytest.raises(module.StepFailed, match="exit code 1: .*boom: CUDA out of memory"):
        module.call(str(crash))
