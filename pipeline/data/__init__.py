"""The data layer: datasets held in memory as uint8 tensors, and deterministic, resumable batch iterators.

    splits = load_dataset(DataConfig(dataset="digits"))
    for x, y in train_batches(splits.train_x, splits.train_y, batch_size=128, seed=1, epoch=0,
                              augment=splits.augment, crop_padding=splits.crop_padding, device="cpu"):
        ...
"""
from __future__ import annotations

from pipeline.data.augment import AUGMENTATIONS, augment_batch
from pipeline.engine.seeding import derive_seed
from pipeline.data.batches import epoch_order, eval_batches, num_batches, train_batches
from pipeline.data.config import DataConfig
from pipeline.data.loading import AUTO_AUGMENT, load_dataset
from pipeline.data.splits import KNOWN_STATS, DataSplits, channel_stats, split_val, subset_indices


def training_batches(data: DataSplits, **kwargs):
    """The epoch's training batches of `data`, in memory or streamed (same keywords as train_batches)."""
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
