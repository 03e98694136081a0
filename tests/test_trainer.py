"""The trainer on the tiny configs (CPU, 32x32, a few steps): learning, exact resume, crash
safety of checkpoints, NaN stop, DDP under torchrun (gloo), configs and LR schedules."""
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch
from torch.utils.data import default_collate

from models import build_network
from models.checkpoint import load_weights
from trainer import Trainer, TrainingDiverged, train
from training import CheckpointStore, LRFactor, OptimConfig, load_config, weights_hash

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "train"


pytestmark = pytest.mark.usefixtures("one_thread")


def make_cfg(name: str, faces: Path, out: Path, *overrides: str):
    return load_config(CONFIGS / f"{name}.yaml",
                       [f"data.train.root={faces}", f"out_dir={out}", "log.log_every=0", *overrides])


def fixed_loss(trainer: Trainer, batch: dict, repeats: int) -> float:
    """The objective on a fixed batch with fixed timesteps/noise (eval mode, no grad)."""
    trainer.net.eval()
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        losses = [float(trainer.objective(trainer.net, batch, generator)["loss"]) for _ in range(repeats)]
    return sum(losses) / repeats


@pytest.mark.parametrize("name,repeats,rows", [("tiny_estimator", 1, 3), ("tiny_prior", 4, 2)])
def test_a_few_steps_reduce_the_loss_and_export_loads(faces, tmp_path, name, repeats, rows):
    cfg = make_cfg(name, faces, tmp_path, "max_steps=12", "log.image_every=12", "log.val_every=0")
    trainer = Trainer(cfg)
    batch = default_collate([trainer.loader.dataset[(i, 0)] for i in range(4)])
    before = fixed_loss(trainer, batch, repeats)
    try:
        trainer.train()
    finally:
        trainer.close()
    after = fixed_loss(trainer, batch, repeats)
    assert after < 0.7 * before, (before, after)
    fresh = build_network(cfg.model.name, cfg.model.params)
    load_weights(fresh, tmp_path / "export.safetensors", strict=True)
    assert weights_hash(fresh) == weights_hash(trainer.ema.model)
    grid = cv2.imread(str(tmp_path / "images" / "train_00000012.png"))
    assert grid.shape == (rows * 32, cfg.log.num_images * 32, 3)


@pytest.mark.parametrize("name,workers", [("tiny_estimator", 2), ("tiny_prior", 0)])
def test_stop_and_resume_is_bit_identical(faces, tmp_path, name, workers):
    common = [f"data.num_workers={workers}", "log.save_every=2"]
    straight = train(make_cfg(name, faces, tmp_path / "straight", "max_steps=5", *common))
    train(make_cfg(name, faces, tmp_path / "resumed", "max_steps=3", *common))  # stops mid-epoch
    resumed = train(make_cfg(name, faces, tmp_path / "resumed", "max_steps=5", *common), resume="auto")
    assert resumed.step == straight.step == 5
    assert weights_hash(resumed.net) == weights_hash(straight.net)
    assert weights_hash(resumed.ema.model) == weights_hash(straight.ema.model)
    state = CheckpointStore.load(tmp_path / "resumed" / "ckpts" / "step_00000005.pt")  # weights_only
    assert {"python", "numpy", "torch", "cuda", "objective"} <= set(state["rng"][0])
    assert state["config"] == (tmp_path / "resumed" / "config.yaml").read_text()
    assert state["optimizer"]["state"] and state["ema"] is not None
    kept = [step for step, _ in CheckpointStore(tmp_path / "resumed" / "ckpts", 0).steps()]
    assert kept == [4, 5]  # log.keep_last=2 of steps 2, 3, 4, 5
    assert sorted(p.name for p in (tmp_path / "resumed").glob("ema_*")) == [
        "ema_00000004.safetensors", "ema_00000005.safetensors"]


def test_resume_auto_skips_a_truncated_checkpoint_and_temp_files(faces, tmp_path):
    cfg = make_cfg("tiny_estimator", faces, tmp_path, "max_steps=4", "log.save_every=2", "log.keep_last=0",
                   "log.val_every=0")
    train(cfg)
    ckpts = tmp_path / "ckpts"
    newest = ckpts / "step_00000004.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # killed mid-write, no rename
    (ckpts / ".step_00000006.pt.x1y2.tmp").write_bytes(b"partial")  # a leftover temp file
    with pytest.raises(FileExistsError, match="--resume auto"):
        Trainer(cfg)  # never trains over existing checkpoints silently
    trainer = Trainer(cfg, resume="auto")
    trainer.close()
    assert trainer.step == 2
    assert "skipping checkpoint" in (tmp_path / "train.log").read_text()


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(faces, tmp_path):
    cfg = make_cfg("tiny_estimator", faces, tmp_path, "max_steps=6", "log.save_every=2", "log.val_every=0")
    trainer = Trainer(cfg)
    real = trainer.objective

    class Poisoned:
        inputs = real.inputs

        def __call__(self, model, batch, generator):
            terms = real(model, batch, generator)
            return {"loss": terms["loss"] * float("nan")} if trainer.step >= 3 else terms

    trainer.objective = Poisoned()
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 4.*step_00000002\.pt"):
        trainer.train()
    trainer.close()
    assert [step for step, _ in trainer.store.steps()] == [2]
    assert CheckpointStore.load(tmp_path / "ckpts" / "step_00000002.pt")["step"] == 2


def test_torchrun_two_ranks_gloo_train_to_identical_weights(faces, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "trainer.py"), "--cfg", str(CONFIGS / "tiny_estimator.yaml"), f"data.train.root={faces}",
           "--out-dir", str(tmp_path), "--max-steps", "3", "--save-every", "2", "log.val_every=2",
           "log.log_every=0", "--debug-dump-weights-hash"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stderr[-3000:]
    hashes = [(tmp_path / f"weights_rank{r}.sha256").read_text() for r in (0, 1)]
    assert hashes[0] == hashes[1]
    state = CheckpointStore.load(tmp_path / "ckpts" / "step_00000003.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # seeds per rank
    best = CheckpointStore.load(tmp_path / "ckpts" / "best.pt")  # validated at step 2 on rank 0
    assert best["step"] == 2 and best["best"]["metric"] == "psnr"


@pytest.mark.parametrize("override,message", [
    ("data.train.rooot=x", "rooot"),
    ("data.batch_size=abc", "batch_size"),
    ("objective.name=l3", "objective.name"),
    ("optim.schedule=cosine", "t_max"),
    ("amp=fp8", "amp"),
])
def test_config_errors_name_the_key(override, message, tmp_path):
    with pytest.raises(Exception, match=message):
        load_config(CONFIGS / "tiny_prior.yaml", ["data.train.root=x", override, "optim.t_max=0"])


@pytest.mark.parametrize("name,objective,lr", [("estimator_swinir_ffhq512", "l1", 5e-5),
                                               ("diffusion_ffhq512", "hybrid", 1e-4),
                                               ("tiny_estimator", "l1", 2e-3), ("tiny_prior", "hybrid", 1e-3)])
def test_train_configs_load(name, objective, lr):
    cfg = load_config(CONFIGS / f"{name}.yaml", ["data.train.root=x", "data.train.file_list=null"])
    assert cfg.objective.name == objective and cfg.optim.lr == lr


def test_lr_factor_cosine_floor_and_linear_warmup():
    cosine = LRFactor(OptimConfig(lr=5e-5, schedule="cosine", t_max=100, eta_min=5e-6))
    assert cosine(0) == pytest.approx(1.0) and cosine(50) == pytest.approx(0.55)
    assert cosine(100) == pytest.approx(0.1) and cosine(1000) == pytest.approx(0.1)
    warm = LRFactor(OptimConfig(lr=1e-4, schedule="constant", warmup_steps=10))
    assert [warm(s) for s in (0, 4, 9, 50)] == pytest.approx([0.1, 0.5, 1.0, 1.0])
