"""The data layer: datasets held in memory as uint8 tensors, and deterministic, resumable batch iterators.

    splits = load_dataset(DataConfig(dataset="digits"))
    for x, y in train_batches(splits.train_x, splits.train_y, batch_size=128, seed=1, epoch=0,
                              augment=splits.augment, crop_padding=splits.crop_padding, device="cpu"):
        ...
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.engine.lazy import lazy_exports
from pipeline.engine.seeding import derive_seed

if TYPE_CHECKING:
    from pipeline.data.splits import DataSplits

# The torch modules (augment, batches, loading, splits) load on first use: `pipeline validate` imports
# pipeline.data.config through this package and must not import torch.
__getattr__, __dir__ = lazy_exports(__name__, {
    "AUGMENTATIONS": "pipeline.data.augment", "augment_batch": "pipeline.data.augment",
    "epoch_order": "pipeline.data.batches", "eval_batches": "pipeline.data.batches",
    "num_batches": "pipeline.data.batches", "train_batches": "pipeline.data.batches",
    "DataConfig": "pipeline.data.config",
    "AUTO_AUGMENT": "pipeline.data.loading", "load_dataset": "pipeline.data.loading",
    "KNOWN_STATS": "pipeline.data.splits", "DataSplits": "pipeline.data.splits", "channel_stats": "pipeline.data.splits",
    "split_val": "pipeline.data.splits", "subset_indices": "pipeline.data.splits",
})


def training_batches(data: DataSplits, **kwargs):
    """The epoch's training batches of `data`, in memory or streamed (same keywords as train_batches)."""
    from pipeline.data.batches import train_batches
    from pipeline.data.streaming import StreamingSplits, stream_train_batches

    if isinstance(data, StreamingSplits):
        return stream_train_batches(data, **kwargs)
    return train_batches(data.train_x, data.train_y, augment=data.augment, crop_padding=data.crop_padding, **kwargs)


__all__ = [
    "AUGMENTATIONS",
    "AUTO_AUGMENT",
    "KNOWN_STATS",
    "DataConfig",
    "DataSplits",
    "augment_batch",
    "channel_stats",
    "derive_seed",
    "epoch_order",
    "eval_batches",
    "load_dataset",
    "num_batches",
    "split_val",
    "subset_indices",
    "train_batches",
    "training_batches",
]
