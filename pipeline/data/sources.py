"""Readers that turn each supported source into uint8 NCHW tensors: digits, .npz, torchvision sets."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pipeline.data.check import EXPECTED_FILES, read_npz_arrays
from pipeline.engine.errors import DataError

DIGITS_TEST = 360  # the last 360 of sklearn's 1797 digits are the fixed test set (~20%)
DIGITS_VAL = 180  # the last 180 of the remaining 1437 are the default validation set (~10%)


@dataclass
class RawData:
    """What a source provides before the validation carve-out, subsetting and statistics."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    class_names: list[str]
    val_x: Tensor | None = None  # a validation set of the source's own (npz x_val, an image folder's val/)
    val_y: Tensor | None = None
    default_val: tuple[int | float, str] = (0.1, "tail")  # (val_size, val_mode) used when val_size is None
    origin: str = ""  # the file or directory, for error messages


def _nhwc_to_tensor(images: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def read_digits() -> RawData:
    """scikit-learn's 8x8 digits (shipped with the package, so it works offline), scaled 0..16 -> 0..255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    x, y = torch.from_numpy(x), torch.from_numpy(bunch.target.astype(np.int64))
    cut = len(y) - DIGITS_TEST
    return RawData(
        train_x=x[:cut].clone(), train_y=y[:cut].clone(), test_x=x[cut:].clone(), test_y=y[cut:].clone(),
        class_names=[str(d) for d in range(10)], default_val=(DIGITS_VAL, "tail"), origin="sklearn digits",
    )


def _to_nchw(a: np.ndarray) -> Tensor:
    if a.ndim == 3:  # (N, H, W): one channel
        return torch.from_numpy(np.ascontiguousarray(a))[:, None].contiguous()
    if a.shape[3] in (1, 3):  # NHWC wins when both could be channels (as check._image_chw decides)
        return _nhwc_to_tensor(a)
    return torch.from_numpy(np.ascontiguousarray(a))


def read_npz(path: Path) -> RawData:
    """A .npz with x_train/y_train/x_test/y_test, optional x_val/y_val and label_names (or fine_label_names);
    every check lives in pipeline.data.check (shared with `pipeline validate`)."""
    npz = read_npz_arrays(path)
    xs = {s: _to_nchw(a) for s, a in npz.images.items()}
    ys = {s: torch.from_numpy(y) for s, y in npz.labels.items()}
    return RawData(
        train_x=xs["train"], train_y=ys["train"], test_x=xs["test"], test_y=ys["test"], class_names=npz.class_names,
        val_x=xs.get("val"), val_y=ys.get("val"), default_val=(0.1, "tail"), origin=str(path),
    )


# Files torchvision expects under root, listed so a missing dataset gets a precise message.
_EXPECTED = EXPECTED_FILES


def _torchvision_sets(name: str, root: Path, download: bool):
    import torchvision.datasets as tvd

    if name == "svhn":
        try:
            import scipy.io  # noqa: F401  (torchvision reads the .mat files with it)
        except ImportError as exc:
            raise DataError("dataset svhn needs scipy to read its .mat files: pip install scipy") from exc
        return tvd.SVHN(str(root), split="train", download=download), tvd.SVHN(str(root), split="test",
                                                                              download=download)
    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    return cls(str(root), train=True, download=download), cls(str(root), train=False, download=download)


def read_torchvision(name: str, root: Path, download: bool) -> RawData:
    """CIFAR-10, CIFAR-100 or SVHN (train and official test sets) through torchvision.datasets."""
    root = Path(root)
    missing = [f for f in _EXPECTED[name] if not (root / f).is_file()]
    if missing and not download:
        raise DataError(
            f"data.root: {name} not found in {root}: expected {', '.join(_EXPECTED[name])} "
            f"(missing: {', '.join(missing)}); set download: true to fetch it there (needs internet)"
        )
    try:
        train, test = _torchvision_sets(name, root, download and bool(missing))
    except DataError:
        raise
    except Exception as exc:  # URLError when offline, RuntimeError on a corrupt file, OSError, ...
        action = "download" if download and missing else "read"
        raise DataError(f"data.root: cannot {action} {name} in {root}: {type(exc).__name__}: {exc}") from exc
    if name == "svhn":  # already (N, 3, 32, 32); torchvision maps label 10 to digit 0
        to_x = lambda ds: torch.from_numpy(np.ascontiguousarray(ds.data))  # noqa: E731
        to_y = lambda ds: torch.from_numpy(np.asarray(ds.labels, dtype=np.int64))  # noqa: E731
        names = [str(d) for d in range(10)]
    else:  # (N, 32, 32, 3)
        to_x = lambda ds: _nhwc_to_tensor(ds.data)  # noqa: E731
        to_y = lambda ds: torch.tensor(ds.targets, dtype=torch.int64)  # noqa: E731
        names = list(train.classes)
    return RawData(
        train_x=to_x(train), train_y=to_y(train), test_x=to_x(test), test_y=to_y(test), class_names=names,
        default_val=(5000, "tail"), origin=str(root),
    )
