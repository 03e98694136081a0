"""The built wheel: install requirements as ranges (an existing torch is kept), test and web packages
only in extras, presets and demo weights inside the package, and the installed command restoring a
face from another folder without the repository."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FACE = REPO / "examples" / "faces" / "8_0_1_20170110215727788.png"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(REPO)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "TMPDIR": str(build), "PIP_NO_INDEX": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return next(out.glob("difface-*.whl"))


def test_wheel_metadata_pins_nothing_and_keeps_extras_apart(wheel):
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
        names = z.namelist()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert any(r.startswith("torch>=") for r in core) and not any("==" in r.split(";")[0] for r in requires)
    for extra_only in ("pytest", "playwright", "gradio", "diffusers", "tensorboard"):
        assert not any(r.startswith(extra_only) for r in core), extra_only
    assert "difface/data/configs/inference/demo.yaml" in names
    assert "difface/data/weights/demo/prior.safetensors" in names
    top = {n.split("/")[0] for n in names if not n.startswith("difface-")}
    assert top == {"difface", "models", "datapipe", "metrics", "training"}, "no generic top-level modules"


def test_installed_command_restores_a_face_from_another_folder(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    code = ("import sys, difface.presets as p; from difface import cli; "
            "assert str(p.data_root()).startswith(sys.argv[1]), p.data_root(); "
            "sys.exit(cli.main(['--cfg', 'demo', '--aligned', '-i', sys.argv[2], '-o', 'OUT', '--device', 'cpu']))")
    proc = subprocess.run([sys.executable, "-c", code, str(target), str(FACE)], cwd=work, capture_output=True,
                          text=True, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin",
                                          "DIFFACE_WEIGHTS_URL_BASE": "http://127.0.0.1:9"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (work / "OUT" / FACE.name).is_file()
    help_text = subprocess.run([sys.executable, "-c", "from difface import cli; cli.parse_args(['--help'])"],
                               cwd=work, capture_output=True, text=True, env={"PYTHONPATH": str(target)}).stdout
    for preset in ("demo", "difface_ffhq512", "difface_ffhq512_fast", "inpaint_ffhq256"):
        assert f"  {preset} " in help_text, preset
