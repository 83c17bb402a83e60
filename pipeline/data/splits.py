"""`DataSplits` and the seed-independent split helpers: validation carve-out, data-limited subsets, stats."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.engine.errors import DataError

# Published per-channel constants (spec §1.1); the models hold them in their normalisation layer.
KNOWN_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
}

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# sha256 of the 100 CIFAR-100 fine label names joined by newlines, in label order (torchvision's `classes`).
_CIFAR100_NAMES_SHA256 = "fbe8ad23bbaf24969898a386833b49c3aaf6ad1119d43f7b41cdea1b3416d578"


@dataclass(eq=False)  # tensors: compare fields explicitly
class DataSplits:
    """A dataset held in memory: uint8 NCHW images and int64 labels for train, val and test."""

    name: str
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str
    crop_padding: int
    source: str = ""  # the file or directory read, for reports

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.train_x.shape[2]), int(self.train_x.shape[3])

    def summary(self) -> dict:
        """Sizes and settings, for logs and stage.json."""
        return {
            "dataset": self.name,
            "train": len(self.train_y),
            "val": len(self.val_y),
            "test": len(self.test_y),
            "num_classes": self.num_classes,
            "input": [self.in_chans, *self.input_size],
            "mean": list(self.mean),
            "std": list(self.std),
            "augment": self.augment,
            "crop_padding": self.crop_padding,
            "source": self.source,
        }


def split_val(n: int, val_size: int | float, mode: str, seed: int, what: str) -> tuple[Tensor, Tensor]:
    """Indices (train, val) of a pool of n images; both ascending, so the pool's order is kept.

    tail: val = the last k images (CIFAR: 45000..49999). random: k images drawn under `seed`.
    """
    k = round(val_size * n) if isinstance(val_size, float) else int(val_size)
    if k >= n:
        raise DataError(f"{what}: val_size {val_size} leaves no training images (pool of {n})")
    if mode == "tail":
        return torch.arange(n - k), torch.arange(n - k, n)
    if mode != "random":
        raise ValueError(f"unknown val_mode {mode!r}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[k:].sort().values, perm[:k].sort().values


def subset_indices(y: Tensor, fraction: float, mode: str, seed: int, num_classes: int) -> Tensor:
    """Ascending indices of a data-limited training subset of int(len(y) * fraction) images.

    first: the first N (the reference code's rule). balanced: N // K per class plus one more for
    N % K classes drawn under `seed`; images inside each class are drawn under `seed` too.
    """
    n_total = len(y)
    n = int(n_total * fraction)
    if n < 1:
        raise DataError(f"data.train_fraction: {fraction} of {n_total} training images keeps none")
    if n >= n_total:
        return torch.arange(n_total)
    if mode == "first":
        return torch.arange(n)
    if mode != "balanced":
        raise ValueError(f"unknown subset mode {mode!r}")
    gen = torch.Generator().manual_seed(seed)
    quota = torch.full((num_classes,), n // num_classes, dtype=torch.long)
    quota[torch.randperm(num_classes, generator=gen)[: n % num_classes]] += 1
    picked = []
    for c in range(num_classes):
        members = (y == c).nonzero().flatten()
        want = int(quota[c])
        if len(members) < want:
            raise DataError(
                f"data.train_fraction: class {c} has {len(members)} training images, fewer than the "
                f"{want} a balanced subset of {n} needs; use subset: first or a smaller fraction"
            )
        picked.append(members[torch.randperm(len(members), generator=gen)[:want]])
    return torch.cat(picked).sort().values


def channel_stats(x: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 NCHW images on the [0, 1] scale."""
    if len(x) == 0:
        raise DataError("cannot compute normalisation statistics of an empty training split")
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk].to(torch.float64) / 255.0
        total += part.sum(dim=(0, 2, 3))
        total_sq += (part * part).sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    return tuple(round(float(v), 4) for v in mean), tuple(round(max(float(v), 1e-4), 4) for v in std)


def recognise(class_names: list[str], in_chans: int, size: tuple[int, int]) -> str | None:
    """Name of the published dataset these classes and shapes belong to, or None."""
    if in_chans != 3:
        return None
    if size == (32, 32) and class_names == CIFAR10_CLASSES:
        return "cifar10"
    if size == (32, 32) and len(class_names) == 100:
        if hashlib.sha256("\n".join(class_names).encode()).hexdigest() == _CIFAR100_NAMES_SHA256:
            return "cifar100"
    is_wnid = all(len(n) == 9 and n[0] == "n" and n[1:].isdigit() for n in class_names)
    if size == (64, 64) and len(class_names) == 200 and is_wnid:
        return "tinyimagenet"
    return None
