"""`load_dataset`: read a source, carve the validation split, take the data-limited subset, pick stats.

Default splits (data.val_size unset):
- cifar10 / cifar100 / svhn: val = the last 5000 training images (CIFAR: 45000..49999, SVHN:
  68257..73256), train = the rest, test = the official test set.
- digits: test = the last 360 of the 1797 images; val = the 180 before them; train = the first 1257.
- npz: the file's x_val/y_val when present (val_size must then stay unset); otherwise its last 10%.
- imagefolder: its own val/ when root has labelled test/ and val/; otherwise 10% of train/ drawn
  with split_seed (see pipeline.data.imagefolder for the layouts).
An explicit val_size carves val from the training pool: its last images (val_mode tail) or a
split_seed draw (random). train_fraction < 1 then keeps a subset of the remaining training split.
Normalisation statistics come from the training split before subsetting, so data-limited runs
share them with full-data runs.
"""
from __future__ import annotations

from pipeline.data.config import DataConfig
from pipeline.data.splits import (
    KNOWN_STATS,
    DataSplits,
    channel_stats,
    recognise,
    split_val,
    subset_indices,
)
from pipeline.data.sources import RawData, read_digits, read_npz, read_torchvision
from pipeline.engine.errors import DataError

# augment: auto. npz and imagefolder data recognised as CIFAR-10/100 or Tiny-ImageNet (by class
# names and image size, see splits.recognise) get that dataset's augmentation.
AUTO_AUGMENT = {
    "digits": "crop",  # digits must not be mirrored
    "svhn": "crop",  # nor house numbers
    "cifar10": "crop_flip",
    "cifar100": "crop_flip_rotate",
    "tinyimagenet": "crop_flip",
    "imagefolder": "crop_flip",
    "npz": "crop_flip",
}


def _read(cfg: DataConfig) -> RawData:
    if cfg.dataset == "digits":
        return read_digits()
    if cfg.dataset == "npz":
        return read_npz(cfg.path)
    if cfg.dataset == "imagefolder":
        from pipeline.data.imagefolder import read_image_folder

        return read_image_folder(cfg.root)
    return read_torchvision(cfg.dataset, cfg.root, cfg.download)


def _kind(cfg: DataConfig, raw: RawData) -> str:
    """The dataset name, or for npz/imagefolder the published dataset the data is recognised as."""
    if cfg.dataset not in ("npz", "imagefolder"):
        return cfg.dataset
    x = raw.train_x
    return recognise(raw.class_names, int(x.shape[1]), (int(x.shape[2]), int(x.shape[3]))) or cfg.dataset


def _stats(cfg: DataConfig, raw: RawData, kind: str, train_x) -> tuple[tuple[float, ...], tuple[float, ...]]:
    choice = cfg.norm_stats
    if choice == "auto":
        choice = kind if kind in KNOWN_STATS else "computed"
    if choice == "computed":
        return channel_stats(train_x)
    if train_x.shape[1] != 3:
        raise DataError(f"data.norm_stats: {choice!r} is for RGB images, but {raw.origin} has "
                        f"{train_x.shape[1]} channel(s)")
    return KNOWN_STATS[choice]


def load_dataset(cfg: DataConfig) -> DataSplits:
    """Materialise the configured dataset in memory as uint8 NCHW / int64 tensors."""
    if cfg.stream is not None:  # training images stay on disk (pipeline.data.streaming)
        from pipeline.data.streaming import load_streaming

        return load_streaming(cfg)
    raw = _read(cfg)
    if raw.val_x is not None:
        if cfg.val_size is not None:
            raise DataError(
                f"data.val_size: {raw.origin} brings its own validation set ({len(raw.val_y)} images); "
                "leave val_size unset to use it"
            )
        train_x, train_y, val_x, val_y = raw.train_x, raw.train_y, raw.val_x, raw.val_y
    else:
        size, mode = (cfg.val_size, cfg.val_mode) if cfg.val_size is not None else raw.default_val
        train_idx, val_idx = split_val(len(raw.train_y), size, mode, cfg.split_seed, "data.val_size")
        train_x, train_y = raw.train_x[train_idx], raw.train_y[train_idx]
        val_x, val_y = raw.train_x[val_idx], raw.train_y[val_idx]
    kind = _kind(cfg, raw)
    mean, std = _stats(cfg, raw, kind, train_x)
    if cfg.train_fraction < 1.0:
        keep = subset_indices(train_y, cfg.train_fraction, cfg.subset, cfg.subset_seed, len(raw.class_names))
        train_x, train_y = train_x[keep], train_y[keep]
    augment = AUTO_AUGMENT[kind] if cfg.augment == "auto" else cfg.augment
    padding = cfg.crop_padding if cfg.crop_padding is not None else (1 if cfg.dataset == "digits" else 4)
    return DataSplits(
        name=cfg.dataset, train_x=train_x.contiguous(), train_y=train_y, val_x=val_x.contiguous(), val_y=val_y,
        test_x=raw.test_x.contiguous(), test_y=raw.test_y, class_names=list(raw.class_names),
        mean=tuple(mean), std=tuple(std), augment=augment, crop_padding=padding, source=raw.origin,
    )
