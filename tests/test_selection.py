"""Keeping one of several samples per face: `select: fidelity` (models/selection.py)."""
import json

import numpy as np
import pytest
import torch

import difface
from datapipe.image_io import write_image
from difface import cli
from difface.pipeline import ConfigError, load_config
from models.selection import GRID, coarse, faithful_choice


def test_the_choice_follows_coarse_content_not_texture():
    torch.manual_seed(0)
    reference = torch.rand(2, 3, 64, 64)
    checker = torch.ones(64, 64)
    checker[1::2, ::2] = checker[::2, 1::2] = -1  # a pixel checkerboard: zero in every block
    textured = reference + 0.3 * checker
    darker = reference - 0.05
    # face 0: sample 1 has the reference's coarse content under strong texture, sample 0 is a little darker
    # face 1: the other way round
    samples = torch.stack([torch.stack([darker[0], textured[1]]), torch.stack([textured[0], darker[1]])])
    assert faithful_choice(samples, reference).tolist() == [1, 0]
    # the pixelwise distance would have chosen the darker ones
    pixel = (samples - reference[None]).pow(2).flatten(2).mean(2).argmin(0)
    assert pixel.tolist() == [0, 1]
    assert coarse(reference).shape == (2, 3, GRID, GRID)


def test_one_sample_and_ties_keep_the_first():
    x = torch.rand(3, 3, 32, 32)
    assert faithful_choice(x[None], x).tolist() == [0, 0, 0]
    assert faithful_choice(torch.stack([x, x]), x).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="samples"):
        faithful_choice(x, x)


def test_select_in_the_config(tiny_cfg):
    assert load_config(str(tiny_cfg)).select == "all"
    assert load_config(str(tiny_cfg), ["select=fidelity"]).select == "fidelity"
    with pytest.raises(ConfigError, match="select"):
        load_config(str(tiny_cfg), ["select=best"])


def test_the_kept_sample_is_the_one_of_all_nearest_the_estimate(tiny_cfg):
    restorer = difface.Restorer(str(tiny_cfg), device="cpu", overrides=["batch_size=2"])
    rng = np.random.default_rng(3)
    image = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    every = restorer.restore(image, aligned=True, name="face", num_samples=3)
    kept = restorer.restore(image, aligned=True, name="face", num_samples=3, select="fidelity")
    assert len(every.samples) == 3 and len(kept.samples) == 1
    k = kept.info["kept_sample"]
    assert np.array_equal(kept.samples[0], every.samples[k])
    def blocks(img):  # 32 px -> 16 x 16 means of 2 x 2 blocks, per channel
        return img.astype(np.float64).reshape(16, 2, 16, 2, 3).mean((1, 3))
    distances = [((blocks(s) - blocks(every.estimate)) ** 2).mean() for s in every.samples]
    assert k == int(np.argmin(distances)), "nearest the estimate (8-bit images: up to rounding)"
    assert "kept_sample" not in every.info
    with pytest.raises(ConfigError, match="select"):
        restorer.restore(image, aligned=True, select="best")


def test_the_command_line_writes_the_kept_sample_only(tiny_cfg, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    rng = np.random.default_rng(4)
    for i in range(3):
        write_image(src / f"f{i}.png", (rng.random((32, 32, 3)) * 255).astype(np.uint8))
    args = ["-i", str(src), "-o", str(out), "--cfg", str(tiny_cfg), "--aligned", "--device", "cpu",
            "--num-samples", "3"]
    assert cli.main([*args, "--select", "fidelity"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["f0.png", "f1.png", "f2.png"]
    manifest = json.loads(next(out.glob("manifest_*.json")).read_text())
    every = tmp_path / "every"
    assert cli.main([*args[:3], str(every), *args[4:]]) == 0
    assert len(list(every.glob("*.png"))) == 9
    kept = [img["kept_sample"] for img in manifest["images"]]
    assert len(set(kept)) > 1, "different faces keep different samples"
    for img, k in zip(manifest["images"], kept):
        (name,) = img["outputs"]
        assert np.array_equal(_read(out / name), _read(every / name.replace(".png", f"_s{k}.png")))


def _read(path):
    from datapipe.image_io import read_image
    return read_image(path).numpy()


@pytest.mark.usefixtures("offline")
def test_each_face_of_a_photo_keeps_its_own_sample():
    from pathlib import Path
    photo = Path(__file__).resolve().parents[1] / "examples" / "photos" / "group_00.jpg"
    demo = difface.Restorer("demo", device="cpu")
    settings = dict(num_samples=3, start_step=200, steps=3, sampler="dpmpp_2m")
    every = demo.restore(photo, **settings)
    kept = demo.restore(photo, select="fidelity", **settings)
    assert len(every.samples) == 3 and len(kept.samples) == 1 and len(kept.faces) == len(every.faces) > 1
    for face, mine, record in zip(every.faces, kept.faces, kept.info["faces"]):
        assert record["kept_sample"] == mine.kept_sample
        assert len(mine.restored) == 1 and np.array_equal(mine.restored[0], face.restored[mine.kept_sample])
