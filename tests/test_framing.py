"""Faces are framed as each model was trained, never silently degraded, and grey stays grey."""
import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from datapipe.aligned import ModelFraming
from datapipe.face_align import (FFHQ_TEMPLATE_512, estimate_similarity, ffhq_quad_affine, inverse_affine,
                                 is_ffhq_template, transform_points)
from datapipe.faces import FaceDetector
from datapipe.image_io import read_image, tensor_to_uint8, write_image
from datapipe.photos import upscale_lanczos
from difface.pipeline import load_config
from tests.test_inference import REPO, _faces, _run

pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture(scope="module")
def demo_framing() -> ModelFraming:
    cfg = load_config("demo")
    return ModelFraming.of(cfg.image_size, cfg.face.template, cfg.face.template_size)


def test_presets_declare_their_framing(demo_framing):
    assert is_ffhq_template(load_config("difface_ffhq512").face.template, 512)
    assert demo_framing.template is not None, "the demo's tight UTKFace crops are not FFHQ's framing"
    ffhq = ModelFraming.of(512, FFHQ_TEMPLATE_512, 512)
    assert ffhq.template is None and ffhq.native_side((700, 700)) == 700


def test_aligned_ffhq_crop_is_reframed_to_the_demo_template(demo_framing):
    """A UTKFace crop placed into FFHQ framing comes back as the same crop at the demo's size."""
    utk = read_image(REPO / "examples" / "faces" / "9_0_0_20170110223916896.png")  # 100 px, FFHQ framing
    crop, affine = demo_framing.to_model(utk)
    assert crop.shape == (3, 64, 64)
    assert abs(demo_framing.native_side((100, 100)) - 64) < 1.0
    # the model sees the face where its template says: eyes of the 64 px demo template
    tpl = demo_framing.template
    eyes = transform_points(FFHQ_TEMPLATE_512[:2] / 512 * 100, affine)
    assert np.abs(eyes - tpl[:2]).max() < 1.5
    # pasted back: outside the demo's region the input is unchanged, inside the model output is used
    out = torch.zeros_like(crop)
    back = demo_framing.from_model(out, utk, affine)
    assert back.shape == utk.shape
    assert torch.equal(back[:, :8, :], torch.round(utk[:, :8, :] * 255) / 255), "border rows changed"
    assert back[:, 45:55, 45:55].max() < 0.02, "the centre is the model's output"


def test_demo_on_aligned_ffhq_faces_keeps_everything_outside_its_crop(face_images, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("0143.png", "0240.png"):
        shutil.copy(face_images / "lq_cropped" / "codeformer_difface_cropped_faces" / name, src)
    out = tmp_path / "out"
    assert _run("-i", src, "-o", out, "--aligned", "--cfg", "demo", "--steps", 2) == 0
    err = capsys.readouterr().err
    assert err.count("warning: 2 of 2 input(s) hold a face larger than 1.5x the 64 px") == 1, "one warning per run"
    assert "(up to 329 px)" in err
    y, x = read_image(src / "0143.png"), read_image(out / "0143.png")
    assert y.shape == x.shape == (3, 512, 512)
    assert torch.equal(x[:, :60], y[:, :60]) and torch.equal(x[:, :, :60], y[:, :, :60])
    assert (x[:, 200:300, 200:300] - y[:, 200:300, 200:300]).abs().mean() > 0.005


def test_grey_input_gives_grey_output(tiny_cfg, tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "one_channel.png"), grey)
    write_image(src / "three_equal.png", np.repeat(grey[..., None], 3, axis=2))
    out = tmp_path / "out"
    assert _run("-i", src, "-o", out, "--aligned", "--cfg", tiny_cfg, "--save-cmp") == 0
    for name in ("one_channel.png", "three_equal.png"):
        x = read_image(out / name)
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2]), f"{name}: tinted output"
        assert (x - read_image(src / name)).abs().mean() > 0.01, "restored, not copied"
    colour = _faces(tmp_path / "colour", ["c.png"], size=40)
    assert _run("-i", colour, "-o", tmp_path / "co", "--aligned", "--cfg", tiny_cfg) == 0
    c = read_image(tmp_path / "co" / "c.png")
    assert not torch.equal(c[0], c[1]), "colour input stays colour"


def test_whole_photo_large_face_is_left_untouched_by_the_demo(face_images, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(face_images / "lq_whole" / "dfdnet_testwhole" / "test4.jpg", src)
    out = tmp_path / "out"
    assert _run("-i", src, "-o", out, "--cfg", "demo", "--steps", 2) == 0
    err = capsys.readouterr().err
    assert "0 face(s) restored; 1 left as they were" in err and "--allow-downscale" in err
    record = json.loads(next(out.glob("manifest_*.json")).read_text())["images"][0]
    assert record["faces"] == [] and len(record["kept_large"]) == 1 and record["kept_large"][0]["crop_side"] > 96
    photo = tensor_to_uint8(read_image(src / "test4.jpg"))
    factor = max(1.0, 512 / min(photo.shape[:2]))
    enlarged = cv2.resize(photo, (round(photo.shape[1] * factor), round(photo.shape[0] * factor)),
                          interpolation=cv2.INTER_LINEAR) if factor > 1 else photo
    expected = upscale_lanczos(enlarged, 2)
    assert np.array_equal(tensor_to_uint8(read_image(out / "restored_image" / "test4.png")), expected)
    forced = tmp_path / "forced"
    assert _run("-i", src, "-o", forced, "--cfg", "demo", "--steps", 2, "--allow-downscale") == 0
    assert not np.array_equal(tensor_to_uint8(read_image(forced / "restored_image" / "test4.png")), expected)


def test_ffhq_rule_on_68_points_recovers_ffhq_crops(face_images):
    """FFHQ faces placed in a larger canvas: the 68-point FFHQ rule finds their crop again (median
    corner error a few px at 512), far closer than the five-point similarity fit."""
    detector = FaceDetector()
    rng = np.random.default_rng(0)
    err68, err5 = [], []
    corners = np.array([[-0.5, -0.5], [511.5, -0.5], [-0.5, 511.5], [511.5, 511.5]])
    paths = sorted((face_images / "hq_aligned" / "ffhq_512").glob("*.jpg"))
    assert len(paths) == 6
    for path in paths:
        face = tensor_to_uint8(read_image(path))  # 512 px FFHQ crops
        s, th = rng.uniform(0.6, 0.9), np.deg2rad(rng.uniform(-10, 10))
        rot = s * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        placed = np.hstack([rot, (np.array([400, 380]) - rot @ [255.5, 255.5])[:, None]])
        canvas = cv2.warpAffine(face, placed, (800, 760), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        found = min(detector.detect(canvas), key=lambda f: np.linalg.norm(f.box.reshape(2, 2).mean(0) - [400, 380]))
        truth = transform_points(corners, placed)
        for affine, errors in ((ffhq_quad_affine(found.landmarks68, 512), err68),
                               (estimate_similarity(found.landmarks5, FFHQ_TEMPLATE_512), err5)):
            errors.append(np.linalg.norm(transform_points(truth, affine) - corners, axis=1).max())
    assert np.median(err68) < 5.0, err68
    assert np.median(err68) < np.median(err5) / 3, (err68, err5)


def test_ffhq_rule_geometry():
    """An upright synthetic face: the crop is centred below the eyes, its side from the eye distance."""
    pts = np.zeros((68, 2))
    pts[36:42] = [100, 100]
    pts[42:48] = [160, 100]
    pts[48], pts[54] = [110, 170], [150, 170]
    affine = ffhq_quad_affine(pts, 512)
    # half-side = max(2 |eye_to_eye|, 1.8 |eye_to_mouth|) = max(120, 126) = 126
    eye_to_eye, eye_to_mouth = 60.0, 70.0
    half = max(2 * eye_to_eye, 1.8 * eye_to_mouth)
    centre = np.array([130, 100 + 0.1 * eye_to_mouth])
    expected = [[-0.5, -0.5], [511.5, 511.5]]
    got = transform_points(np.array([centre - half, centre + half]), affine)
    assert np.allclose(got, expected, atol=1e-6)
    assert np.allclose(inverse_affine(affine)[:, :2], np.eye(2) * 2 * half / 512)
