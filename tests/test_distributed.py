"""inference.py under torchrun: two CPU processes (gloo) write the files one process writes, byte for byte;
what happens when a rank dies; stale rank folders."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from datapipe.image_io import write_image
from datapipe.jobs import plan_jobs
from datapipe.shards import PARTS_DIR, Rank, clean_stale_parts, collect, merge, report, run_sharded

REPO = Path(__file__).resolve().parents[1]
NAMES = ["a.png", "b.png", "c.jpg", "d.png", "sub/e.png"]


def _inputs(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    for k, name in enumerate(NAMES):
        write_image(folder / name, rng.integers(0, 256, (32 + 8 * (k % 2), 32, 3), dtype=np.uint8))
    (folder / "broken.png").write_bytes(b"this is not a png")
    return folder


# torchrun gives every process OMP_NUM_THREADS=1. CPU results are bit-identical only at equal
# thread counts (the thread count changes how sums are split), so the single process it is
# compared with runs with one thread too.
ONE_THREAD = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _torchrun(src: Path, out: Path, cfg: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO / "inference.py"), "-i", str(src), "-o", str(out), "--aligned", "--recursive",
           "--cfg", str(cfg), "--device", "cpu", "--num-samples", "2", "--save-estimate"]
    return subprocess.run(cmd, env=ONE_THREAD, capture_output=True, text=True, timeout=300)


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
    alone = subprocess.run([sys.executable, str(REPO / "inference.py")] + [str(a) for a in common], env=ONE_THREAD,
                           capture_output=True, text=True, timeout=300)
    assert alone.returncode == 1, alone.stderr[-3000:]  # broken.png fails
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


# ---- a rank that dies, and what it leaves ------------------------------------------------------

_LAUNCH = """
import json, os, signal, sys, time
from pathlib import Path
from datapipe.jobs import Job
from datapipe.shards import Rank, run_sharded

out = Path(sys.argv[1])
jobs = [Job(source=out / f"in{i}.png", key=f"in{i}.png", stem=Path(f"in{i}"), outputs=[out / f"o{i}.png"])
        for i in range(9)]
rank = Rank.from_env()

def restore(share):
    for n, job in enumerate(share):
        if rank.rank == 2 and n == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # rank 2 dies after its first input
        time.sleep({0: 0.1, 1: 30}[n] if rank.rank < 2 else 2)  # ranks 0 and 1 are in their second when it dies
        job.record.update(status="done")

def summarise(jobs):
    return {s: sum(j.record.get("status") == s for j in jobs) for s in ("done", "failed")}

summary = run_sharded(restore, jobs, out, summarise, timeout=60)
if summary is not None:
    (out / "summary.json").write_text(json.dumps({"summary": summary, "records": [j.record for j in jobs]}))
"""


def test_a_killed_rank_stops_the_launch_and_rank_0_writes_what_was_reported(tmp_path):
    """torchrun answers a SIGKILLed rank by sending SIGTERM to the others: ranks 0 and 1 stop and
    report what they finished, rank 0 merges at once (the dead rank's process is gone) and
    returns a summary marked stopped, from which the caller writes a partial manifest."""
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "launch.py").write_text(_LAUNCH)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3",
                           str(tmp_path / "launch.py"), str(out)], env=ONE_THREAD, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - start < 60, "rank 0 must not wait out its 30 s input nor the 60 s rank timeout"
    result = json.loads((out / "summary.json").read_text())
    records = result["records"]
    assert [r["status"] for r in records] == ["done", "done"] + ["failed"] * 7
    for i in (3, 6, 4, 7):
        assert f"rank {i % 3} was stopped (SIGTERM" in records[i]["error"]
    for i in (2, 5, 8):  # rank 2 finished in2 but died before reporting it; a rerun redoes it
        assert "rank 2 did not report (its process ended" in records[i]["error"]
    assert result["summary"] == {"done": 2, "failed": 7, "stopped": result["summary"]["stopped"]}
    assert "run the same command again" in result["summary"]["stopped"]
    assert "rank 0: stopped by SIGTERM; merged the reports of ranks [0, 1]" in proc.stderr
    assert not (out / PARTS_DIR).exists(), "rank 0 removes the rank folder after the merge"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_rank_folders_are_removed_and_live_ones_kept(tmp_path):
    root = tmp_path / PARTS_DIR
    host = socket.gethostname()
    folders = {
        "old": ("elsewhere 123 9", 3600),  # another host, nothing changed for an hour
        "dead": (f"{host} {_dead_pid()} 3", 60),  # this host, its process gone a minute ago
        "just_died": (f"{host} {_dead_pid()} 3", 0),  # the same, a moment ago: left for a later run
        "alive": (f"{host} {os.getpid()} 2", 60),  # as "dead", but its process runs
        "remote": ("elsewhere 123 9", 0),  # another host, beating recently
        "mine": (f"{host} {_dead_pid()} 1", 3600),  # this launch's own folder is never touched
    }
    for name, (beat, age) in folders.items():
        (root / name).mkdir(parents=True)
        (root / name / "rank0.beat").write_text(beat)
        then = time.time() - age
        for p in (root / name / "rank0.beat", root / name):
            os.utime(p, (then, then))
    (root / "starting").mkdir()  # made a moment ago, no beat yet
    logs = []
    removed = clean_stale_parts(tmp_path, keep="mine", log=logs.append)
    assert sorted(p.name for p in removed) == ["dead", "old"]
    assert sorted(p.name for p in root.iterdir()) == ["alive", "just_died", "mine", "remote", "starting"]
    assert len(logs) == 2 and "processes are gone" in logs[0] and "unchanged for 60 min" in logs[1]


def test_a_run_starts_by_removing_stale_rank_folders_and_the_empty_parts_folder(tmp_path):
    stale = tmp_path / PARTS_DIR / "20240101-000000-deadbeef"
    stale.mkdir(parents=True)
    (stale / "rank1.beat").write_text(f"{socket.gethostname()} {_dead_pid()} 4")
    (stale / "rank1.json").write_text("{}")
    for p in (stale / "rank1.beat", stale / "rank1.json", stale):
        os.utime(p, (time.time() - 60, time.time() - 60))
    ran = []
    assert run_sharded(lambda jobs: ran.append(jobs) or {"done": 0}, [], tmp_path, lambda j: {},
                       rank=Rank(0, 1)) == {"done": 0}
    assert ran == [[]] and not (tmp_path / PARTS_DIR).exists()


def test_a_rank_whose_process_is_gone_is_given_up_at_once(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    report(parts, 0, [])
    (parts / "rank1.beat").write_text(f"{socket.gethostname()} {_dead_pid()} 5")
    start = time.monotonic()
    assert set(collect(parts, 2, timeout=60, poll=0.02)) == {0}
    assert time.monotonic() - start < 5
    # once stopping, the others are waited for `grace` seconds at most
    (parts / "rank1.beat").write_text("elsewhere 1 1")
    start = time.monotonic()
    assert set(collect(parts, 2, timeout=60, poll=0.02, stopping=lambda: True, grace=0.3)) == {0}
    assert time.monotonic() - start < 5
