"""`DataConfig`: the `data:` section of a run config."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.engine.schema import StrictModel

TORCHVISION_DATASETS = ("cifar10", "cifar100", "svhn")


class StreamConfig(StrictModel):
    """Streaming image folder (ImageNet scale): train images decoded per batch by DataLoader workers."""

    image_size: int = Field(default=224, ge=2, description="side of the training crop and of the evaluation crop")
    resize_size: int = Field(default=256, ge=2, description="evaluation: shorter side resized to this, then centre-cropped")
    min_scale: float = Field(default=0.08, gt=0, le=1, description="RandomResizedCrop's smallest area fraction")
    workers: int = Field(default=4, ge=0, description="DataLoader worker processes per rank (0: decode in the training process)")

    @model_validator(mode="after")
    def _crop_fits(self):
        if self.resize_size < self.image_size:
            raise ValueError(f"resize_size: {self.resize_size} is below image_size {self.image_size}")
        return self


class DataConfig(StrictModel):
    """Which images to train on, how the train/val/test split is drawn, and how batches are augmented.

    Splits depend on `split_seed` and `subset_seed` only, never on the run seed, so every run of a
    sweep sees the same validation and test images.
    """

    dataset: Literal["digits", "cifar10", "cifar100", "svhn", "npz", "imagefolder"] = "digits"
    # torchvision root (cifar10/cifar100/svhn) or the image-folder root (imagefolder).
    root: Path | None = None
    # The .npz file (dataset npz).
    path: Path | None = None
    # Let torchvision download a missing dataset into `root`.
    download: bool = False
    # None: the dataset's own split (see pipeline.data.loading). int: a count; float in (0, 1): a fraction.
    val_size: int | float | None = None
    # How an explicit val_size is drawn from the training pool: its last images, or a split_seed draw.
    val_mode: Literal["tail", "random"] = "tail"
    split_seed: int = 10
    augment: Literal["auto", "none", "crop", "crop_flip", "crop_flip_rotate"] = "auto"
    # Zero padding of the random crop; None: 4 (digits: 1).
    crop_padding: int | None = None
    # Data-limited training: keep this fraction of the training split.
    train_fraction: float = 1.0
    subset: Literal["balanced", "first"] = "balanced"
    subset_seed: int = 0
    # Per-channel normalisation constants stored with the model; auto: the published constants of
    # CIFAR-10/100 and Tiny-ImageNet when the data is recognised as one of them, else train-split statistics.
    norm_stats: Literal["auto", "cifar10", "cifar100", "tinyimagenet", "computed"] = "auto"
    # imagefolder only: stream training images from disk instead of holding them in memory.
    stream: StreamConfig | None = None

    @field_validator("val_size", mode="before")
    @classmethod
    def _no_bool(cls, value):
        if isinstance(value, bool):
            raise ValueError("expected a count (int) or a fraction in (0, 1), got a boolean")
        return value

    @field_validator("val_size")
    @classmethod
    def _check_val_size(cls, value):
        if isinstance(value, float) and not 0.0 < value < 1.0:
            raise ValueError(f"a fraction must lie in (0, 1), got {value}; write an integer for a count")
        if isinstance(value, int) and value < 0:
            raise ValueError(f"a count must be >= 0, got {value}")
        return value

    @field_validator("crop_padding")
    @classmethod
    def _check_padding(cls, value):
        if value is not None and value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value

    @field_validator("train_fraction")
    @classmethod
    def _check_fraction(cls, value):
        if not 0.0 < value <= 1.0:
            raise ValueError(f"must lie in (0, 1], got {value}")
        return value

    @model_validator(mode="after")
    def _check_sources(self):
        # Messages start with the field name so the config layer can print `data.<field>: ...`.
        ds = self.dataset
        if ds == "npz":
            if self.path is None:
                raise ValueError("path: required for dataset 'npz' (the .npz file to load)")
            if not self.path.is_file():
                raise ValueError(f"path: file not found: {self.path}")
        elif self.path is not None:
            raise ValueError(f"path: only used with dataset 'npz', not {ds!r}; remove it or use root")
        if ds in TORCHVISION_DATASETS or ds == "imagefolder":
            if self.root is None:
                raise ValueError(f"root: required for dataset {ds!r} (the directory holding its files)")
            if not self.root.is_dir() and not (self.download and ds != "imagefolder"):
                hint = "" if ds == "imagefolder" else "; set download: true to fetch it there"
                raise ValueError(f"root: directory not found: {self.root}{hint}")
        elif self.root is not None:
            raise ValueError(f"root: not used with dataset {ds!r}; remove it")
        if self.stream is not None and ds != "imagefolder":
            raise ValueError(f"stream: only dataset 'imagefolder' can be streamed, not {ds!r}")
        if self.download and ds not in TORCHVISION_DATASETS:
            raise ValueError(f"download: only cifar10, cifar100 and svhn can be downloaded, not {ds!r}")
        if ds == "imagefolder" and self.val_size is not None and self.val_mode == "tail":
            raise ValueError(
                "val_mode: 'tail' would take whole classes from a class-sorted image folder; "
                "use 'random' with an explicit val_size for imagefolder"
            )
        return self
