"""The bundled demo model: the quick start runs offline and restores the examples."""
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from datapipe.image_io import read_image
from difface.pipeline import load_config

REPO = Path(__file__).resolve().parents[1]


def test_bundled_weights_match_the_demo_config():
    cfg = load_config("demo")
    for spec in (cfg.estimator, cfg.prior):
        path = REPO / spec.weights
        assert path.is_file(), f"bundled weight file missing: {path}"
        assert load_file(path), path
    total = sum(p.stat().st_size for p in (REPO / "weights").rglob("*.safetensors"))
    assert total < 60 * 2 ** 20, f"bundled weights take {total / 2 ** 20:.1f} MiB"


def test_quickstart_restores_the_examples_offline(tmp_path):
    out = tmp_path / "quick"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "quickstart.py"), "--out", str(out),
                           "--device", "cpu"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "model 'DifFace demo" in proc.stderr.splitlines()[0]
    faces = sorted((REPO / "examples" / "faces").glob("*.png"))
    for src in faces:
        assert read_image(out / "faces" / src.name).shape == read_image(src).shape
    photo = out / "photos" / "restored_image" / "group_00.png"
    assert read_image(photo).shape[-2:] == (2 * 512, 2 * round(491 * 512 / 310))
    assert len(list((out / "photos" / "restored_faces").glob("group_00_*.png"))) >= 4
    assert "face(s) restored" in proc.stderr
