"""Read a published corruption set (CIFAR-10-C / CIFAR-100-C layout) from a local directory.

Layout: `<name>.npy` per corruption, uint8 (5 N, H, W, C) holding severity 1's N images, then
severity 2's, ... 5's; and `labels.npy` with the 5 N labels (N labels, shared by all severities, are
accepted too). Arrays are memory-mapped; only the requested images are read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.engine.errors import DataError

from pipeline.corruptions.catalog import ALL, SEVERITIES


@dataclass
class PublishedCorruptions:
    root: Path
    types: list[str]
    per_severity: int  # N: images per severity block
    labels: np.ndarray  # (N,) labels of one severity block
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def images(self, name: str, severity: int, limit: int | None = None) -> np.ndarray:
        """(n, H, W, C) uint8: the first `limit` images (all N by default) of one severity block."""
        if name not in self._arrays:
            raise DataError(f"{self.root}: corruption {name!r} was not loaded (have: {', '.join(self.types)})")
        if severity not in SEVERITIES:
            raise DataError(f"severity must be one of {SEVERITIES}, got {severity}")
        n = self.per_severity if limit is None else min(limit, self.per_severity)
        start = (severity - 1) * self.per_severity
        block = np.array(self._arrays[name][start:start + n])  # a writable copy, off the memory map
        return block[..., None] if block.ndim == 3 else block

    def targets(self, limit: int | None = None) -> np.ndarray:
        return self.labels[: self.per_severity if limit is None else min(limit, self.per_severity)]


def load_published(root: str | Path, types: list[str] | None = None) -> PublishedCorruptions:
    """Open the set in `root`: `types` (default: every known corruption whose .npy is there)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"corruptions.path: directory not found: {root}")
    labels_path = root / "labels.npy"
    if not labels_path.is_file():
        raise DataError(f"corruptions.path: {labels_path} is missing (the published layout has labels.npy "
                        "beside one <corruption>.npy per type)")
    present = [name for name in ALL if (root / f"{name}.npy").is_file()]
    if types is None:
        types = present
        if not types:
            raise DataError(f"corruptions.path: no <corruption>.npy of the known types in {root} "
                            f"(expected names such as {', '.join(ALL[:3])}, ...)")
    missing = [t for t in types if t not in present]
    if missing:
        raise DataError(f"corruptions.path: {root} has no {', '.join(m + '.npy' for m in missing)}")

    labels = np.load(labels_path)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{labels_path}: expected a 1-d integer array, got {labels.dtype} {labels.shape}")
    arrays, per = {}, None
    for name in types:
        path = root / f"{name}.npy"
        try:
            arr = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as e:
            raise DataError(f"{path}: cannot be read as a .npy array ({e})") from None
        if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[3] not in (1, 3)):
            raise DataError(f"{path}: expected uint8 (5 N, H, W[, C]) images, got {arr.dtype} {arr.shape}")
        if arr.shape[0] % len(SEVERITIES):
            raise DataError(f"{path}: {arr.shape[0]} images do not split into {len(SEVERITIES)} severities")
        n = arr.shape[0] // len(SEVERITIES)
        if per is not None and n != per:
            raise DataError(f"{path}: {n} images per severity, but other files have {per}")
        per = n
        arrays[name] = arr
    if len(labels) == len(SEVERITIES) * per:
        block = labels[:per]
    elif len(labels) == per:
        block = labels
    else:
        raise DataError(f"{labels_path}: {len(labels)} labels fit neither {per} images per severity "
                        f"nor all {len(SEVERITIES) * per}")
    return PublishedCorruptions(root, list(types), per, np.asarray(block, dtype=np.int64), arrays)
