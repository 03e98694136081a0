"""Inpainting training: the mask datasets, the weighted L1 objective, and the tiny LaMa config
(CPU, 32x32, a few steps): learning, exact resume, configs."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from datapipe.datasets import DATASETS, DatasetConfig, MaskConfig, build_dataset, fit_mask_generator
from datapipe.mask_io import write_mask
from datapipe.masks import BoxMaskGenerator, MixedMaskGenerator
from models import build_network
from models.checkpoint import load_weights
from trainer import Trainer, train
from training import CheckpointStore, load_config, weights_hash
from training.objectives import OBJECTIVES, WeightedL1

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "train"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """Eight smooth 40x48 'faces' (resized and cropped to 32x32 by the datasets): a colour of
    their own, a vertical ramp and blurred noise; no pixel is black."""
    folder = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    ramp = np.linspace(-0.25, 0.25, 40)[:, None, None]
    for i in range(8):
        noise = cv2.GaussianBlur(rng.random((40, 48, 3)), (9, 9), 3) - 0.5
        img = rng.uniform(0.15, 0.85, 3) + ramp * rng.choice([-1, 1]) + noise
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.clip(img * 255, 1, 255).astype(np.uint8))
    return folder


def inpainting_set(root: Path, seed: int = 0, **mask):
    cfg = DatasetConfig(name="inpainting", root=str(root), size=32, mask=MaskConfig(**mask))
    return build_dataset(cfg, seed=seed)


# ---- datasets --------------------------------------------------------------------------------

def test_inpainting_samples_zero_holes_and_are_reproducible_per_seed_and_index(faces):
    data = inpainting_set(faces)
    assert DATASETS["inpainting"] is type(data) and len(data) == 8
    fractions = []
    for key in [(i, 0) for i in range(8)] + [(i, 1) for i in range(8)]:
        s = data[key]
        assert s["lq"].shape == s["hq"].shape == (3, 32, 32) and s["mask"].shape == (1, 32, 32)
        assert s["lq"].dtype == s["mask"].dtype == torch.float32
        hole = s["mask"][0] == 1
        assert torch.isin(s["mask"], torch.tensor([0.0, 1.0])).all()
        assert (s["lq"][:, hole] == 0).all()  # exactly zero in the hole
        assert torch.equal(s["lq"][:, ~hole], s["hq"][:, ~hole])  # untouched elsewhere
        assert (s["hq"] > 0).all()  # so the zeros above come from the mask
        fractions.append(hole.float().mean().item())
    assert 0.02 < np.mean(fractions) < 0.9 and len(set(fractions)) > 8  # varied, mostly partial holes
    again, other_seed = inpainting_set(faces), inpainting_set(faces, seed=1)
    for key in [(3, 0), (5, 1)]:
        a, b, c = data[key], again[key], other_seed[key]
        assert all(torch.equal(a[k], b[k]) for k in ("lq", "mask", "hq"))  # same (seed, index, epoch)
        assert not torch.equal(a["mask"], c["mask"])  # another seed: another mask
    assert not torch.equal(data[(3, 0)]["mask"], data[(4, 0)]["mask"])
    assert not torch.equal(data[(3, 0)]["mask"], data[(3, 1)]["mask"])


def test_mask_generators_fitted_to_the_image_size():
    official = MixedMaskGenerator()
    assert fit_mask_generator(official, 256, 256, 256) == official  # the official settings at 256
    small = fit_mask_generator(official, 32, 32, 256)  # pixel sizes / 8
    assert (small.irregular.max_len, small.irregular.max_width) == (25, 12)
    assert (small.box.margin, small.box.bbox_min_size, small.box.bbox_max_size) == (1, 4, 19)
    assert small.outpainting == official.outpainting and small.weights == official.weights
    with pytest.raises(ValueError, match="too small"):  # unfitted, the official boxes cannot fit 32x32
        BoxMaskGenerator()(32, 32, np.random.default_rng(0))
    clipped = fit_mask_generator(BoxMaskGenerator(), 32, 32, None)  # unscaled: only clipped to fit
    assert (clipped.margin, clipped.bbox_min_size, clipped.bbox_max_size) == (10, 11, 11)
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = clipped(32, 32, rng)
        rows, cols = np.nonzero(mask)
        assert rows.min() >= 10 and rows.max() <= 21 and cols.min() >= 10 and cols.max() <= 21


def test_inpainting_mask_kind_is_chosen_by_config(faces):
    data = inpainting_set(faces, kind="half")  # bottom or right half, from masking_percent 0.5
    for i in range(4):
        mask = data[(i, 0)]["mask"][0]
        assert mask.sum() == 16 * 32 and (mask[16:].all() or mask[:, 16:].all())
    with pytest.raises(ValueError, match=r"mask.kind='star'.*allowed"):
        inpainting_set(faces, kind="star")
    with pytest.raises(Exception, match="ref_size"):
        load_config(CONFIGS / "tiny_inpainting.yaml", ["data.train.root=x", "data.train.mask.ref_size=0"])


def _write(path: Path, rgb: np.ndarray) -> None:
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))


def test_inpainting_pairs_mask_from_exact_zeros_or_from_mask_files(tmp_path):
    rng = np.random.default_rng(0)
    for folder in ("lq", "hq", "masks"):
        (tmp_path / folder).mkdir()
    hq = rng.integers(1, 256, (16, 16, 3), dtype=np.uint8)
    lq = hq.copy()
    lq[2:6, 3:9] = 0  # the hole
    lq[10, 10] = (0, 0, 7)  # zero in two channels only: not a hole
    _write(tmp_path / "hq" / "a.png", hq)
    _write(tmp_path / "lq" / "a.png", lq)
    file_mask = np.zeros((16, 16), np.float32)
    file_mask[8:12, 0:5] = 1
    write_mask(tmp_path / "masks" / "a.png", file_mask)

    cfg = DatasetConfig(name="inpainting_paired", lq_root=str(tmp_path / "lq"), hq_root=str(tmp_path / "hq"))
    s = build_dataset(cfg)[0]
    expected = np.zeros((16, 16), np.float32)
    expected[2:6, 3:9] = 1
    assert s["name"] == "a" and np.array_equal(s["mask"][0].numpy(), expected)
    assert np.array_equal((s["hq"] * 255).round().byte().permute(1, 2, 0).numpy(), hq)
    assert np.array_equal((s["lq"] * 255).round().byte().permute(1, 2, 0).numpy(), lq)

    cfg.mask.root = str(tmp_path / "masks")
    s = build_dataset(cfg)[0]
    assert np.array_equal(s["mask"][0].numpy(), file_mask)
    assert (s["lq"][:, 8:12, 0:5] == 0).all()  # holes of the mask file are zeroed in lq
    (tmp_path / "masks" / "a.png").unlink()
    with pytest.raises(ValueError, match="no mask file"):  # found missing before any training
        build_dataset(cfg)


# ---- objective -------------------------------------------------------------------------------

class Fixed(torch.nn.Module):
    """A 'network' returning a fixed estimate and recording its input."""

    def __init__(self, estimate: torch.Tensor):
        super().__init__()
        self.estimate, self.seen = estimate, None

    def forward(self, x):
        self.seen = x
        return self.estimate


def test_weighted_l1_equals_a_hand_computation():
    # One 1x2 image: pixel 0 is the hole (weight 10), pixel 1 is known (weight 1).
    # |estimate - hq| per channel: hole 0.1, 0.2, 0.3; known 0.3, 0.3, 0.3
    # loss = (10 * (0.1 + 0.2 + 0.3) + (0.3 + 0.3 + 0.3)) / (10 * 3 + 1 * 3) = 6.9 / 33
    hq = torch.tensor([[[[0.5, 0.5]], [[0.5, 0.5]], [[0.5, 0.5]]]])
    estimate = torch.tensor([[[[0.6, 0.2]], [[0.3, 0.8]], [[0.8, 0.2]]]])
    mask = torch.tensor([[[[1.0, 0.0]]]])
    batch = {"lq": hq * (1 - mask), "mask": mask, "hq": hq}
    net = Fixed(estimate)
    loss = WeightedL1(10.0, scores=None)(net, batch, torch.Generator())["loss"]
    assert loss.item() == pytest.approx(6.9 / 33, abs=1e-6)
    assert torch.equal(net.seen, torch.tensor([[[[0.0, 0.5]], [[0.0, 0.5]], [[0.0, 0.5]], [[1.0, 0.0]]]]))
    # hole_weight 1: the plain mean L1 = (0.6 + 0.9) / 6
    assert WeightedL1(1.0, None)(net, batch, None)["loss"].item() == pytest.approx(0.25, abs=1e-6)
    cfg = load_config(CONFIGS / "tiny_inpainting.yaml", ["data.train.root=x", "objective.hole_weight=3"])
    assert OBJECTIVES["weighted_l1"](cfg.objective, cfg.diffusion, cfg.log.y_channel).hole_weight == 3.0
    rows = OBJECTIVES["weighted_l1"](cfg.objective, cfg.diffusion, cfg.log.y_channel).images(net, batch, None)
    assert [r.shape for r in rows] == [hq.shape] * 3 and torch.equal(rows[1], estimate)
    with pytest.raises(ValueError, match="objective.hole_weight"):
        load_config(CONFIGS / "tiny_inpainting.yaml", ["data.train.root=x", "objective.hole_weight=0"])


# ---- training ----------------------------------------------------------------------------------

def make_cfg(faces: Path, out: Path, *overrides: str):
    return load_config(CONFIGS / "tiny_inpainting.yaml",
                       [f"data.train.root={faces}", f"out_dir={out}", "log.log_every=0", *overrides])


def test_tiny_lama_steps_reduce_the_loss_validate_and_export(faces, tmp_path):
    # Four images, so that 24 steps see each one 24 times (with a new mask every epoch); the
    # fixed set is these images with their epoch-0 masks. Holes of unseen images are not
    # predictable from smooth noise, so a larger set would learn too slowly for a unit test.
    four = tmp_path / "four"  # the first four of the eight faces (max_images would draw a random four)
    four.mkdir()
    for p in sorted(faces.glob("*.png"))[:4]:
        (four / p.name).write_bytes(p.read_bytes())
    cfg = make_cfg(four, tmp_path / "run", "max_steps=24", "log.image_every=24", "log.val_every=24",
                   "log.save_every=12")
    trainer = Trainer(cfg)
    batch = default_collate([trainer.loader.dataset[(i, 0)] for i in range(4)])

    def fixed_loss() -> float:  # eval mode: BatchNorm with its running statistics
        trainer.net.eval()
        with torch.no_grad():
            return float(trainer.objective(trainer.net, batch, None)["loss"])

    before = fixed_loss()
    try:
        trainer.train()
    finally:
        trainer.close()
    after = fixed_loss()
    assert after < 0.75 * before, (before, after)
    fresh = build_network(cfg.model.name, cfg.model.params)
    load_weights(fresh, tmp_path / "run" / "export.safetensors", strict=True)
    assert weights_hash(fresh) == weights_hash(trainer.ema.model)
    grid = cv2.imread(str(tmp_path / "run" / "images" / "train_00000024.png"))
    assert grid.shape == (3 * 32, cfg.log.num_images * 32, 3)  # LQ / estimate / HQ
    best = CheckpointStore.load(tmp_path / "run" / "ckpts" / "best.pt")
    assert best["best"]["metric"] == "psnr" and best["best"]["step"] == 24 and best["best"]["value"] > 5


def test_stop_and_resume_is_bit_identical(faces, tmp_path):
    common = ["log.save_every=2", "log.val_every=0"]
    straight = train(make_cfg(faces, tmp_path / "straight", "max_steps=5", *common))
    train(make_cfg(faces, tmp_path / "resumed", "max_steps=3", *common))  # stops mid-epoch
    resumed = train(make_cfg(faces, tmp_path / "resumed", "max_steps=5", *common), resume="auto")
    assert resumed.step == straight.step == 5
    assert weights_hash(resumed.net) == weights_hash(straight.net)  # BatchNorm statistics included
    assert weights_hash(resumed.ema.model) == weights_hash(straight.ema.model)


# ---- configs -----------------------------------------------------------------------------------

def test_official_lama_config_has_the_official_settings():
    cfg = load_config(CONFIGS / "estimator_lama_ffhq256.yaml")
    assert (cfg.model.name, cfg.objective.name, cfg.objective.hole_weight) == ("lama", "weighted_l1", 10.0)
    assert cfg.model.params["n_blocks"] == 18 and cfg.model.params["add_out_act"] == "sigmoid"
    opt = cfg.optim
    assert (opt.lr, opt.weight_decay, opt.schedule, opt.t_max, opt.eta_min) == (1e-4, 0.0, "cosine", 500000, 5e-6)
    assert (cfg.max_steps, cfg.ema_rate, cfg.data.batch_size, cfg.data.micro_batch) == (500000, 0.999, 64, 16)
    assert (cfg.log.save_every, cfg.log.val_every, cfg.data.val_batch) == (10000, 10000, 8)
    train_set, val_set = cfg.data.train, cfg.data.val
    assert (train_set.name, train_set.size, val_set.name, val_set.mask.root) == (
        "inpainting", 256, "inpainting_paired", None)
    assert train_set.mask.kind == "mixed" and train_set.mask.params == MixedMaskGenerator()
    assert train_set.mask.params.weights == {"irregular": 1.0, "box": 1.0, "outpainting": 1.0}
