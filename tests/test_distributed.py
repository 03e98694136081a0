"""inference.py under torchrun: two CPU processes (gloo) write the files one process writes, byte for byte."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from difface import cli as inference
from datapipe.image_io import write_image
from datapipe.jobs import plan_jobs
from datapipe.shards import Rank, collect, merge, report

REPO = Path(__file__).resolve().parents[1]
NAMES = ["a.png", "b.png", "c.jpg", "d.png", "sub/e.png"]


def _inputs(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    for k, name in enumerate(NAMES):
        write_image(folder / name, rng.integers(0, 256, (32 + 8 * (k % 2), 32, 3), dtype=np.uint8))
    (folder / "broken.png").write_bytes(b"this is not a png")
    return folder


def _torchrun(src: Path, out: Path, cfg: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO / "inference.py"), "-i", str(src), "-o", str(out), "--aligned", "--recursive",
           "--cfg", str(cfg), "--device", "cpu", "--num-samples", "2", "--save-estimate"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def _manifest(out: Path) -> dict:
    found = sorted(out.glob("manifest_*.json"))
    assert len(found) == 1, f"expected one manifest, got {found}"
    return json.loads(found[0].read_text())


def test_two_ranks_write_what_one_process_writes_and_resume(tiny_cfg, tmp_path):
    src = _inputs(tmp_path / "in")
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["-i", src, "-o", one, "--aligned", "--recursive", "--cfg", tiny_cfg, "--device", "cpu",
              "--num-samples", "2", "--save-estimate"]
    assert inference.main([str(a) for a in common]) == 1  # broken.png fails
    expected = _files(one)
    assert len(expected) == 3 * len(NAMES)  # two samples and an estimate per face

    # A pre-empted run finished a.png (rank 0's) and b.png (rank 1's); the same command resumes it.
    for name in ("a_s0.png", "a_s1.png", "estimates/a.png", "b_s0.png", "b_s1.png", "estimates/b.png"):
        (two / name).parent.mkdir(parents=True, exist_ok=True)
        (two / name).write_bytes(expected[name])
    proc = _torchrun(src, two, tiny_cfg)
    assert proc.returncode != 0, "rank 0 must report the failed file through the exit status"
    assert f'File "{REPO}' not in proc.stderr, proc.stderr[-3000:]  # only torchrun's own failure report
    assert _files(two) == expected, "2 ranks must write the same files, byte for byte, as 1 process"

    manifest = _manifest(two)
    records = manifest["images"]
    # manifest paths are relative to the output folder
    keys = [Path(os.path.normpath(two / r["input"])).relative_to(src).as_posix() for r in records]
    assert keys == sorted(NAMES + ["broken.png"])  # every input once, in the planned order
    by_key = dict(zip(keys, records))
    assert by_key["broken.png"]["status"] == "failed" and "not an image" in by_key["broken.png"]["error"]
    assert [by_key[n]["status"] for n in NAMES] == ["skipped", "skipped", "done", "done", "done"]
    assert [by_key[n]["rank"] for n in sorted(by_key)] == [0, 1, 0, 1, 0, 1]
    assert manifest["summary"] == {**manifest["summary"], "done": 3, "skipped": 2, "failed": 1}
    assert not (two / ".ranks").exists(), "the per-rank reports are removed after the merge"


def test_assignment_is_round_robin_over_sorted_inputs(tmp_path):
    src = _inputs(tmp_path / "in")
    jobs = plan_jobs(src, tmp_path / "out", True, 1)
    shares = [[j.key for j in Rank(r, 3, r).share(jobs)] for r in range(3)]
    assert shares == [["a.png", "c.jpg"], ["b.png", "d.png"], ["broken.png", "sub/e.png"]]


def test_a_silent_rank_is_given_up_and_its_files_marked_failed(tmp_path):
    src = _inputs(tmp_path / "in")
    jobs = plan_jobs(src, tmp_path / "out", True, 1)
    parts = tmp_path / "parts"
    parts.mkdir()
    mine = Rank(0, 2).share(jobs)
    for job in mine:
        job.record.update(input=str(job.source), status="done")
    report(parts, 0, mine)
    (parts / "rank1.beat").write_text("7")  # rank 1 started, then stopped beating
    start = time.monotonic()
    reported = collect(parts, 2, timeout=0.5, poll=0.05)
    assert time.monotonic() - start < 5
    merge(jobs, reported, 2, 0.5, tmp_path)
    status = {j.key: j.record["status"] for j in jobs}
    assert status == {"a.png": "done", "b.png": "failed", "broken.png": "done", "c.jpg": "failed",
                      "d.png": "done", "sub/e.png": "failed"}
    assert "rank 1 did not report" in jobs[1].record["error"]


def test_a_beating_rank_is_waited_for(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    report(parts, 0, [])

    def late_rank():
        for k in range(6):  # beats for 0.6 s, longer than the timeout, then reports
            (parts / "rank1.beat").write_text(str(k))
            time.sleep(0.1)
        report(parts, 1, [])

    import threading
    thread = threading.Thread(target=late_rank)
    thread.start()
    reported = collect(parts, 2, timeout=0.3, poll=0.02)
    thread.join()
    assert set(reported) == {0, 1}


def test_cuda_device_follows_local_rank(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: None)
    assert Rank(5, 8, 5).device(torch.device("cuda")) == torch.device("cuda", 1)
    assert Rank(5, 8, 5).device(torch.device("cpu")) == torch.device("cpu")
    assert Rank(0, 1, 0).device(torch.device("cuda")) == torch.device("cuda")


def test_an_interrupted_write_leaves_no_output_a_rerun_would_skip(tmp_path, monkeypatch):
    target = tmp_path / "face.png"

    def killed(*args):
        raise KeyboardInterrupt  # the process is stopped between writing and naming the file

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_image(target, np.zeros((8, 8, 3), np.uint8))
    assert not target.exists()
