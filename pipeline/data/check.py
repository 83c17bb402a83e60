"""Open a configured dataset cheaply, before anything is written, and say what was found.

`pipeline validate` prints the summary ("npz data/x.npz: 9000/1000/1000 images 32x32x3, 10 classes");
`pipeline run` calls the same check before it creates the run directory, so a wrong dtype, shape or
label is refused with the file and array named instead of surfacing minutes into a stage (or, for a
stray huge label, silently building a million-class model). Only numpy is imported here: `validate`
must answer in about a second.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.engine.errors import DataError

# Without label_names, the class count is max label + 1. Past this many classes, or when most class ids
# between 0 and the largest label have no image at all, the labels are far more likely wrong than real.
MAX_INFERRED_CLASSES = 10_000


# Files torchvision expects under root, listed so a missing dataset gets a precise message.
EXPECTED_FILES = {
    "cifar10": [f"cifar-10-batches-py/{n}" for n in
                ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch", "batches.meta")],
    "cifar100": [f"cifar-100-python/{n}" for n in ("train", "test", "meta")],
    "svhn": ["train_32x32.mat", "test_32x32.mat"],
}


@dataclass
class NpzContents:
    images: dict[str, np.ndarray]  # split -> uint8 images as stored (NHWC, NCHW or NHW)
    labels: dict[str, np.ndarray]  # split -> int64 labels
    class_names: list[str]
    chw: tuple[int, int, int]


def _image_chw(a: np.ndarray, key: str, path: Path) -> tuple[int, int, int]:
    if a.dtype != np.uint8:
        raise DataError(f"{path}: array {key!r} has dtype {a.dtype}; expected uint8 images (0..255)")
    if a.ndim == 3:
        return 1, int(a.shape[1]), int(a.shape[2])
    if a.ndim != 4:
        raise DataError(f"{path}: array {key!r} has shape {a.shape}; expected (N, H, W, C) or (N, C, H, W)")
    if a.shape[3] in (1, 3):  # NHWC wins when both could be channels, e.g. (N, 3, 3, 3)
        return int(a.shape[3]), int(a.shape[1]), int(a.shape[2])
    if a.shape[1] in (1, 3):
        return int(a.shape[1]), int(a.shape[2]), int(a.shape[3])
    raise DataError(f"{path}: array {key!r} has shape {a.shape}; expected 1 or 3 channels, NHWC or NCHW")


def read_npz_arrays(path: Path) -> NpzContents:
    """Every check on a .npz dataset: arrays present, dtypes, shapes, label ranges, class count."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.path: file not found: {path}")
    try:
        arrays = np.load(path, allow_pickle=False)
        keys = set(arrays.files)
    except Exception as exc:  # zipfile, pickle and OS errors all mean the same to the user
        raise DataError(f"data.path: cannot read {path} as .npz: {exc}") from exc
    with arrays:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            if key not in keys:
                raise DataError(f"{path}: missing array {key!r} (found: {', '.join(sorted(keys))})")
        if ("x_val" in keys) != ("y_val" in keys):
            have, lack = ("x_val", "y_val") if "x_val" in keys else ("y_val", "x_val")
            raise DataError(f"{path}: has {have!r} but no {lack!r}; give both or neither")
        splits = ["train", "val", "test"] if "x_val" in keys else ["train", "test"]
        images, labels, chws = {}, {}, {}
        try:
            for s in splits:
                images[s] = arrays[f"x_{s}"]
                chws[s] = _image_chw(images[s], f"x_{s}", path)
                y = arrays[f"y_{s}"]
                if not np.issubdtype(y.dtype, np.integer):
                    raise DataError(f"{path}: array 'y_{s}' has dtype {y.dtype}; expected integer class labels")
                if y.ndim != 1 or len(y) != len(images[s]):
                    raise DataError(f"{path}: array 'y_{s}' has shape {y.shape} but 'x_{s}' holds {len(images[s])} images")
                labels[s] = y.astype(np.int64)
            names_key = next((k for k in ("label_names", "fine_label_names") if k in keys), None)
            names = [str(n) for n in arrays[names_key].tolist()] if names_key else None
        except DataError:
            raise
        except Exception as exc:  # a corrupt member or an object array that needs pickle
            raise DataError(f"data.path: cannot read {path}: {exc}") from exc
    if len(labels["train"]) == 0:
        raise DataError(f"{path}: array 'x_train' holds no images")
    for s in splits[1:]:
        if chws[s] != chws["train"]:
            raise DataError(f"{path}: 'x_{s}' images are {chws[s]} (C, H, W) but 'x_train' images are {chws['train']}")
    for s in splits:
        if len(labels[s]) and int(labels[s].min()) < 0:
            raise DataError(f"{path}: array 'y_{s}' holds label {int(labels[s].min())}; labels must be >= 0")
    if names is not None:
        if len(names) == 0:
            raise DataError(f"{path}: {names_key!r} is empty")
        num_classes = len(names)
    else:
        num_classes = max(int(y.max()) for y in labels.values() if len(y)) + 1
        present = len(np.unique(np.concatenate(list(labels.values()))))
        if num_classes > MAX_INFERRED_CLASSES or num_classes > 2 * present:
            split, value = max(((s, int(y.max())) for s, y in labels.items() if len(y)), key=lambda t: t[1])
            raise DataError(f"{path}: array 'y_{split}' holds label {value}, so the model would get {num_classes} "
                            f"classes, but only {present} distinct labels occur; relabel the classes 0..{present - 1} "
                            "or add a 'label_names' array listing every class")
        names = [str(c) for c in range(num_classes)]
    for s in splits:
        bad = labels[s] >= num_classes
        if bad.any():
            raise DataError(f"{path}: array 'y_{s}' holds label {int(labels[s][bad][0])}, outside [0, {num_classes}) "
                            f"({names_key!r} lists {num_classes} names)")
    return NpzContents(images=images, labels=labels, class_names=names, chw=chws["train"])


def describe_data(cfg) -> str:
    """Check the data `cfg` (a DataConfig) names, without torch; a one-line summary or DataError."""
    if cfg.dataset == "digits":
        return "digits (embedded in scikit-learn): 1797 images 8x8x1, 10 classes; test = the last 360"
    if cfg.dataset == "npz":
        npz = read_npz_arrays(cfg.path)
        c, h, w = npz.chw
        counts = "/".join(str(len(npz.labels[s])) for s in ("train", "val", "test") if s in npz.labels)
        what = "train/val/test" if "val" in npz.labels else "train/test (val carved from train)"
        return f"npz {cfg.path}: {counts} {what} images {h}x{w}x{c}, {len(npz.class_names)} classes"
    if cfg.dataset == "imagefolder":
        train = Path(cfg.root) / "train"
        if not train.is_dir():
            raise DataError(f"data.root: {cfg.root} has no train/ folder (expected root/train/<class>/*)")
        classes = [p for p in train.iterdir() if p.is_dir()]
        if not classes:
            raise DataError(f"data.root: {train} has no class folders")
        return f"imagefolder {cfg.root}: {len(classes)} class folders in train/ (images are read when the run starts)"
    missing = [f for f in EXPECTED_FILES[cfg.dataset] if not (Path(cfg.root) / f).is_file()]
    if missing and not cfg.download:
        raise DataError(f"data.root: {cfg.dataset} not found in {cfg.root} (missing: {', '.join(missing)}); "
                        "set download: true to fetch it there (needs internet)")
    state = "will be downloaded on the first run" if missing else "files present"
    return f"{cfg.dataset} in {cfg.root}: torchvision files {state}"
