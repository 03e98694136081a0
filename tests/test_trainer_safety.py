"""The trainer on a cluster: shipped tiny configs, rollback, unreadable checkpoints, hyper-parameters
on resume, divergence (lr 1e9, loss spikes, fp16 overflow), SIGTERM/SIGINT, user errors, logging."""
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainer import Trainer, TrainingDiverged, main, train
from training import CheckpointStore, LRFactor, ResumeError, load_config, weights_hash

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "train"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

pytestmark = pytest.mark.usefixtures("one_thread")


def make_cfg(faces: Path, out: Path, *overrides: str, name: str = "tiny_estimator"):
    return load_config(CONFIGS / f"{name}.yaml", [f"data.train.root={faces}", f"out_dir={out}", "log.log_every=0",
                                                  "log.tensorboard=false", "log.val_every=0", *overrides])


def steps(out: Path) -> list[int]:
    return [s for s, _ in CheckpointStore(out / "ckpts", 0).steps()]


def max_abs_weight(path: Path) -> float:
    state = CheckpointStore.load(path)
    return max(float(v.abs().max()) for v in state["model"].values() if v.is_floating_point())


# ---- the shipped tiny configs ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny_estimator", "tiny_prior", "tiny_inpainting"])
def test_tiny_configs_run_as_the_readme_shows(name, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the README's commands run from the repository root
    assert main(["--cfg", f"configs/train/{name}.yaml", "--out-dir", str(tmp_path), "--max-steps", "2"]) == 0
    assert (tmp_path / "export.safetensors").is_file() and steps(tmp_path) == [2]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*")), "TensorBoard is on in the tiny configs"


# ---- rollback and unreadable checkpoints -------------------------------------------------------

def test_rollback_moves_later_checkpoints_aside_and_prunes_only_its_lineage(faces, tmp_path):
    train(make_cfg(faces, tmp_path, "max_steps=6", "log.save_every=1", "log.keep_last=0"))
    assert steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    straight_4 = CheckpointStore.load(tmp_path / "ckpts" / "step_00000004.pt")
    rolled = train(make_cfg(faces, tmp_path, "max_steps=4", "log.save_every=1", "log.keep_last=2"),
                   resume=str(tmp_path / "ckpts" / "step_00000002.pt"))
    assert rolled.step == 4
    assert steps(tmp_path) == [3, 4]  # the new steps 3 and 4 are kept, nothing of the old run counted
    aside = tmp_path / "ckpts" / "rolled_back_after_step_00000002"
    assert sorted(p.name for p in aside.glob("step_*.pt")) == [f"step_{s:08d}.pt" for s in (3, 4, 5, 6)]
    assert sorted(p.name for p in aside.glob("ema_*")) == [f"ema_{s:08d}.safetensors" for s in (3, 4, 5, 6)]
    assert CheckpointStore.load(aside / "step_00000006.pt")["step"] == 6  # nothing lost
    again = Trainer(make_cfg(faces, tmp_path, "max_steps=4"), resume="auto")
    again.close()
    assert again.step == 4  # this run's step 4, not the old run's step 6
    now = again.net.state_dict()
    assert all(torch.equal(now[k], v) for k, v in straight_4["model"].items())  # same data, same seeds


def test_unreadable_step_checkpoints_fall_back_to_best_and_stale_temp_files_go(faces, tmp_path):
    cfg = make_cfg(faces, tmp_path, "max_steps=4", "log.save_every=2", "log.val_every=2", "log.keep_last=0")
    train(cfg)
    best_step = CheckpointStore.load(tmp_path / "ckpts" / "best.pt")["step"]
    for _, path in CheckpointStore(tmp_path / "ckpts", 0).steps():
        path.write_bytes(path.read_bytes()[:1000])  # all truncated
    stale = tmp_path / "ckpts" / ".step_00000006.pt.ab12.tmp"
    stale.write_bytes(b"partial")
    resumed = train(make_cfg(faces, tmp_path, "max_steps=6", "log.save_every=1", "log.keep_last=2",
                             "log.val_every=0"), resume="auto")
    assert resumed.step == 6 and not stale.exists()
    log = (tmp_path / "train.log").read_text()
    assert "falling back to" in log and "best.pt" in log
    assert steps(tmp_path)[-2:] == [5, 6]  # the new checkpoints survive pruning
    assert best_step in (2, 4)


def test_resume_auto_refuses_when_nothing_is_readable(faces, tmp_path):
    cfg = make_cfg(faces, tmp_path, "max_steps=2", "log.save_every=2")
    train(cfg)
    path = tmp_path / "ckpts" / "step_00000002.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ResumeError, match="every checkpoint .* is unreadable"):
        Trainer(cfg, resume="auto")


# ---- hyper-parameters on resume -----------------------------------------------------------------

def test_lr_given_on_resume_is_applied_and_logged(faces, tmp_path):
    train(make_cfg(faces, tmp_path, "max_steps=3", "log.save_every=3"))
    cfg = make_cfg(faces, tmp_path, "max_steps=3", "optim.lr=1.0e-3", "optim.weight_decay=0.01")
    resumed = Trainer(cfg, resume="auto")
    resumed.close()
    group = resumed.optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(1e-3 * LRFactor(cfg.optim)(3), rel=1e-12)
    assert group["weight_decay"] == 0.01 and resumed.scheduler.base_lrs == [1e-3]
    resumed.scheduler.step()  # the schedule continues from the new lr
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * LRFactor(cfg.optim)(4), rel=1e-12)
    log = (tmp_path / "train.log").read_text()
    assert "optim.lr = 0.001 from the config (the checkpoint's run had 0.002)" in log


# ---- divergence ---------------------------------------------------------------------------------

def test_lr_1e9_leaves_no_exploded_checkpoint_to_resume_from(faces, tmp_path):
    cfg = make_cfg(faces, tmp_path, "max_steps=6", "log.save_every=1", "optim.lr=1e9")
    with pytest.raises(TrainingDiverged) as info:
        train(cfg)
    # Every step's weights are suspect here, so --resume auto finds nothing to continue from.
    assert CheckpointStore(tmp_path / "ckpts", 0).steps() == []
    assert "no checkpoint from before the divergence" in str(info.value)
    moved = list((tmp_path / "ckpts").glob("diverged_after_step_*/step_*.pt"))
    assert moved, "the suspect checkpoints are kept aside, not deleted"
    assert max(max_abs_weight(p) for p in moved) > 100, "what was set aside had really blown up"


def test_the_checkpoint_from_before_a_loss_spike_is_not_pruned(faces, tmp_path):
    cfg = make_cfg(faces, tmp_path, "max_steps=7", "log.save_every=1", "log.keep_last=1")
    trainer = Trainer(cfg)
    real = trainer.objective

    class Spiky:
        inputs = real.inputs

        def __call__(self, model, batch, generator):
            terms = real(model, batch, generator)
            return {"loss": terms["loss"] * 1e4} if trainer.step == 4 else terms

    trainer.objective = Spiky()
    try:
        trainer.train()
    finally:
        trainer.close()
    # the loss of step 5 used the weights of step 4; keep_last=1 means at least 2 (one vouched for)
    assert steps(tmp_path) == [3, 6, 7]
    assert "loss spike at step 5" in (tmp_path / "train.log").read_text()


def test_fp16_overflow_skips_the_step_instead_of_stopping(faces, tmp_path):
    cfg = make_cfg(faces, tmp_path, "max_steps=3", "amp=fp16", "log.save_every=3")
    trainer = Trainer(cfg)
    real, seen = trainer.objective, {}

    class Overflow:
        inputs = real.inputs

        def __call__(self, model, batch, generator):
            terms = real(model, batch, generator)
            if trainer.step == 1:
                seen.setdefault("before", weights_hash(trainer.net))
                return {"loss": terms["loss"] * float("inf")}
            if trainer.step == 2:
                seen.setdefault("after", weights_hash(trainer.net))
            return terms

    trainer.objective = Overflow()
    try:
        scale = trainer.scaler.get_scale()
        trainer.train()
    finally:
        trainer.close()
    assert trainer.step == 3 and trainer.scaler.get_scale() < scale
    assert seen["after"] == seen["before"], "the overflowing update must not reach the weights"
    assert "overflowed" in (tmp_path / "train.log").read_text()


# ---- pre-emption --------------------------------------------------------------------------------

def test_sigterm_to_the_process_group_saves_the_current_step_and_resume_is_exact(faces, tmp_path):
    """SIGTERM to the whole process group, DataLoader workers included, as SLURM sends it."""
    common = ["log.save_every=1000", "log.keep_last=0", "data.num_workers=2"]
    out = tmp_path / "stopped"
    cmd = [sys.executable, str(REPO / "trainer.py"), "--cfg", str(CONFIGS / "tiny_estimator.yaml"),
           f"data.train.root={faces}", "--out-dir", str(out), "--max-steps", "1000", "log.log_every=1",
           "log.tensorboard=false", "log.val_every=0", *common]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline and "step 2 train" not in _read(out / "train.log"):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    (k,) = steps(out)
    assert 2 <= k < 1000
    resumed = train(make_cfg(faces, out, f"max_steps={k + 2}", *common), resume="auto")
    straight = train(make_cfg(faces, tmp_path / "straight", f"max_steps={k + 2}", *common))
    assert weights_hash(resumed.net) == weights_hash(straight.net)
    assert weights_hash(resumed.ema.model) == weights_hash(straight.ema.model)


def test_ctrl_c_saves_the_current_step_and_main_exits_130(faces, tmp_path, monkeypatch, capsys):
    real = Trainer.train_step

    def interrupted(self, batch):
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # arrives during step 4
        return real(self, batch)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    code = main(["--cfg", str(CONFIGS / "tiny_estimator.yaml"), f"data.train.root={faces}", "--out-dir",
                 str(tmp_path), "--max-steps", "50", "--save-every", "1000", "log.tensorboard=false",
                 "log.val_every=0"])
    assert code == 130 and steps(tmp_path) == [4]
    assert "SIGINT: stopped at step 4" in (tmp_path / "train.log").read_text()
    assert not (tmp_path / "export.safetensors").exists()  # not a finished run


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


# ---- user errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["missing root", "empty folder", "missing cfg", "batch too large"])
def test_user_errors_are_one_line_and_exit_2(case, faces, tmp_path, capsys):
    cfg, extra = str(CONFIGS / "tiny_estimator.yaml"), []
    if case == "missing root":
        extra = [f"data.train.root={tmp_path / 'nowhere'}"]
    elif case == "empty folder":
        (tmp_path / "empty").mkdir()
        extra = [f"data.train.root={tmp_path / 'empty'}"]
    elif case == "missing cfg":
        cfg = str(tmp_path / "nope.yaml")
    else:
        extra = [f"data.train.root={faces}", "data.batch_size=16", "data.micro_batch=16"]
    code = main(["--cfg", cfg, "--out-dir", str(tmp_path / "out"), "log.tensorboard=false", *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: "), err
    assert "Traceback" not in err


def test_a_full_disk_is_an_error_line_with_exit_2(faces, tmp_path, capsys, monkeypatch):
    def full(state, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("training.run.save_checkpoint", full)
    code = main(["--cfg", str(CONFIGS / "tiny_estimator.yaml"), f"data.train.root={faces}", "--out-dir",
                 str(tmp_path), "--max-steps", "2", "log.tensorboard=false", "log.val_every=0"])
    err = capsys.readouterr().err
    assert code == 2 and "\nerror: no space left on the device" in err and "Traceback" not in err, err


# ---- logging ------------------------------------------------------------------------------------

def test_run_summary_and_loss_averaged_over_the_log_window(faces, tmp_path, monkeypatch):
    losses = []
    real = Trainer.train_step

    def spy(self, batch):
        stats = real(self, batch)
        losses.append(stats["loss"])
        return stats

    monkeypatch.setattr(Trainer, "train_step", spy)
    train(make_cfg(faces, tmp_path, "max_steps=3", "log.log_every=3"))
    log = (tmp_path / "train.log").read_text()
    for words in ("parameters", "8 training images", "world size 1", "effective batch 4", "2 steps per epoch"):
        assert words in log, words
    logged = float(log.split("step 3 train loss=")[1].split()[0])
    assert logged == pytest.approx(sum(losses) / 3, rel=1e-4)
    assert logged != pytest.approx(losses[-1], rel=1e-3)


def test_tensorboard_purges_the_steps_after_the_resume_point(faces, tmp_path, monkeypatch):
    import torch.utils.tensorboard as tb
    opened = []

    class Recorder(tb.SummaryWriter):
        def __init__(self, *args, **kwargs):
            opened.append(kwargs.get("purge_step"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tb, "SummaryWriter", Recorder)
    train(make_cfg(faces, tmp_path, "max_steps=4", "log.save_every=2", "log.keep_last=0", "log.tensorboard=true"))
    train(make_cfg(faces, tmp_path, "max_steps=4", "log.tensorboard=true"),
          resume=str(tmp_path / "ckpts" / "step_00000002.pt"))
    assert opened == [None, 3]


def test_a_lasting_loss_level_stops_counting_as_a_spike():
    """A loss that jumps and stays up is a spike at first, not forever (the window follows it)."""
    from training.guards import LossWatch
    watch = LossWatch(spike_factor=20)
    for k in range(60):
        watch.is_new_spike(1.0, k)
    assert watch.is_new_spike(100.0, 60) and watch.spike_since == 60
    spikes = [k for k in range(61, 200) if watch.is_new_spike(100.0, k) or watch.spike_since is not None]
    assert watch.spike_since is None and spikes and max(spikes) < 120


def test_spike_factor_between_0_and_1_is_refused(faces, tmp_path):
    with pytest.raises(ValueError, match="log.spike_factor"):
        make_cfg(faces, tmp_path, "log.spike_factor=0.5")
