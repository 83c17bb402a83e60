"""A streaming image folder: ImageNet-scale training without holding the training set in memory.

`data: {dataset: imagefolder, root: ..., stream: {image_size, resize_size, min_scale, workers}}`

- Training images are decoded per batch by `DataLoader` workers with the ImageNet recipe's transforms
  (torchvision RandomResizedCrop(image_size, scale=(min_scale, 1)) + horizontal flip). The epoch order
  is the in-memory path's (`epoch_order(n, seed, epoch)`), each rank takes its contiguous share of
  every global batch (a DistributedSampler-equivalent shard whose union is the single-process batch),
  and each image's crop and flip are drawn from a generator seeded by (seed, epoch, image index) in a
  forked RNG: the batches depend neither on the number of workers nor on the rank count, and a run
  resumed at batch k reads exactly the batches the uninterrupted run read.
- Validation and test images are decoded once at evaluation resolution (shorter side resized to
  resize_size, centre crop image_size) and held as uint8 tensors, so every evaluation (PGD, AutoAttack,
  corruptions) works unchanged; that is 150 KB per image at 224 px (ImageNet's 50k val: 7.5 GB).
- Features that need the training images in memory (train-split evaluation, Taylor criterion
  batches) fail with a clear error naming the dataset.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pipeline.data.batches import epoch_order, num_batches
from pipeline.data.config import DataConfig, StreamConfig
from pipeline.data.splits import KNOWN_STATS, DataSplits, channel_stats, split_val, subset_indices
from pipeline.engine.distributed import shard as shard_range
from pipeline.engine.errors import DataError
from pipeline.engine.seeding import Stream, derive_seed

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(eq=False)
class StreamingSplits(DataSplits):
    """DataSplits whose training images stay on disk: `train_x` is an empty (0, 3, S, S) placeholder."""

    train_files: list[Path] = field(default_factory=list)
    stream: StreamConfig | None = None

    @property
    def in_chans(self) -> int:
        return 3

    @property
    def input_size(self) -> tuple[int, int]:
        return self.stream.image_size, self.stream.image_size


def _open_rgb(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError as exc:
        raise DataError(f"data.root: cannot read image {path}: {exc}") from exc


def _to_uint8(img) -> Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def _eval_tensor(paths: list[Path], cfg: StreamConfig) -> Tensor:
    from concurrent.futures import ThreadPoolExecutor

    from torchvision import transforms as T

    tf = T.Compose([T.Resize(cfg.resize_size), T.CenterCrop(cfg.image_size)])
    out = torch.empty((len(paths), 3, cfg.image_size, cfg.image_size), dtype=torch.uint8)

    def one(i: int) -> None:
        out[i] = _to_uint8(tf(_open_rgb(paths[i])))
    with ThreadPoolExecutor(8) as pool:  # PIL decodes outside the GIL
        list(pool.map(one, range(len(paths))))
    return out


def load_streaming(cfg: DataConfig) -> StreamingSplits:
    from pipeline.data.imagefolder import list_image_folder

    names, items = list_image_folder(cfg.root)
    train = items["train"]
    if not train:
        raise DataError(f"data.root: no training images under {cfg.root}/train")
    files = [p for p, _ in train]
    labels = torch.tensor([c for _, c in train], dtype=torch.int64)
    if "val" in items:
        val = items["val"]
    else:
        size, mode = (cfg.val_size, cfg.val_mode) if cfg.val_size is not None else (0.1, "random")
        keep, held = split_val(len(files), size, mode, cfg.split_seed, "data.val_size")
        val = [train[i] for i in held.tolist()]
        files, labels = [files[i] for i in keep.tolist()], labels[keep]
    if cfg.train_fraction < 1.0:
        keep = subset_indices(labels, cfg.train_fraction, cfg.subset, cfg.subset_seed, len(names))
        files, labels = [files[i] for i in keep.tolist()], labels[keep]
    s = cfg.stream
    val_x, test_x = _eval_tensor([p for p, _ in val], s), _eval_tensor([p for p, _ in items["test"]], s)
    if cfg.norm_stats == "computed":
        mean, std = channel_stats(val_x)
    elif cfg.norm_stats in KNOWN_STATS:
        mean, std = KNOWN_STATS[cfg.norm_stats]
    else:  # auto: Tiny-ImageNet's constants by its class count, else ImageNet's
        mean, std = KNOWN_STATS["tinyimagenet"] if len(names) == 200 else IMAGENET_STATS
    return StreamingSplits(
        name="imagefolder", train_x=torch.empty((0, 3, s.image_size, s.image_size), dtype=torch.uint8),
        train_y=labels, val_x=val_x, val_y=torch.tensor([c for _, c in val], dtype=torch.int64),
        test_x=test_x, test_y=torch.tensor([c for _, c in items["test"]], dtype=torch.int64),
        class_names=list(names), mean=tuple(mean), std=tuple(std), augment="random_resized_crop_flip",
        crop_padding=0, source=f"{cfg.root} (streamed)", train_files=files, stream=s)


class _TrainImages(torch.utils.data.Dataset):
    def __init__(self, files: list[Path], cfg: StreamConfig, seed: int, epoch: int):
        from torchvision import transforms as T

        self.files, self.seed, self.epoch = files, seed, epoch
        self.tf = T.Compose([T.RandomResizedCrop(cfg.image_size, scale=(cfg.min_scale, 1.0)),
                             T.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:
        img = _open_rgb(self.files[i])
        # torchvision draws from the global RNG: fork it, seeded by (seed, epoch, image) alone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(Stream.AUGMENT, self.seed, self.epoch, "stream", i))
            return _to_uint8(self.tf(img))


def stream_train_batches(data: StreamingSplits, *, batch_size: int, seed: int, epoch: int,
                         device: torch.device | str, start_batch: int = 0, drop_last: bool = False,
                         shard: tuple[int, int] | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """The streaming counterpart of `train_batches`: (float32 [0, 1] images, labels) on `device`."""
    n = len(data.train_files)
    total = num_batches(n, batch_size, drop_last)
    if not 0 <= start_batch <= total:
        raise ValueError(f"start_batch {start_batch} is outside [0, {total}] for {n} images")
    order = epoch_order(n, seed, epoch)
    local = []
    for b in range(start_batch, total):
        idx = order[b * batch_size:(b + 1) * batch_size]
        if shard is not None:
            lo, hi = shard_range(len(idx), *shard)
            idx = idx[lo:hi]
        local.append(idx.tolist())
    if not local:
        return
    device = torch.device(device)
    loader = torch.utils.data.DataLoader(
        _TrainImages(data.train_files, data.stream, seed, epoch), batch_sampler=local,
        num_workers=data.stream.workers, pin_memory=device.type == "cuda",
        persistent_workers=False, prefetch_factor=4 if data.stream.workers else None)
    for idx, images in zip(local, loader):
        x = images.to(device, non_blocking=True).float().div_(255.0)
        yield x, data.train_y[torch.tensor(idx, dtype=torch.long)].to(device, non_blocking=True)
