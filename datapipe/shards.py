"""One batch run split across processes (torchrun), and the merge of what they record.

Under `torchrun --nproc_per_node=G [--nnodes ...] inference.py ...` every process plans the same
jobs (sorted input paths, `datapipe.jobs.plan_jobs`) and takes a fixed share of them:

    job i of the sorted list goes to rank i % WORLD_SIZE        (round robin)

Each rank restores its share on its own device (`cuda:LOCAL_RANK`, or the CPU) and writes its
outputs exactly as a single process would: every image draws from its own generator, seeded by
(seed, relative path, sample), so neither the split nor the batch changes a single bit.

Merging goes through files, not collectives, so that a rank that dies cannot hang the others.
The only collective is one broadcast at the start, while every rank is alive, which gives all
ranks the same run id. Then, under `OUT/.ranks/<run id>/`:

* every rank other than 0 rewrites `rank<r>.beat` every few seconds (a counter) while it lives;
* every rank writes `rank<r>.json` (its manifest records) once its share is finished, also when
  it failed as a whole (its records then say failed, with the error);
* rank 0 waits for all of them and writes the one merged manifest. A rank whose heartbeat has
  not changed for `timeout` seconds (rank 0's clock) is given up: its unreported inputs are
  recorded as failed. The folder is removed after the merge.

Ranks other than 0 exit with status 0 once they have reported (torchrun would otherwise stop
rank 0 before it merges); the status of the whole run is rank 0's. The output folder must be
on a file system every node sees (it is also how a re-run finds finished files).
"""
from __future__ import annotations

import json
import os
import shutil
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
    """A daemon thread that rewrites `path` with a growing counter until stopped."""

    def __init__(self, path: Path, every: float = BEAT_SECONDS):
        self.path, self.every = path, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        count = 0
        while True:
            count += 1
            try:
                write_atomic(self.path, str(count))
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


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def report(parts: Path, rank: int, jobs: Sequence[Job]) -> None:
    """Write this rank's records (keyed by the job's relative input path)."""
    write_atomic(parts / f"rank{rank}.json", json.dumps({"rank": rank, "records": {j.key: j.record for j in jobs}}))


def collect(parts: Path, world_size: int, timeout: float, poll: float = 0.2) -> dict[int, dict]:
    """Rank 0: the records of every rank that reports; a silent rank is given up after `timeout` s.

    Returns {rank: {job key: record}} for the ranks that reported (rank 0 included, if it did).
    """
    reported: dict[int, dict] = {}
    last_beat: dict[int, tuple[str | None, float]] = {r: (None, time.monotonic()) for r in range(world_size)}
    while len(reported) < world_size:
        for r in range(world_size):
            if r in reported:
                continue
            part = parts / f"rank{r}.json"
            if part.is_file():
                reported[r] = json.loads(part.read_text())["records"]
                continue
            beat = parts / f"rank{r}.beat"
            seen = beat.read_text() if beat.is_file() else None
            if seen != last_beat[r][0]:
                last_beat[r] = (seen, time.monotonic())
        waiting = [r for r in range(world_size) if r not in reported]
        silent = [r for r in waiting if time.monotonic() - last_beat[r][1] > timeout]
        if waiting and len(silent) == len(waiting):
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
                      "error": f"{job.source}: rank {r} did not report (stopped, or silent for {timeout:g} s)"}
        job.record = {**record, "rank": r}


def run_sharded(run_fn: Callable[[list[Job]], dict], jobs: list[Job], out: Path,
                summarise: Callable[[list[Job]], dict], timeout: float = 120.0,
                rank: Rank | None = None) -> dict | None:
    """Run `run_fn` on this rank's share; on rank 0 return the summary of the merged run.

    Alone (no torchrun) this is `run_fn(jobs)`. Under torchrun: ranks other than 0 return None
    after reporting; an exception inside `run_fn` marks this rank's unfinished jobs failed with
    its message instead of stopping the launch.
    """
    rank = rank or Rank.from_env()
    if not rank.distributed:
        return run_fn(jobs)
    parts = out / PARTS_DIR / shared_run_id(rank)
    parts.mkdir(parents=True, exist_ok=True)
    mine = rank.share(jobs)
    with Heartbeat(parts / f"rank{rank.rank}.beat"):
        try:
            if mine:
                run_fn(mine)
        except Exception as e:  # noqa: BLE001 - reported in the manifest, the other ranks go on
            print(f"error: rank {rank.rank}: {e}", file=sys.stderr)
            for job in mine:
                if job.record.get("status") in (None, ""):
                    job.record.update(**job.paths(out), status="failed",
                                      error=f"{job.source}: rank {rank.rank} failed: {e}")
        report(parts, rank.rank, mine)
    failed = sum(j.record.get("status") == "failed" for j in mine)
    print(f"rank {rank.rank}: {len(mine)} input(s), {failed} failed; reported", file=sys.stderr)
    if rank.rank != 0:
        return None
    merge(jobs, collect(parts, rank.world_size, timeout), rank.world_size, timeout, out)
    shutil.rmtree(parts, ignore_errors=True)
    try:
        parts.parent.rmdir()  # only when no other run's folder is in it
    except OSError:
        pass
    return summarise(jobs)
