"""The Python API (`import difface`): the pixels it returns are the pixels the command line writes."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import difface
from datapipe.image_io import read_image, tensor_to_uint8
from difface import cli

pytestmark = pytest.mark.usefixtures("offline")
REPO = Path(__file__).resolve().parents[1]
FACE = REPO / "examples" / "faces" / "8_0_1_20170110215727788.png"
PHOTO = REPO / "examples" / "photos" / "group_00.jpg"


@pytest.fixture(scope="module")
def demo():
    return difface.Restorer("demo", device="cpu")


def _pixels(path: Path) -> np.ndarray:
    return tensor_to_uint8(read_image(path))


def test_aligned_face_equals_the_command_line(demo, tmp_path):
    src = tmp_path / "in" / "face.png"
    src.parent.mkdir()
    shutil.copy(FACE, src)
    assert cli.main(["-i", str(src), "-o", str(tmp_path / "out"), "--cfg", "demo", "--aligned", "--seed", "7",
                     "--num-samples", "2", "--save-estimate", "--device", "cpu"]) == 0
    res = demo.restore(src, aligned=True, seed=7, num_samples=2)
    assert res.name == "face.png" and len(res.samples) == 2 and res.image is res.samples[0]
    for k in range(2):
        assert np.array_equal(res.samples[k], _pixels(tmp_path / "out" / f"face_s{k}.png"))
    assert np.array_equal(res.estimate, _pixels(tmp_path / "out" / "estimates" / "face.png"))
    assert not np.array_equal(res.samples[0], res.samples[1])
    # an array in, under the same name: the same pixels; another name: another random stream
    array = tensor_to_uint8(read_image(src))
    again = demo.restore(array, aligned=True, seed=7, num_samples=2, name="face.png")
    assert all(np.array_equal(a, b) for a, b in zip(again.samples, res.samples))
    other = demo.restore(array, aligned=True, seed=7, name="other.png")
    assert not np.array_equal(other.image, res.image)


def test_whole_photo_equals_the_command_line(demo, tmp_path):
    assert cli.main(["-i", str(PHOTO), "-o", str(tmp_path / "out"), "--cfg", "demo", "--device", "cpu"]) == 0
    res = demo.restore(PHOTO)
    written = _pixels(tmp_path / "out" / "restored_image" / "group_00.png")
    assert res.image.shape == written.shape and np.array_equal(res.image, written)
    h, w = res.input.shape[:2]
    assert res.image.shape[:2] == (2 * 512, round(2 * 512 * w / h))  # short side to 512, then upscale 2
    assert res.faces and all(f.crop.shape == (64, 64, 3) and len(f.restored) == 1 for f in res.faces)
    assert all(len(f.box) == 4 and len(f.landmarks) == 5 for f in res.faces)
    assert res.info["faces"] and res.info["size"] == [w, h]


def test_per_call_settings_and_errors(demo, tmp_path):
    calls = []
    res = demo.restore(FACE, aligned=True, start_step=60, steps=3, sampler="dpmpp_2m",
                       progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)] and res.image.shape == read_image(FACE).shape[1:] + (3,)
    assert demo.method.sampling.start_step == 30, "a call's settings leave the Restorer's own alone"
    with pytest.raises(difface.ConfigError, match="sampling.sampler"):
        demo.restore(FACE, aligned=True, sampler="euler")
    with pytest.raises(difface.InputError, match="small.png: image is 16x16, too small"):
        demo.restore(np.zeros((16, 16, 3), np.uint8), aligned=True, name="small.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(difface.InputError, match="text.png"):
        demo.restore(tmp_path / "text.png", aligned=True)


def test_import_is_light_and_lists_the_presets():
    code = "import sys, difface; print(sorted(difface.preset_names())); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "'demo'" in out and "'difface_ffhq512'" in out and out.strip().endswith("False")


def test_a_config_with_a_base_is_its_base_with_its_own_keys_over_it(tmp_path):
    from difface.pipeline import ConfigError, load_config
    fast, paper = load_config("difface_ffhq512_fast"), load_config("difface_ffhq512")
    assert fast.prior == paper.prior and fast.estimator == paper.estimator and fast.face == paper.face
    assert fast.sampling.sampler == "dpmpp_2m" and fast.sampling.steps == 15 and paper.sampling.sampler == "ddim"
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: demo\nsampling:\n  start_step: 60\n")
    cfg = load_config(str(mine))
    assert cfg.sampling.start_step == 60 and cfg.sampling.grid == load_config("demo").sampling.grid
    assert cfg.image_size == 64
    mine.write_text("base: mine.yaml\n")
    with pytest.raises(ConfigError, match="names itself as a base"):
        load_config(str(mine))
    mine.write_text("base: nowhere\n")
    with pytest.raises(ConfigError, match="base 'nowhere' is neither a file next to it nor a preset"):
        load_config(str(mine))


def test_progress_is_reported_with_deep_feature_caching_too():
    cached = difface.Restorer("demo", device="cpu", overrides=["sampling.cache_depth=1"])
    calls = []
    cached.restore(FACE, aligned=True, start_step=60, steps=4, sampler="dpmpp_2m",
                   progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
