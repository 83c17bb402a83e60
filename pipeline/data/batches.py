"""Deterministic batch iterators over in-memory uint8 datasets.

The shuffle depends on (seed, epoch) only and each batch's augmentation on (seed, epoch, batch index)
only, so a run resumed at batch k of an epoch sees exactly the batches the uninterrupted run saw.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from pipeline.data.augment import augment_batch
from pipeline.engine.distributed import shard as shard_range
from pipeline.engine.seeding import Stream, derive_seed


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The shuffled index order of one epoch."""
    gen = torch.Generator().manual_seed(derive_seed(Stream.DATA_ORDER, seed, epoch))
    return torch.randperm(n, generator=gen)


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"expected uint8 NCHW images, got {x.dtype} of shape {tuple(x.shape)}")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")


def _upload(x: Tensor, idx: Tensor, device: torch.device) -> Tensor:
    batch = x[idx.to(x.device)]
    if batch.device == device:
        return batch
    if device.type == "cuda":
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=device.type == "cuda")


def train_batches(
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    augment: str,
    crop_padding: int,
    device: torch.device | str,
    start_batch: int = 0,
    drop_last: bool = False,
    shard: tuple[int, int] | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (float32 images in [0, 1], int64 labels) on `device`, shuffled and augmented.

    `x` is uint8 NCHW, on the CPU or already on `device`. `start_batch=k` skips straight to batch k.
    `shard=(rank, world)` yields rank's contiguous share of each batch (the first `len % world` ranks
    take one image more), augmented exactly as in the whole batch, so the ranks' union is the batch.
    """
    _check_pair(x, y)
    total = num_batches(len(x), batch_size, drop_last)
    if not 0 <= start_batch <= total:
        raise ValueError(f"start_batch {start_batch} is outside [0, {total}] for {len(x)} images")
    device = torch.device(device)
    order = epoch_order(len(x), seed, epoch)
    for b in range(start_batch, total):
        idx = order[b * batch_size:(b + 1) * batch_size]
        gen = torch.Generator().manual_seed(derive_seed(Stream.AUGMENT, seed, epoch, b))
        images = augment_batch(_upload(x, idx, device), augment=augment, crop_padding=crop_padding, gen=gen)
        if shard is not None:
            # augmenting the whole batch keeps each image's random crop/flip that of the single-process run
            start, stop = shard_range(len(idx), *shard)
            images, idx = images[start:stop], idx[start:stop]
        yield images, _upload(y, idx, device)



def eval_batches(
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    device: torch.device | str,
    limit: int | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield the first `limit` (default all) images in order, unaugmented, as float32 in [0, 1]."""
    _check_pair(x, y)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    n = len(x) if limit is None else min(int(limit), len(x))
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        yield _upload(x, idx, device).float().div_(255.0), _upload(y, idx, device)
