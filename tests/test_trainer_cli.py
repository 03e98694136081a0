"""trainer.py as a user runs it: the target of a resumed run, usage errors that leave no trace,
and config paths that do not depend on the working folder."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from trainer import Trainer, main
from training import CheckpointStore, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "train"
TINY = str(CONFIGS / "tiny_estimator.yaml")
QUIET = ["log.tensorboard=false", "log.val_every=0", "log.log_every=0"]

pytestmark = pytest.mark.usefixtures("one_thread")


def steps(out: Path) -> list[int]:
    return [s for s, _ in CheckpointStore(out / "ckpts", 0).steps()]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- the target of a resumed run ----------------------------------------------------------------

def interrupt_at(monkeypatch, step: int) -> None:
    """SIGINT arrives during step ``step + 1``: the run saves that step and stops."""
    real = Trainer.train_step

    def interrupted(self, batch):
        if self.step == step:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, batch)

    monkeypatch.setattr(Trainer, "train_step", interrupted)


def test_resume_keeps_the_target_of_the_run_unless_a_new_one_is_given(faces, tmp_path, monkeypatch):
    run = ["--cfg", TINY, f"data.train.root={faces}", "--out-dir", str(tmp_path), "--save-every", "1000", *QUIET]
    assert load_config(TINY).max_steps == 10  # the config's target; this run asks for 6
    interrupt_at(monkeypatch, 2)
    assert main([*run, "--max-steps", "6"]) == 128 + signal.SIGINT and steps(tmp_path) == [3]
    monkeypatch.undo()

    assert main([*run, "--resume", "auto"]) == 0  # no target given: the run's own, 6
    assert steps(tmp_path) == [3, 6]
    log = (tmp_path / "train.log").read_text()
    assert "target max_steps=6: the resumed run's" in log and "config says 10" in log
    assert "max_steps = " not in log  # not reported as a changed hyper-parameter
    assert OmegaConf.load(tmp_path / "config.yaml").max_steps == 6
    assert OmegaConf.create(CheckpointStore.load(tmp_path / "ckpts" / "step_00000006.pt")["config"]).max_steps == 6

    assert main([*run, "--resume", "auto", "--max-steps", "8"]) == 0  # a new target, given explicitly
    assert steps(tmp_path) == [6, 8]
    assert "target max_steps=8: from the command line (the resumed run's was 6)" in (tmp_path / "train.log").read_text()

    assert main([*run, "--resume", "auto", "max_steps=9"]) == 0  # the config key counts as explicit too
    assert steps(tmp_path) == [8, 9]


def test_a_run_already_at_its_target_says_so(faces, tmp_path):
    run = ["--cfg", TINY, f"data.train.root={faces}", "--out-dir", str(tmp_path), *QUIET]
    assert main([*run, "--max-steps", "3"]) == 0
    assert main([*run, "--resume", "auto"]) == 0
    assert steps(tmp_path) == [3]
    assert "already at step 3, the target: nothing to train" in (tmp_path / "train.log").read_text()


# ---- usage errors leave no trace ----------------------------------------------------------------

USAGE_ERRORS = {
    "bad argument": ["--max-steps", "many"],
    "unknown key": ["data.train.rooot=x"],
    "bad value": ["amp=fp8"],
    "missing data folder": ["data.train.root={tmp}/nowhere"],
    "empty data folder": ["data.train.root={tmp}/empty"],
    "batch larger than the data": ["data.train.root={faces}", "data.batch_size=16", "data.micro_batch=16"],
    "missing --resume file": ["data.train.root={faces}", "--resume", "{tmp}/step_00000002.pt"],
    "missing weights file": ["data.train.root={faces}", "model.weights={tmp}/none.safetensors"],
}


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS) + ["missing config file"])
def test_usage_errors_create_no_run_folder(case, faces, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    cfg = str(tmp_path / "nope.yaml") if case == "missing config file" else TINY
    extra = [a.format(tmp=tmp_path, faces=faces) for a in USAGE_ERRORS.get(case, [])]
    try:
        code = main(["--cfg", cfg, "--out-dir", str(out), *QUIET, *extra])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and "error:" in err and "Traceback" not in err, err
    assert not out.exists(), f"{case}: {sorted(p.name for p in out.rglob('*'))}"


def test_a_checkpoint_of_another_network_is_an_error_line(faces, tmp_path, capsys):
    prior = tmp_path / "prior"
    assert main(["--cfg", str(CONFIGS / "tiny_prior.yaml"), f"data.train.root={faces}", "--out-dir", str(prior),
                 "--max-steps", "1", *QUIET]) == 0
    out = tmp_path / "out"
    code = main(["--cfg", TINY, f"data.train.root={faces}", "--out-dir", str(out), *QUIET,
                 "--resume", str(prior / "ckpts" / "step_00000001.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "does not fit the network of this config (swinir)" in err and "Traceback" not in err, err
    assert not out.exists()


def test_refusing_an_existing_run_folder_touches_nothing_in_it(faces, tmp_path, capsys):
    run = ["--cfg", TINY, f"data.train.root={faces}", "--out-dir", str(tmp_path), "--max-steps", "2", *QUIET]
    assert main(run) == 0
    (tmp_path / "train.log").unlink()  # e.g. a folder made by another tool, or a log moved away
    (tmp_path / "ckpts" / ".step_00000003.pt.ab12.tmp").write_bytes(b"partial")
    before = tree(tmp_path)
    assert main(run) == 2
    err = capsys.readouterr().err
    assert "already holds checkpoints" in err and "--resume auto" in err
    assert tree(tmp_path) == before


def test_a_run_that_starts_logs_what_came_before_its_folder(faces, tmp_path):
    """Lines logged while the run is checked (the resume source, skipped checkpoints) reach
    train.log, which is only created once the run starts."""
    run = ["--cfg", TINY, f"data.train.root={faces}", "--out-dir", str(tmp_path), *QUIET, "--save-every", "1"]
    assert main([*run, "--max-steps", "2"]) == 0
    newest = tmp_path / "ckpts" / "step_00000002.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    assert main([*run, "--max-steps", "3", "--resume", "auto"]) == 0
    log = (tmp_path / "train.log").read_text()
    assert "skipping checkpoint" in log and "resumed from" in log and "step_00000001.pt" in log


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
