"""scripts/reproduce.py: the tables on a tiny model (every printed command recomputes the same
files), the orchestration with the library replaced by recorders, and the Fig. 4 curves."""
import csv
import importlib.util
import json
import shlex
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf

import difface
import metrics.evaluation
from datapipe.image_io import read_image, tensor_to_uint8, write_image
from difface import cli

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def reproduce():
    return _script("reproduce")


def test_curves_are_written_and_contract(reproduce, tmp_path):
    assert reproduce.main(["curves", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "kappa_alpha.png").stat().st_size > 1000
    rows = list(csv.DictReader((tmp_path / "kappa_alpha.csv").open()))
    assert len(rows) == 1000
    kappa = np.array([float(r["kappa_N"]) for r in rows])
    alpha = np.array([float(r["alpha_N"]) for r in rows])
    assert abs(alpha[400] - 0.193572 ** 0.5) < 1e-6  # sqrt(abar_400), docs/method.md#diffusion-schedule
    assert (np.diff(kappa) < 0).all() and (kappa[1:] < alpha[1:]).all()


# ---- on a tiny model: the files are those the printed commands write ---------------------------

def _commands(stdout: str) -> dict[str, list[list[str]]]:
    """The printed '$ python SCRIPT ARGS' lines, by script name."""
    found: dict[str, list[list[str]]] = {}
    for line in stdout.splitlines():
        if line.startswith("$ python "):
            _, _, script, *args = shlex.split(line)
            found.setdefault(Path(script).name, []).append(args)
    return found


def _with(args: list[str], option: str, value) -> list[str]:
    args = list(args)
    args[args.index(option) + 1] = str(value)
    return args


def _same_files(a: Path, b: Path, pattern: str = "*.png") -> list[str]:
    names = sorted(p.name for p in a.glob(pattern))
    assert names and names == sorted(p.name for p in b.glob(pattern))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    return names


def _run(reproduce, tiny_cfg, face_images, out: Path, command: str, *extra: str) -> int:
    return reproduce.main([command, "--hq", str(face_images / "hq_aligned" / "celebahq_256"), "--out", str(out),
                           "--cfg", str(tiny_cfg), "--max-images", "2", "--size", "64", "--metrics", "ssim,psnr",
                           "--device", "cpu", *extra])


def test_celeba_test_files_are_what_the_printed_commands_write(reproduce, tiny_cfg, face_images, tmp_path,
                                                               capsys):
    out = tmp_path / "r"
    assert _run(reproduce, tiny_cfg, face_images, out, "celeba-test") == 0
    commands = _commands(capsys.readouterr().out)
    assert sorted(commands) == ["evaluate.py", "inference.py", "make_test_set.py"]
    [make], [infer], [score] = commands["make_test_set.py"], commands["inference.py"], commands["evaluate.py"]
    assert _script("make_test_set").main(_with(make, "-o", tmp_path / "set")) == 0
    _same_files(out / "testset" / "lq", tmp_path / "set" / "lq")
    assert infer[infer.index("--cfg") + 1] == str(tiny_cfg) and "--aligned" in infer
    assert cli.main(_with(infer, "-o", tmp_path / "cli")) == 0
    assert len(_same_files(out / "restored", tmp_path / "cli")) == 2  # byte for byte
    assert _script("evaluate").main(_with(score, "--out", tmp_path / "scores")) == 0
    ours, theirs = (json.loads((d / "summary.json").read_text()) for d in (out / "scores", tmp_path / "scores"))
    assert {k: v["mean"] for k, v in ours.items()} == {k: v["mean"] for k, v in theirs.items()}
    table = (out / "table.md").read_text()
    assert f"| DifFace | {ours['psnr']['mean']:.4f} | {ours['ssim']['mean']:.4f} |" in table
    assert "- N: 400" in table and "- steps: 3" in table  # the tiny preset's own sampling


def test_ablation_n_on_a_tiny_model(reproduce, tiny_cfg, face_images, tmp_path, capsys):
    out = tmp_path / "r"
    assert _run(reproduce, tiny_cfg, face_images, out, "ablation-n", "--values", "0,100") == 0
    table = (out / "table.md").read_text()
    assert "| N | PSNR | SSIM |" in table  # the paper's names and order
    assert "| 0 |" in table and "| 100 |" in table and "n/a" not in table
    assert "- N: 0, 100" in table and "- model: tiny test model" in table and "- sampler: ddim" in table
    assert OmegaConf.load(out / "N_100" / "restored" / "config.yaml").sampling.start_step == 100
    # an ablation value: the files of inference.py --start-step 100
    infer = [a for a in _commands(capsys.readouterr().out)["inference.py"] if "100" in a][0]
    assert infer[infer.index("--start-step") + 1] == "100"
    assert cli.main(_with(infer, "-o", tmp_path / "cli")) == 0
    names = _same_files(out / "N_100" / "restored", tmp_path / "cli")
    # N = 0 is the estimator alone: the estimate f(y) the library returns at the preset's N
    restorer = difface.Restorer(str(tiny_cfg), device="cpu")
    for name in names:
        estimate = restorer.restore(out / "testset" / "lq" / name, aligned=True).estimate
        assert np.array_equal(tensor_to_uint8(read_image(out / "N_0" / "restored" / name)), estimate)
        assert not np.array_equal(tensor_to_uint8(read_image(out / "N_100" / "restored" / name)), estimate)


# ---- the orchestration, with the library replaced by recorders ---------------------------------

class FakeRestorer:
    """Records what reproduce.py asks of difface.Restorer; every image restores to black."""
    built: list = []

    def __init__(self, cfg, device="auto", overrides=(), **kwargs):
        FakeRestorer.built.append(SimpleNamespace(cfg=cfg, device=device, overrides=list(overrides), prepared=[],
                                                  sampling=[]))
        self.record = FakeRestorer.built[-1]
        self.cfg = OmegaConf.create({"name": "fake model", "seed": 1, "num_samples": 1,
                                     "sampling": {"start_step": 400, "eta": 0.5, "sampler": "ddim", "steps": None}})
        self.notes = []

    def describe(self):
        return "fake"

    def sampling(self, **changes):
        if changes.get("start_step", 0) > 999:
            raise difface.ConfigError(f"sampling.start_step must be below 1000, got {changes['start_step']}")
        self.record.sampling.append(changes)
        return changes

    def prepare_aligned(self, image, name, mask=None):
        if "bad" in name:
            raise difface.InputError(f"{name}: cannot read")
        self.record.prepared.append((Path(image), mask))
        return name

    def restore_aligned(self, items, method):
        return [SimpleNamespace(samples=[np.zeros((8, 8, 3), np.uint8)]) for _ in items]


@pytest.fixture
def fake(reproduce, monkeypatch, tmp_path):
    """reproduce.py with difface.Restorer and metrics.evaluation.evaluate recording their calls;
    a test set of two images already in tmp_path/r/testset."""
    FakeRestorer.built = []
    scores, evaluations = {"psnr": 30.0, "ssim": 0.8, "lpips": 0.2, "ids_arcface": 40.0, "lmd_dlib68": 3.0,
                           "fid": 50.0}, []

    def fake_evaluate(cfg, log=print):
        evaluations.append(cfg)
        summary = {k: {"mean": v, "n": 2, "weights": "w-" + k} for k, v in scores.items()}
        return metrics.evaluation.EvalResult(summary, {}, [], 0)

    monkeypatch.setattr(difface, "Restorer", FakeRestorer)
    monkeypatch.setattr(metrics.evaluation, "evaluate", fake_evaluate)
    for sub in ("lq", "hq", "mask"):
        for name in ("a.png", "b.png"):
            write_image(tmp_path / "r" / "testset" / sub / name, np.zeros((8, 8, 3), np.uint8))
    reproduce.scores, reproduce.evaluations = scores, evaluations
    return reproduce


def _main(fake, tmp_path, *args) -> int:
    return fake.main([*args, "--out", str(tmp_path / "r"), "--device", "cpu"])


def test_table_has_the_papers_columns_and_settings_and_cfg_and_arcface_are_passed(fake, tmp_path):
    assert _main(fake, tmp_path, "celeba-test", "--hq", str(tmp_path), "--arcface", "arc.pth") == 0
    table = (tmp_path / "r" / "table.md").read_text()
    assert "| method | PSNR | SSIM | LPIPS | IDS | LMD | FID |" in table
    assert "| DifFace | 30.0000 | 0.8000 | 0.2000 | 40.0000 | 3.0000 | 50.0000 |" in table
    for line in ("- model: fake model", "- N: 400", "- eta: 0.5", "- sampler: ddim", "- steps: all grid points",
                 "- FID backbone: w-fid"):
        assert line in table, line
    [built] = FakeRestorer.built
    assert built.cfg == "difface_ffhq512" and built.device == "cpu"
    assert "batch_size=4" in built.overrides and "dtype=fp32" in built.overrides
    assert [p.name for p, _ in built.prepared] == ["a.png", "b.png"]
    assert sorted(p.name for p in (tmp_path / "r" / "restored").glob("*.png")) == ["a.png", "b.png"]
    [evaluated] = fake.evaluations
    assert evaluated.arcface == Path("arc.pth") and evaluated.gt == tmp_path / "r" / "testset" / "hq"


def test_inpainting_uses_its_own_cfg_and_the_test_sets_masks(fake, tmp_path):
    assert _main(fake, tmp_path, "inpainting", "--hq", str(tmp_path)) == 0
    [built] = FakeRestorer.built
    assert built.cfg == "inpaint_ffhq256" and "task=inpainting" in built.overrides
    assert [(p.name, m) for p, m in built.prepared] == [
        (n, tmp_path / "r" / "testset" / "mask" / n) for n in ("a.png", "b.png")]
    assert fake.evaluations[0].metrics == ["lpips", "fid"]


def test_ablation_builds_the_networks_once_and_sweeps_the_values(fake, tmp_path, capsys):
    assert _main(fake, tmp_path, "ablation-eta", "--hq", str(tmp_path), "--metrics", "psnr", "--values",
                 "0,1.0") == 0
    [built] = FakeRestorer.built
    assert built.sampling[-2:] == [{"eta": 0.0}, {"eta": 1.0}]
    assert "- eta: 0.0, 1.0" in (tmp_path / "r" / "table.md").read_text()
    assert (tmp_path / "r" / "eta_1.0" / "restored" / "a.png").is_file()
    assert "--eta 1.0" in capsys.readouterr().out


def test_bad_ablation_values_are_usage_errors_before_any_work(fake, tmp_path, capsys):
    assert _main(fake, tmp_path, "ablation-n", "--hq", str(tmp_path), "--metrics", "psnr",
                 "--values", "100,2000") == 2
    assert "start_step" in capsys.readouterr().err and not FakeRestorer.built[0].prepared
    with pytest.raises(SystemExit) as stop:
        _main(fake, tmp_path, "ablation-n", "--hq", str(tmp_path), "--values", "100,abc")
    assert stop.value.code == 2


def test_a_bad_image_fails_the_step_by_name_unless_allowed(fake, tmp_path, capsys):
    write_image(tmp_path / "r" / "testset" / "lq" / "bad.png", np.zeros((8, 8, 3), np.uint8))
    args = ["celeba-test", "--hq", str(tmp_path), "--metrics", "psnr,ssim"]
    assert _main(fake, tmp_path, *args) == 1
    err = capsys.readouterr().err
    assert "bad.png: cannot read" in err and "1 image(s) failed: bad.png" in err
    assert (tmp_path / "r" / "restored" / "b.png").is_file()  # the others were restored
    assert _main(fake, tmp_path, *args, "--allow-missing") == 0


def test_columns_match_exactly_and_a_missing_one_fails_unless_allowed(fake, tmp_path, capsys):
    fake.scores.clear()
    fake.scores.update({"psnr_y": 31.0, "id_dlib": 0.4, "ssim": 0.8})  # neither 'psnr' nor 'id'
    args = ["celeba-test", "--hq", str(tmp_path), "--metrics", "psnr,ssim,id", "--arcface", "arc.pth"]
    assert _main(fake, tmp_path, *args) == 1
    assert "not computed: PSNR (DifFace), IDS (DifFace)" in capsys.readouterr().err
    assert "| DifFace | n/a | 0.8000 | n/a |" in (tmp_path / "r" / "table.md").read_text()
    assert _main(fake, tmp_path, *args, "--allow-missing") == 0


def test_ids_without_arcface_is_a_usage_error(fake, tmp_path, capsys):
    assert _main(fake, tmp_path, "celeba-test", "--hq", str(tmp_path), "--metrics", "psnr,id") == 2
    assert "--arcface" in capsys.readouterr().err and not FakeRestorer.built


def test_realworld_honours_max_images(fake, tmp_path):
    folder = tmp_path / "wider"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.png").write_bytes(b"x")
    assert _main(fake, tmp_path, "realworld", "--set", f"wider={folder}", "--fid-ref", "ref.npz",
                 "--max-images", "2") == 0
    [built] = FakeRestorer.built
    assert [(p.parent.name, p.name) for p, _ in built.prepared] == [("input", "0.png"), ("input", "1.png")]
    assert fake.evaluations[0].fid_ref == Path("ref.npz") and fake.evaluations[0].gt is None
    assert "| set | FID |" in (tmp_path / "r" / "table.md").read_text()
