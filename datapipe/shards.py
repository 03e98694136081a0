"""One batch run split across processes (torchrun), and the merge of what they record.

Under `torchrun --nproc_per_node=G [--nnodes ...] inference.py ...` every process plans the same
jobs (sorted input paths, `datapipe.jobs.plan_jobs`) and takes a fixed share of them:

    job i of the sorted list goes to rank i % WORLD_SIZE        (round robin)

Each rank restores its share on its own device (`cuda:LOCAL_RANK`, or the CPU) and writes its
outputs exactly as a single process would: every image draws from its own generator, seeded by
(seed, relative path, sample), so neither the split nor the batch changes a single bit - at
equal thread counts. On the CPU the thread count changes how sums are split, and with it the
last bit of a float now and then: torchrun sets OMP_NUM_THREADS=1 in every process, so a
launch equals, file for file, a single process run with OMP_NUM_THREADS=1; against a single
process on all cores one pixel in millions may differ by one grey level.

Merging goes through files, not collectives, so that a rank that dies cannot hang the others.
The only collective is one broadcast at the start, while every rank is alive, which gives all
ranks the same run id. Then, under `OUT/.ranks/<run id>/`:

* every rank rewrites `rank<r>.beat` every few seconds ("<host> <pid> <count>") while it lives,
  rank 0 also while it waits for the others;
* every rank writes `rank<r>.json` (its manifest records) once its share is finished, also when
  it failed as a whole (its records then say failed, with the error);
* rank 0 waits for all of them and merges their records into the one manifest. A rank whose
  heartbeat has not changed for `timeout` seconds (rank 0's clock), or whose process is gone
  (same host), is given up: its unreported inputs are recorded as failed. The folder is
  removed after the merge.

Ranks other than 0 exit with status 0 once they have reported (torchrun would otherwise stop
rank 0 before it merges); the status of the whole run is rank 0's. The output folder must be
on a file system every node sees (it is also how a re-run finds finished files).

When a rank dies (SIGKILL, out of memory), torchrun stops the whole launch: it sends SIGTERM to
every other rank and SIGKILL 30 s later. On SIGTERM a rank stops restoring (the image in hand
is abandoned; every file is written under a temporary name, so none is left half-written),
records its unfinished inputs as failed ("stopped") and reports; rank 0 then waits at most
`STOP_GRACE` seconds for the reports of the others, merges what it has and returns the summary
with a `stopped` entry, so the caller writes a partial manifest: done files are listed as done,
the rest as failed with the reason. Running the same command again finishes the run (finished
files are skipped). Only when rank 0 itself is killed is there no manifest; the rank folder of
such a launch is left behind, and the next run in that output folder (any run, torchrun or not)
removes it at its start, once it is certainly stale: every rank that beat in it ran on this
host and is gone (and its beats are older than three beat periods), or nothing in it changed
for `STALE_SECONDS` (ranks of a live launch rewrite their beat every `BEAT_SECONDS`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Sequence

import torch

from .jobs import Job

PARTS_DIR = ".ranks"
BEAT_SECONDS = 5.0
STOP_GRACE = 10.0  # after SIGTERM, rank 0 waits this long for the others' reports (torchrun allows 30 s)
STALE_SECONDS = 300.0  # a rank folder with nothing newer than this is a dead launch's


@dataclass(frozen=True)
class Rank:
    """Where this process stands in a torchrun launch (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, env=os.environ) -> "Rank":
        """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them."""
        rank = cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))
        if not 0 <= rank.rank < rank.world_size:
            raise ValueError(f"RANK={rank.rank} is outside WORLD_SIZE={rank.world_size}")
        return rank

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def share(self, jobs: Sequence[Job]) -> list[Job]:
        """This rank's jobs: those at positions i with i % world_size == rank."""
        return list(jobs[self.rank::self.world_size])

    def device(self, device: torch.device) -> torch.device:
        """A CUDA device becomes this process's own GPU, `cuda:(LOCAL_RANK % GPUs on the node)`."""
        if device.type != "cuda" or not self.distributed:
            return device
        index = self.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)


def shared_run_id(rank: Rank, timeout_s: float = 600.0) -> str:
    """One id for the whole launch, made by rank 0 and broadcast (gloo) to every rank."""
    import torch.distributed as dist

    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo", rank=rank.rank, world_size=rank.world_size,
                                timeout=timedelta(seconds=timeout_s))
    box = [f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}" if rank.rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    if own_group:
        dist.destroy_process_group()
    return box[0]


class Heartbeat:
    """A daemon thread that rewrites `path` with "<host> <pid> <count>" until stopped."""

    def __init__(self, path: Path, every: float = BEAT_SECONDS):
        self.path, self.every = path, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        count, me = 0, f"{socket.gethostname()} {os.getpid()}"
        while True:
            count += 1
            try:
                write_atomic(self.path, f"{me} {count}")
            except OSError:
                pass  # a transient file-system hiccup; the next beat tries again
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def beat_process_gone(beat: str | None) -> bool:
    """True when a beat was written on this host by a process that no longer runs. A beat from
    another host, or in another form, tells nothing (False)."""
    parts = (beat or "").split()
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def clean_stale_parts(out: Path, keep: str | None = None, stale_after: float = STALE_SECONDS,
                      log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> list[Path]:
    """Remove the rank folders under `out/.ranks/` that no live launch uses; return them.

    A folder is stale when nothing in it changed for `stale_after` seconds, or for three beat
    periods when it has beats and every one was written on this host by a process that is gone
    (the wait covers a live rank that shares the host name but not the process table, e.g. in
    another container). Ages are measured against a file written now beside the folders, so the
    file system's clock is compared with itself. `keep` (this launch's run id) is never touched.
    `.ranks/` goes when it is empty.
    """
    root = out / PARTS_DIR
    if not root.is_dir():
        return []
    try:
        probe = root / f".now.{os.getpid()}"
        probe.write_text("")
        now = probe.stat().st_mtime
        probe.unlink()
    except OSError:
        now = time.time()
    removed = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != keep):
        try:
            entries = list(folder.iterdir())
            newest = max([folder.stat().st_mtime] + [e.stat().st_mtime for e in entries])
        except OSError:
            continue  # changing under our eyes: someone is using it
        beats = [_read(e) for e in entries if e.suffix == ".beat"]
        gone = bool(beats) and all(beat_process_gone(b) for b in beats) and now - newest > 3 * BEAT_SECONDS
        if gone or now - newest > stale_after:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            why = "its processes are gone" if gone else f"unchanged for {(now - newest) / 60:.0f} min"
            log(f"removed {folder}: the rank reports of a torchrun launch that stopped before merging ({why})")
    with contextlib.suppress(OSError):
        root.rmdir()  # only when empty
    return removed


class Stopped(BaseException):
    """SIGTERM arrived while this rank was restoring its share (torchrun stopping the launch)."""


class _Termination:
    """While installed (main thread only): the first SIGTERM raises :class:`Stopped` while
    `interrupt` is set, and is only noted (`requested`) once it is cleared."""

    def __init__(self):
        self.requested, self.interrupt = False, True

    def _handle(self, signum, frame) -> None:
        first, self.requested = not self.requested, True
        if first and self.interrupt:
            raise Stopped()

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGTERM, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def report(parts: Path, rank: int, jobs: Sequence[Job]) -> None:
    """Write this rank's records (keyed by the job's relative input path)."""
    parts.mkdir(parents=True, exist_ok=True)
    write_atomic(parts / f"rank{rank}.json", json.dumps({"rank": rank, "records": {j.key: j.record for j in jobs}}))


def collect(parts: Path, world_size: int, timeout: float, poll: float = 0.2,
            stopping: Callable[[], bool] = lambda: False, grace: float = STOP_GRACE) -> dict[int, dict]:
    """Rank 0: the records of every rank that reports. A rank is given up when its heartbeat has
    not changed for `timeout` s or its process is gone (same host); once `stopping()` turns true,
    the others are waited for `grace` s more at most.

    Returns {rank: {job key: record}} for the ranks that reported (rank 0 included, if it did).
    """
    reported: dict[int, dict] = {}
    given_up: set[int] = set()
    last_beat: dict[int, tuple[str | None, float]] = {r: (None, time.monotonic()) for r in range(world_size)}
    deadline = None
    while len(reported) + len(given_up) < world_size:
        for r in range(world_size):
            if r in reported or r in given_up:
                continue
            part = parts / f"rank{r}.json"
            seen = _read(parts / f"rank{r}.beat")
            if part.is_file():  # checked after the beat: a rank reports before its process ends
                reported[r] = json.loads(part.read_text())["records"]
            elif beat_process_gone(seen):
                given_up.add(r)
            elif seen != last_beat[r][0]:
                last_beat[r] = (seen, time.monotonic())
        waiting = [r for r in range(world_size) if r not in reported and r not in given_up]
        if waiting and all(time.monotonic() - last_beat[r][1] > timeout for r in waiting):
            break
        if deadline is None and stopping():
            deadline = time.monotonic() + grace
        if deadline is not None and time.monotonic() > deadline:
            break
        time.sleep(poll)
    return reported


def merge(jobs: Sequence[Job], reported: dict[int, dict], world_size: int, timeout: float, out: Path) -> None:
    """Put every rank's records into `jobs` (all planned jobs, in order); unreported ones fail."""
    for i, job in enumerate(jobs):
        r = i % world_size
        record = reported.get(r, {}).get(job.key)
        if record is None:
            record = {**job.paths(out), "status": "failed",
                      "error": f"{job.source}: rank {r} did not report (its process ended, or was silent "
                               f"for {timeout:g} s)"}
        job.record = {**record, "rank": r}


def _restore_share(run_fn: Callable[[list[Job]], dict], mine: list[Job], rank: Rank, out: Path,
                   termination: _Termination) -> None:
    """`run_fn(mine)`; a failure or SIGTERM marks the unfinished jobs failed with the reason."""
    try:
        try:
            if mine:
                run_fn(mine)
        finally:
            termination.interrupt = False  # from here on SIGTERM is only noted
    except Stopped:
        reason = f"rank {rank.rank} was stopped (SIGTERM, the launch ended) before finishing it"
    except Exception as e:  # noqa: BLE001 - reported in the manifest, the other ranks go on
        print(f"error: rank {rank.rank}: {e}", file=sys.stderr)
        reason = f"rank {rank.rank} failed: {e}"
    else:
        return
    for job in mine:
        if job.record.get("status") in (None, ""):
            job.record.update(**job.paths(out), status="failed", error=f"{job.source}: {reason}")


def run_sharded(run_fn: Callable[[list[Job]], dict], jobs: list[Job], out: Path,
                summarise: Callable[[list[Job]], dict], timeout: float = 120.0,
                rank: Rank | None = None) -> dict | None:
    """Run `run_fn` on this rank's share; on rank 0 return the summary of the merged run.

    Alone (no torchrun) this is `run_fn(jobs)`. Under torchrun: ranks other than 0 return None
    after reporting; an exception inside `run_fn`, or SIGTERM, marks this rank's unfinished jobs
    failed with the reason instead of stopping the launch. After a SIGTERM rank 0's summary has
    a `stopped` entry (the manifest written from it is partial). Rank 0, or the single process,
    first removes stale rank folders of earlier launches (:func:`clean_stale_parts`).
    """
    rank = rank or Rank.from_env()
    if not rank.distributed:
        clean_stale_parts(out)
        return run_fn(jobs)
    run_id = shared_run_id(rank)
    if rank.rank == 0:
        clean_stale_parts(out, keep=run_id)
    parts = out / PARTS_DIR / run_id
    parts.mkdir(parents=True, exist_ok=True)
    mine = rank.share(jobs)
    termination = _Termination()
    with termination.installed(), Heartbeat(parts / f"rank{rank.rank}.beat"):
        _restore_share(run_fn, mine, rank, out, termination)
        report(parts, rank.rank, mine)
        failed = sum(j.record.get("status") == "failed" for j in mine)
        print(f"rank {rank.rank}: {len(mine)} input(s), {failed} failed; reported", file=sys.stderr)
        if rank.rank != 0:
            return None
        reported = collect(parts, rank.world_size, timeout, stopping=lambda: termination.requested)
    merge(jobs, reported, rank.world_size, timeout, out)
    shutil.rmtree(parts, ignore_errors=True)
    with contextlib.suppress(OSError):
        parts.parent.rmdir()  # only when no other run's folder is in it
    summary = summarise(jobs)
    if termination.requested:
        summary["stopped"] = ("SIGTERM: the launch was stopped (a rank died, or it was cancelled); the "
                              "manifest lists what the ranks reported, the rest as failed; run the same "
                              "command again to finish")
        print(f"rank 0: stopped by SIGTERM; merged the reports of ranks {sorted(reported)}; "
              "run the same command again to finish", file=sys.stderr)
    return summary
