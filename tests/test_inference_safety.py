"""inference.py: nothing the user has is lost, every bad option is a clear error, the conveniences.

Each test here failed on the code before these rules (full stems, output != input, writable
output checked first, bombs refused from the header, GIFs reported, option errors).
"""
import json
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from datapipe.image_io import read_image
from datapipe.jobs import PlanError, plan_jobs
from tests.test_inference import REPO, _faces, _run

pytestmark = pytest.mark.usefixtures("offline")


def _manifest(out: Path) -> dict:
    return json.loads(next(out.glob("manifest_*.json")).read_text())


# ---- names ------------------------------------------------------------------------------------

def test_full_stems_and_every_collision_disambiguated(tmp_path):
    src = _faces(tmp_path / "in", ["John.Smith.png", "John.Doe.png", "IMG_2024.01.05.jpg", "a.png", "a.jpg",
                                   "a_png.png"])
    out = tmp_path / "out"
    names = {j.source.name: [p.name for p in j.outputs] for j in plan_jobs(src, out, False, 1)}
    assert names["John.Smith.png"] == ["John.Smith.png"] and names["John.Doe.png"] == ["John.Doe.png"]
    assert names["IMG_2024.01.05.jpg"] == ["IMG_2024.01.05.png"]
    outputs = [n for v in names.values() for n in v]
    assert len(set(outputs)) == len(outputs), outputs
    samples = [p.name for j in plan_jobs(src, out, False, 3) for p in j.outputs]
    assert len(set(samples)) == len(samples) == 18 and "John.Smith_s2.png" in samples


def test_samples_of_dotted_names_do_not_overwrite_each_other(tiny_cfg, tmp_path):
    src = _faces(tmp_path / "in", ["John.Smith.png", "John.Doe.png"])
    out = tmp_path / "out"
    assert _run("-i", src, "-o", out, "--aligned", "--cfg", tiny_cfg, "--num-samples", 2) == 0
    assert sorted(p.name for p in out.glob("*.png")) == [
        "John.Doe_s0.png", "John.Doe_s1.png", "John.Smith_s0.png", "John.Smith_s1.png"]
    record = _manifest(out)["images"][0]
    assert record["input"] == "../in/John.Doe.png" and record["outputs"] == ["John.Doe_s0.png", "John.Doe_s1.png"]


@pytest.mark.parametrize("aligned", [True, False])
def test_an_input_is_never_an_output(tiny_cfg, tmp_path, capsys, aligned):
    src = _faces(tmp_path / "dir", ["face.png"])
    before = (src / "face.png").read_bytes()
    if aligned:
        args = ["-i", src / "face.png", "-o", src, "--aligned", "--overwrite"]
    else:
        (src / "restored_image").mkdir()
        (src / "face.png").rename(src / "restored_image" / "face.png")
        args = ["-i", src / "restored_image" / "face.png", "-o", src, "--overwrite"]
    assert _run(*args, "--cfg", tiny_cfg) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert next(src.rglob("face.png")).read_bytes() == before


def test_unwritable_output_is_found_before_any_model_is_built(tmp_path, capsys, monkeypatch):
    import difface.pipeline
    monkeypatch.setattr(difface.pipeline, "build_networks", lambda *a, **k: pytest.fail("model built"))
    src = _faces(tmp_path / "in", ["a.png"])
    (tmp_path / "file").write_text("x")
    assert _run("-i", src, "-o", tmp_path / "file" / "out", "--aligned", "--cfg", "demo") == 2
    assert "is not a folder" in capsys.readouterr().err
    if hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        assert _run("-i", src, "-o", locked, "--aligned", "--cfg", "demo") == 2
        assert "cannot write" in capsys.readouterr().err
    assert not list(tmp_path.rglob("manifest_*.json"))


# ---- bad files ----------------------------------------------------------------------------------

def _png_bomb(path: Path, side: int = 16000) -> Path:
    """A valid grey PNG of side x side zero pixels, a few hundred KB on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    comp, row, parts = zlib.compressobj(9), bytes(side + 1), []
    for _ in range(side):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    """The bad-input folder: a decompression bomb, an animated GIF, a truncated file, a text file, one face."""
    root = tmp_path_factory.mktemp("bad")
    _png_bomb(root / "bomb.png")
    frames = [Image.fromarray(np.full((40, 40, 3), v, np.uint8)) for v in (40, 200)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    _faces(root, ["good.png"], size=40)
    (root / "cut.jpg").write_bytes(cv2.imencode(".jpg", np.zeros((40, 40, 3), np.uint8))[1].tobytes()[:300])
    (root / "notes.png").write_text("not an image")
    return root


@pytest.mark.parametrize("aligned", [True, False])
def test_bad_folder_is_reported_file_by_file(tiny_cfg, bad_folder, tmp_path, capsys, monkeypatch, aligned):
    decode = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda data, flags: decode(data, flags) if len(data) < 100_000
                        else pytest.fail("the bomb was decoded"))
    out = tmp_path / "out"
    assert _run("-i", bad_folder, "-o", out, "--cfg", tiny_cfg, *(["--aligned"] if aligned else [])) == 1
    err = capsys.readouterr().err
    assert "bomb.png" in err and "megapixels" in err and "not decoded" in err
    assert "animated GIF with 2 frames" in err
    records = {Path(r["input"]).name: r for r in _manifest(out)["images"]}
    assert set(records) == {"bomb.png", "anim.gif", "good.png", "cut.jpg", "notes.png"}
    assert {n for n, r in records.items() if r["status"] == "failed"} == {"bomb.png", "cut.jpg", "notes.png"}
    assert "None s per image" not in err


def test_bomb_refused_from_header_by_image_io(bad_folder, monkeypatch):
    from datapipe.image_io import ImageReadError, image_size
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded"))
    assert image_size(bad_folder / "bomb.png") == (16000, 16000)
    with pytest.raises(ImageReadError, match="16000x16000 = 256.0 megapixels"):
        read_image(bad_folder / "bomb.png", max_pixels=40e6)


# ---- options --------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [["--upscale", "0"], ["-s", "-1"], ["--num-samples", "0"], ["--start-step", "-1"]])
def test_bad_numbers_are_usage_errors(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as e:
        _run("-i", tmp_path, "-o", tmp_path / "o", *flags)
    assert e.value.code == 2 and "must be" in capsys.readouterr().err


@pytest.mark.parametrize("flags, says", [
    (["--steps", "5000"], "cannot take 5000 distinct steps"),
    (["sampling.grid=ddim333"], "ddim333"),
    (["--sampler", "euler"], "sampling.sampler"),
    (["--task", "inpainting", "--cfg", "demo"], "does not fit"),
    (["--task", "restoration", "--cfg", "inpaint_ffhq256"], "does not fit"),
])
def test_bad_settings_are_clear_errors(tmp_path, capsys, flags, says):
    src = _faces(tmp_path / "in", ["a.png"])
    assert _run("-i", src, "-o", tmp_path / "o", "--aligned", *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and says in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_start_step_zero_is_the_estimator_alone(tiny_cfg, tmp_path, capsys):
    src = _faces(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    assert _run("-i", src, "-o", out, "--aligned", "--cfg", tiny_cfg, "--start-step", 0, "--save-estimate") == 0
    assert "estimator's output alone" in capsys.readouterr().err
    assert torch.equal(read_image(out / "a.png"), read_image(out / "estimates" / "a.png"))


def test_half_precision_on_cpu_falls_back_and_says_so(tiny_cfg, tmp_path, capsys, monkeypatch):
    src = _faces(tmp_path / "in", ["a.png"])
    assert _run("-i", src, "-o", tmp_path / "o", "--aligned", "--cfg", tiny_cfg, "--device", "cpu",
                "--dtype", "fp16") == 0
    err = capsys.readouterr().err
    assert "running in fp32" in err and "(fp32)" in err
    import models.runtime as pipeline
    monkeypatch.setattr(pipeline, "_cpu_has_bf16", lambda: False)
    assert pipeline.pick_dtype("bf16", torch.device("cpu"))[0] == "fp32"
    monkeypatch.setattr(pipeline, "_cpu_has_bf16", lambda: True)
    assert pipeline.pick_dtype("bf16", torch.device("cpu")) == ("bf16", None)
    # GPUs before Ampere (V100: 7.0, T4: 7.5) only emulate bf16; torch.cuda.is_bf16_supported() says yes
    for capability, expected in (((7, 0), "fp32"), ((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert pipeline.pick_dtype("bf16", torch.device("cuda", 0))[0] == expected, capability


def test_cpu_bf16_flag_is_read_from_cpuinfo(tmp_path, monkeypatch):
    import models.runtime as pipeline
    monkeypatch.setattr(torch._C, "_cpu", None, raising=False)
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu avx2 avx512f\n")
    assert pipeline._cpu_has_bf16(str(info)) is False
    info.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert pipeline._cpu_has_bf16(str(info)) is True
    assert pipeline._cpu_has_bf16(str(tmp_path / "none")) is None


def test_help_is_fast_without_torch_and_shows_real_defaults():
    code = ("import sys\nfrom difface import cli as inference\n"
            "try:\n    inference.parse_args(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH', 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "TORCH False" in text and "(default: None)" not in text and "(default: False)" not in text
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ") and "px, N=" in line}
    assert "N=400" in rows["difface_ffhq512"] and "N=30" in rows["demo"] and "N=480" in rows["inpaint_ffhq256"]
    assert "FFHQ" in text and "--only-center-face" in text and "-s UPSCALE" in text


# ---- conveniences ---------------------------------------------------------------------------------

def test_ext_and_save_cmp(tiny_cfg, tmp_path):
    src = _faces(tmp_path / "in", ["a.jpg", "b.png"])
    out = tmp_path / "out"
    assert _run("-i", src, "-o", out, "--aligned", "--cfg", tiny_cfg, "--ext", "auto", "--save-cmp") == 0
    assert (out / "a.jpg").is_file() and (out / "b.png").is_file()
    assert read_image(out / "cmp" / "b.png").shape == (3, 32, 64)
    out = tmp_path / "jpg"
    assert _run("-i", src, "-o", out, "--aligned", "--cfg", tiny_cfg, "--ext", "jpg") == 0
    assert sorted(p.name for p in out.glob("*.*g")) == ["a.jpg", "b.jpg"]


def test_estimate_is_computed_once_per_face(tiny_cfg):
    import difface
    restorer = difface.Restorer(str(tiny_cfg), device="cpu", overrides=["num_samples=3", "batch_size=2"])
    method = restorer.method
    calls, estimator = [], method.estimator
    method.estimator = lambda y: calls.append(len(y)) or estimator(y)
    crops = torch.rand(3, 3, 32, 32)
    samples, estimates, _ = restorer.restore_crops(method, crops, ["a", "b", "c"], restorer.cfg.seed, 3)
    assert calls == [2, 1], "one estimator call per batch, not per sample"
    assert len(samples) == 3 and not torch.equal(samples[0], samples[1])
    method.estimator = estimator
    from models.difface import image_generator
    # The samples of a batch run together (6 chains here); each equals the restoration of its face
    # alone from its own (seed, name, k) generator, to float rounding (another summation order).
    for j, key in enumerate("abc"):
        for k in range(3):
            alone = method.restore(crops[j:j + 1], generator=[image_generator(restorer.cfg.seed, key, k)])
            assert (alone.sample[0] - samples[k][j]).abs().max() < 1e-5, (key, k)


def test_console_entry_point_is_declared():
    text = (REPO / "setup.py").read_text()
    assert '"difface = difface.cli:main"' in text


def test_plan_rejects_unknown_extension(tmp_path):
    src = _faces(tmp_path / "in", ["a.png"])
    with pytest.raises(PlanError, match="allowed: auto, png, jpg"):
        plan_jobs(src, tmp_path / "o", False, 1, ext="gif")


# ---- weights ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("download", [False, True])
def test_offline_message_names_every_missing_file(tmp_path, capsys, download):
    src = _faces(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    cache = tmp_path / "weights-cache"  # $DIFFACE_WEIGHTS (the offline fixture); downloads hit a closed port
    assert _run("-i", src, "-o", out, "--aligned", *([] if download else ["--no-download"])) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1
    for name, size in (("swinir_restoration512_L1", 86), ("iddpm_ffhq512_ema500000", 610)):
        assert f"{name}.pth (about {size} MiB)" in err
        assert f"http://127.0.0.1:9/{name}.pth" in err
    assert str(cache / "estimator" / "swinir_restoration512_L1.pth") in err
    assert str(cache / "diffusion" / "iddpm_ffhq512_ema500000.pth") in err
    assert "estimator.weights=" in err and "--cfg demo" in err
    assert ("network error" in err) if download else ("downloading is off" in err)
    assert not out.exists() and not cache.exists(), "no folders are left behind"


def test_download_script_fetches_a_preset(registry_cfg, serve_weights, tmp_path, capsys):
    cfg, served = registry_cfg
    sys.path.insert(0, str(REPO / "scripts"))
    import download_weights
    weights = tmp_path / "w"
    assert download_weights.main(["--preset", str(cfg), "--weights-dir", str(weights)]) == 2  # port 9: closed
    assert "network error" in capsys.readouterr().err and not weights.exists()
    with serve_weights(served):
        assert download_weights.main(["--preset", str(cfg), "--weights-dir", str(weights)]) == 0
    assert (weights / "estimator" / "swinir_restoration512_L1.pth").is_file()
    assert (weights / "diffusion" / "iddpm_ffhq512_ema500000.pth").is_file() and not list(weights.rglob("*.part"))


def test_summary_without_any_finished_image_prints_no_timing(tiny_cfg, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "notes.png").write_text("not an image")
    assert _run("-i", src, "-o", tmp_path / "o", "--aligned", "--cfg", tiny_cfg) == 1
    err = capsys.readouterr().err
    assert "failed 1" in err and "None" not in err and "s per image" not in err


def test_only_center_face_and_upscale_alias(tiny_cfg, tmp_path, face_images):
    import shutil
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(face_images / "lq_whole" / "codeformer_whole_imgs" / "00.jpg", src)  # four people
    out = tmp_path / "out"
    assert _run("-i", src, "-o", out, "--cfg", tiny_cfg, "--allow-downscale", "--only-center-face", "-s", 1,
                "--save-cmp") == 0
    record = _manifest(out)["images"][0]
    assert len(record["faces"]) == 1
    x0, _, x1, _ = record["faces"][0]["box"]
    assert abs((x0 + x1) / 2 - 491 / 2) < 80, "the face nearest the centre"
    size = (512, round(491 * 512 / 310))
    assert read_image(out / "restored_image" / "00.png").shape[-2:] == size
    assert read_image(out / "cmp" / "00.png").shape[-2:] == (size[0], 2 * size[1])
