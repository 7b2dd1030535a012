"""The check across processes and cores: torch.distributed ranks and thread counts.

``torchrun --nproc-per-node N -m saekit check ...`` starts N ranks; each runs every N-th
batch of token windows (gloo on CPU, NCCL on CUDA) and the results reduce exactly (see
saekit.harness.latent_stats and saekit.harness.metrics), so rank 0 writes what one process
would. Threads per rank follow the CPUs this process may use (affinity and cgroup quota)
divided among the ranks on this machine, so ranks never oversubscribe the cores; a single
process also leaves out the CPUs other processes keep busy when it starts (busy_cpus), since
torch's threads wait for each other and one descheduled thread stalls them all.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 (cpu.max) or
    v1 (cfs_quota_us / cfs_period_us) CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, int(quota + 0.999)))
    return max(1, n)


def _cpu_jiffies(cpus: set[int]) -> tuple[int, int]:
    """(busy, total) jiffies of ``cpus`` since boot, from /proc/stat's per-CPU lines."""
    busy = total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            v = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(v)
            busy += sum(v) - v[3] - v[4]
    return busy, total


def busy_cpus(window: float = 0.2) -> float:
    """How many of this process's CPUs other processes kept busy over ``window`` seconds
    (this process's own CPU time, e.g. threads still spinning, left out); 0 where
    /proc/stat cannot be read."""
    try:
        cpus = set(os.sched_getaffinity(0))
        b0, t0 = _cpu_jiffies(cpus)
        own0 = sum(os.times()[:2])
        time.sleep(window)
        b1, t1 = _cpu_jiffies(cpus)
        own1 = sum(os.times()[:2])
    except (AttributeError, OSError, ValueError):
        return 0.0
    if t1 <= t0:
        return 0.0
    busy = (b1 - b0) / (t1 - t0) * len(cpus)
    return max(0.0, busy - (own1 - own0) / window)


def _cgroup_quota() -> float | None:
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if q > 0 and p > 0:
            return q / p
    except (OSError, ValueError):
        pass
    return None


def local_world_size() -> int:
    """Ranks on this machine (torchrun's LOCAL_WORLD_SIZE), 1 outside torchrun."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def local_rank() -> int:
    """This rank's index on its machine (torchrun's LOCAL_RANK), 0 outside torchrun."""
    try:
        return max(0, int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        return 0


def rank_device(device: str) -> str:
    """The device this rank runs on: a bare ``cuda`` under torchrun is this rank's GPU
    (``cuda:LOCAL_RANK``), so N ranks on one node use N GPUs, not all the first one."""
    if device == "cuda" and local_world_size() > 1:
        return f"cuda:{local_rank()}"
    return device


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: ``threads``, or this process's share of the CPUs it may
    use (a single process: less the CPUs others keep busy now). Inter-op threads stay at 1
    and tokenizers run single-threaded (the check has no data-loader workers), so nothing
    else competes for the cores. Returns the count."""
    import torch

    world = local_world_size()
    n = threads or max(1, available_cpus() // world)
    if not threads and world == 1 and n > 1:
        n = max(1, n - round(busy_cpus()))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once, or parallel work already started
        pass
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    return n


def init() -> tuple[int, int]:
    """(rank, world size): joins the torchrun process group when launched by torchrun."""
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        if not dist.is_torchelastic_launched() or int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return 0, 1
        import torch

        if torch.cuda.is_available():  # one GPU per rank: NCCL and the object collectives use it
            torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def my_batches(n_batches: int) -> list[int]:
    """This rank's batch indices: every world-th batch, starting at its rank."""
    rank, world = rank_world()
    return list(range(rank, n_batches, world))


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a list of one when not distributed)."""
    import torch.distributed as dist

    rank, world = rank_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def gather_to_root(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (a list in rank order; a list of one when not
    distributed), None on the others: only rank 0 receives and unpickles the parts."""
    import torch.distributed as dist

    rank, world = rank_world()
    if world == 1:
        return [obj]
    out: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    import torch.distributed as dist

    if rank_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
