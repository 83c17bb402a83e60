"""Running one pipeline over several processes (torchrun + DistributedDataParallel).

A single process (no WORLD_SIZE, or WORLD_SIZE=1) never initialises anything here and every helper is a
no-op, so single-process runs are exactly what they were. Under torchrun:

- the process group comes from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT),
  backend nccl on CUDA and gloo on CPU (`run.distributed.backend` or PIPELINE_DIST_BACKEND override it),
  with a collective timeout, so a rank blocked on a dead peer fails instead of hanging;
- rank 0 alone writes files (pipeline.engine.store asks `is_main()`); every rank reads the same files;
- stages that train or evaluate run on every rank ("collective" stages); the others run on rank 0
  while the rest wait, and inside them nothing here issues a collective;
- masks are computed on every rank from identical inputs (one seed for every random draw, weights kept
  identical by DDP, gradients all-reduced by DDP before any hook reads them) and `sync_masks` checks
  after every change that each rank's masks hash to rank 0's, naming the first layer that differs.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import inspect
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.engine.errors import ConfigError, PipelineError

# torch is imported where a process group or a tensor is used, not at import: the light commands
# (validate, status, stages) import this module and must start without torch
if TYPE_CHECKING:
    import torch


class DistributedError(PipelineError):
    """Ranks disagree (masks, world size) or a collective failed."""

    exit_code = 6


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0


_world = World()
_collective = True  # False while a rank-0-only stage runs: no collective may be issued then


def env_world() -> World:
    """The world torchrun describes in the environment (rank 0 of 1 when not under torchrun)."""
    try:
        return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                     int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as exc:
        raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({exc})") from None


def init(settings, device: torch.device) -> torch.device:
    """Join the process group when torchrun started several processes; return this rank's device."""
    global _world
    world = env_world()
    if world.size <= 1:
        return device
    import torch.distributed as dist

    if dist.is_initialized():
        _world = World(dist.get_rank(), dist.get_world_size(), world.local_rank)
        return _local_device(device, world)
    backend = os.environ.get("PIPELINE_DIST_BACKEND") or settings.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("run.distributed.backend: nccl needs CUDA devices; use gloo on CPU")
    device = _local_device(device, world)
    timeout = datetime.timedelta(seconds=float(os.environ.get("PIPELINE_DIST_TIMEOUT_S") or settings.timeout_s))
    accepted = inspect.signature(dist.init_process_group).parameters
    kwargs = {"device_id": device} if backend == "nccl" and "device_id" in accepted else {}
    dist.init_process_group(backend=backend, timeout=timeout, **kwargs)
    _world = World(dist.get_rank(), dist.get_world_size(), world.local_rank)
    return device


def _local_device(device: torch.device, world: World) -> torch.device:
    if device.type != "cuda":
        return device
    import torch

    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise ConfigError(f"LOCAL_RANK {world.local_rank}: this node has {count} CUDA device(s); "
                          f"start at most {count} processes per node (--nproc-per-node)")
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


def shutdown() -> None:
    global _world
    dist = sys.modules.get("torch.distributed")  # never imported: no process group to leave
    if dist is not None and dist.is_initialized():
        dist.destroy_process_group()
    _world = World()


def rank() -> int:
    return _world.rank


def world_size() -> int:
    return _world.size


def is_main() -> bool:
    return _world.rank == 0


def active() -> bool:
    """True when collectives are both possible and expected (several ranks, in a collective stage)."""
    return _world.size > 1 and _collective


@contextlib.contextmanager
def main_only() -> Iterator[bool]:
    """Run a block on rank 0 alone (yields whether this rank runs it); the others wait at its end."""
    global _collective
    previous = _collective
    _collective = False
    try:
        yield is_main()
    finally:
        _collective = previous
    barrier()


@contextlib.contextmanager
def stage_scope(collective: bool) -> Iterator[bool]:
    """Yields whether this rank runs the stage: all ranks for a collective stage, else rank 0 alone."""
    if collective or world_size() <= 1:
        yield True
        return
    with main_only() as mine:
        yield mine


def fault_injected_here() -> bool:
    """Test hook: PIPELINE_FAULT_RANK names the one rank the fault injection kills (default: every rank)."""
    wanted = os.environ.get("PIPELINE_FAULT_RANK")
    return wanted is None or wanted == str(rank())


@contextlib.contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. a dataset download), the other ranks after it."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not active():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (gloo reduces on the CPU, so CUDA tensors travel through the host)."""
    if not active():
        return t
    import torch.distributed as dist

    if dist.get_backend() == "gloo" and t.device.type != "cpu":
        host = t.cpu()
        dist.all_reduce(host)
        t.copy_(host)
    else:
        dist.all_reduce(t)
    return t


def shard(n: int, r: int | None = None, w: int | None = None) -> tuple[int, int]:
    """[start, stop) of rank r's contiguous share of n items: the first n % w ranks take one more."""
    r, w = (rank() if r is None else r), (world_size() if w is None else w)
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def check_batch_size(batch_size: int, n_train: int, drop_last: bool, where: str) -> None:
    """`batch_size` is global: it must divide across ranks, and so must the last, partial batch."""
    w = world_size()
    if w <= 1:
        return
    if batch_size % w:
        raise ConfigError(f"{where}.batch_size: {batch_size} (global) does not divide across {w} processes; "
                          f"use a multiple of {w}")
    last = n_train % batch_size
    if last and not drop_last and last < w:
        raise ConfigError(f"{where}: the last batch of an epoch has {last} image(s), fewer than the {w} processes; "
                          "set drop_last: true or change batch_size")


def mask_digests(masks: Mapping[str, torch.Tensor]) -> dict[str, str]:
    import torch

    return {name: hashlib.sha256(m.detach().to("cpu", torch.bool).contiguous().numpy().tobytes()).hexdigest()[:16]
            for name, m in masks.items()}


def sync_masks(masks: Mapping[str, torch.Tensor] | None, where: str) -> None:
    """Stop the run when any rank's masks differ from rank 0's (call after every mask change)."""
    if masks is None or not active():
        return
    import torch.distributed as dist

    mine = mask_digests(masks)
    everyone: list = [None] * world_size()
    dist.all_gather_object(everyone, mine)
    reference = everyone[0]
    for r, theirs in enumerate(everyone):
        if theirs == reference:
            continue
        layer = next((n for n in reference if theirs.get(n) != reference[n]), None) or \
            next(n for n in theirs if n not in reference)
        raise DistributedError(f"{where}: the masks of rank {r} differ from rank 0's at layer {layer!r}; "
                               "every rank must draw the same masks (same seed, identical weights)")


def check_resume_world(saved: int, where: str) -> None:
    if saved != world_size():
        raise DistributedError(
            f"{where}: the saved progress was written by {saved} process(es) but this run has {world_size()}; "
            f"resume with the same number of processes (torchrun --nproc-per-node / --nnodes), or restart "
            f"the stage with `pipeline run CONFIG --from STAGE`")


@contextlib.contextmanager
def run_lock(run_dir, on_stale=None) -> Iterator[None]:
    """The run directory lock, held by rank 0; the others learn whether rank 0 got it."""
    from pipeline.engine.errors import LockError
    from pipeline.engine.lock import RunLock

    if world_size() <= 1:
        with RunLock(run_dir, on_stale=on_stale):
            yield
        return
    lock = RunLock(run_dir, on_stale=on_stale)
    error = None
    if is_main():
        try:
            lock.__enter__()
        except LockError as exc:
            error = str(exc)
    error = broadcast_object(error)
    if error is not None:
        raise LockError(error)
    try:
        yield
    finally:
        if is_main():
            lock.__exit__(None, None, None)
