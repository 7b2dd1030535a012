"""The check across processes and cores: torch.distributed ranks and thread counts.

``torchrun --nproc-per-node N -m saekit check ...`` starts N ranks; each runs every N-th
batch of token windows (gloo on CPU, NCCL on CUDA) and the results reduce exactly (see
saekit.harness.latent_stats and saekit.harness.metrics), so rank 0 writes what one process
would. Threads per rank follow the CPUs this process may use (affinity and cgroup quota)
divided among the ranks on this machine, so ranks never oversubscribe the cores.
"""

from __future__ import annotations

import os
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


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: ``threads``, or this process's share of the CPUs it may
    use. Inter-op threads stay at 1 and tokenizers run single-threaded (the check has no
    data-loader workers), so nothing else competes for the cores. Returns the count."""
    import torch

    n = threads or max(1, available_cpus() // local_world_size())
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


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    import torch.distributed as dist

    if rank_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
