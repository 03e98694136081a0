"""trainer.py as a user runs it: config paths that do not depend on the working folder."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training import CheckpointStore, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "train"
TINY = str(CONFIGS / "tiny_estimator.yaml")
QUIET = ["log.tensorboard=false", "log.val_every=0", "log.log_every=0"]

pytestmark = pytest.mark.usefixtures("one_thread")


def steps(out: Path) -> list[int]:
    return [s for s, _ in CheckpointStore(out / "ckpts", 0).steps()]


# ---- config paths -------------------------------------------------------------------------------

PATH_KEYS = ("root", "file_list", "lq_root", "hq_root")


def data_paths(cfg) -> dict[str, str]:
    found = {}
    for split in ("train", "val"):
        block = getattr(cfg.data, split)
        for key in PATH_KEYS:
            if block is not None and getattr(block, key) is not None:
                found[f"data.{split}.{key}"] = getattr(block, key)
    return found


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_config_paths_are_the_same_from_any_folder_and_lie_in_the_repository(name, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    from_root = load_config(CONFIGS / f"{name}.yaml")
    monkeypatch.chdir(tmp_path)
    elsewhere = load_config(f"{os.path.relpath(CONFIGS, tmp_path)}/{name}.yaml")
    assert from_root == elsewhere
    paths = data_paths(elsewhere)
    assert paths, "every shipped config names its data"
    for key, value in paths.items():
        assert Path(value).is_absolute() and Path(value).is_relative_to(REPO), (key, value)
    if name.startswith("tiny_"):  # they train on the bundled example faces, as they are
        assert set(paths.values()) == {str(REPO / "examples" / "faces")}


def test_relative_paths_in_a_config_file_follow_the_file_and_on_the_command_line_the_working_folder(
        tmp_path, monkeypatch):
    (tmp_path / "exp").mkdir()
    mine = tmp_path / "exp" / "mine.yaml"
    mine.write_text("data:\n  train: {name: hq_images, root: faces}\n"
                    "  val: {name: paired, lq_root: ../test/lq, hq_root: /abs/hq}\n"
                    "model: {name: swinir, weights: w/start.safetensors}\nout_dir: runs/mine\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config("exp/mine.yaml")
    assert cfg.data.train.root == str(tmp_path / "exp" / "faces")
    assert cfg.data.val.lq_root == str(tmp_path / "test" / "lq") and cfg.data.val.hq_root == "/abs/hq"
    assert cfg.model.weights == str(tmp_path / "exp" / "w" / "start.safetensors")
    assert cfg.out_dir == "runs/mine"  # an output: relative to the working folder
    given = load_config("exp/mine.yaml", ["data.train.root=here", "model.weights=v.safetensors"])
    assert given.data.train.root == "here" and given.model.weights == "v.safetensors"
    interpolated = load_config(CONFIGS / "tiny_prior.yaml", ["data.train.root=here"])
    assert interpolated.data.val.root == "here"  # ${data.train.root} follows the override


def test_a_tiny_config_trains_from_any_working_folder(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, str(REPO / "trainer.py"), "--cfg", TINY, "--out-dir", "out",
                           "--max-steps", "1", *QUIET], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert steps(tmp_path / "out") == [1] and (tmp_path / "out" / "export.safetensors").is_file()
