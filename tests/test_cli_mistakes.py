"""What users do by accident on the command line, and what they get back: one clear line, an exit
code, and nothing lost."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from datapipe.image_io import read_image
from difface import cli

pytestmark = pytest.mark.usefixtures("offline")
REPO = Path(__file__).resolve().parents[1]
FACES = sorted((REPO / "examples" / "faces").glob("*.png"))


@pytest.fixture
def faces(tmp_path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for face in FACES[:3]:
        shutil.copy(face, src)
    return src


def test_a_shell_glob_after_i_names_the_stray_arguments(faces, capsys):
    files = [str(p) for p in sorted(faces.iterdir())]
    with pytest.raises(SystemExit) as e:
        cli.main(["-i", *files, "-o", "out", "--cfg", "demo"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert Path(files[1]).name in err and "-i takes one file or folder" in err


def test_a_typo_in_an_override_is_one_line(faces, tmp_path, capsys):
    assert cli.main(["-i", str(faces), "-o", str(tmp_path / "o"), "--cfg", "demo", "sampling.etaa=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: invalid override of 'sampling.etaa': Key 'etaa' not in 'SamplingConfig'. "
                   "Did you mean: 'eta'?"]


def test_save_estimate_needs_aligned(faces, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["-i", str(faces), "-o", str(tmp_path / "o"), "--cfg", "demo", "--save-estimate"])
    assert "--save-estimate works with --aligned" in capsys.readouterr().err


def test_adding_save_cmp_to_a_finished_run_writes_the_comparisons_only(faces, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["-i", str(faces), "-o", str(out), "--cfg", "demo", "--aligned", "--num-samples", "2"]
    assert cli.main(base) == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert cli.main(base) == 0
    assert "skipped 3 input(s) whose outputs exist" in capsys.readouterr().err  # one line, not one per file
    assert cli.main(base + ["--save-cmp"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == stamps, "restorations kept as they were"
    for face in FACES[:3]:
        cmp = read_image(out / "cmp" / face.name)
        h, w = read_image(face).shape[-2:]
        assert cmp.shape[-2:] == (h, 3 * w), "input | sample 0 | sample 1"
        assert np.array_equal(cmp[:, :, w:2 * w], read_image(out / f"{face.stem}_s0.png"))
        assert np.array_equal(cmp[:, :, 2 * w:], read_image(out / f"{face.stem}_s1.png"))


def test_dry_run_shows_the_weights_and_every_planned_file(faces, tmp_path, capsys):
    assert cli.main(["-i", str(faces), "-o", str(tmp_path / "o"), "--cfg", "demo", "--aligned", "--save-cmp",
                     "--save-estimate", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "# prior weights: " in text and "weights/demo/prior.safetensors" in text
    assert f"cmp/{FACES[0].name}" in text and f"estimates/{FACES[0].name}" in text
    assert cli.main(["-i", str(faces), "-o", str(tmp_path / "o"), "--aligned", "--dry-run", "--no-download"]) == 0
    assert "MISSING:" in capsys.readouterr().out


def test_ctrl_c_stops_cleanly_with_a_manifest(faces, tmp_path, capsys, monkeypatch):
    import difface.restorer
    real, calls = difface.restorer.Restorer.restore_aligned, []

    def interrupted_second_time(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(difface.restorer.Restorer, "restore_aligned", interrupted_second_time)
    out = tmp_path / "out"
    assert cli.main(["-i", str(faces), "-o", str(out), "--cfg", "demo", "--aligned"]) == 130
    err = capsys.readouterr().err
    assert "stopped by Ctrl-C: done 1 of 3" in err and "Run the same command again to continue" in err
    manifest = json.loads(next(out.glob("manifest_*.json")).read_text())
    assert [r["status"] for r in manifest["images"]] == ["done", "not run", "not run"]
    assert "stopped" in manifest["summary"]
    assert sorted(p.name for p in out.glob("*.png")) == [FACES[0].name]


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM")
def test_sigterm_stops_cleanly_with_a_manifest(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for k in range(40):
        shutil.copy(FACES[k % len(FACES)], src / f"{k:02d}.png")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(REPO / "inference.py"), "-i", str(src), "-o", str(out), "--cfg",
                             "demo", "--aligned"], stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 120
    while not list(out.glob("*.png")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err
    manifest = json.loads(next(out.glob("manifest_*.json")).read_text())
    done = [r for r in manifest["images"] if r["status"] == "done"]
    assert done and len(done) < 40 and len(list(out.glob("*.png"))) == len(done)
    assert not list(out.glob(".*.part")), "no half-written file"
