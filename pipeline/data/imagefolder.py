"""Image folders read into memory: the plain ImageFolder layout and raw Tiny-ImageNet.

Layouts (class names = the sorted sub-folder names of root/train):
- root/train/<class>/*.png|jpg|...  or  root/train/<class>/images/*  (Tiny-ImageNet)
- the test set: root/test/<class>/* when root/test has class folders; otherwise root/val, either
  root/val/<class>/* or Tiny-ImageNet's root/val/images/* + root/val/val_annotations.txt
  (the reference code also tests on Tiny-ImageNet's labelled "val" images; its test/ has no labels)
- the validation set: root/val/<class>/* when root/test is the labelled test set; otherwise it is
  carved from root/train (default 10% drawn with split_seed).
Every image must have the same size; grayscale images become RGB when any image is in colour.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from pipeline.data.sources import RawData
from pipeline.engine.errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_folder_files(split_dir: Path, classes: dict[str, int]) -> list[tuple[Path, int]]:
    items = []
    for sub in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if sub.name not in classes:
            raise DataError(f"data.root: {sub} is not one of the {len(classes)} classes found in train/")
        folder = sub / "images" if (sub / "images").is_dir() else sub
        items += [(f, classes[sub.name]) for f in _image_files(folder)]
    return items


def _tiny_val_files(val_dir: Path, classes: dict[str, int]) -> list[tuple[Path, int]]:
    notes = val_dir / "val_annotations.txt"
    items = []
    for line_no, line in enumerate(notes.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in classes:
            raise DataError(f"{notes}:{line_no}: expected '<file>\\t<class in train/>', got {line!r}")
        image = val_dir / "images" / parts[0]
        if not image.is_file():
            raise DataError(f"{notes}:{line_no}: image not found: {image}")
        items.append((image, classes[parts[1]]))
    return sorted(items)


def _has_class_folders(split_dir: Path) -> bool:
    return split_dir.is_dir() and any(p.is_dir() and p.name != "images" for p in split_dir.iterdir())


def _read_one(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            gray = img.mode in ("1", "L", "LA", "I", "I;16", "F")
            return np.asarray(img.convert("L" if gray else "RGB"))
    except OSError as exc:
        raise DataError(f"data.root: cannot read image {path}: {exc}") from exc


def _load(items: list[tuple[Path, int]], what: str) -> tuple[list[np.ndarray], torch.Tensor]:
    if not items:
        raise DataError(f"data.root: no images found for the {what} set")
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # PIL decodes outside the GIL
        arrays = list(pool.map(_read_one, [p for p, _ in items]))
    return arrays, torch.tensor([c for _, c in items], dtype=torch.int64)


def _stack(arrays: list[np.ndarray], items: list[tuple[Path, int]], ref: tuple[int, int], ref_file: Path,
           rgb: bool) -> torch.Tensor:
    out = []
    for a, (path, _) in zip(arrays, items):
        if a.shape[:2] != ref:
            raise DataError(f"data.root: {path} is {a.shape[1]}x{a.shape[0]} but {ref_file} is "
                            f"{ref[1]}x{ref[0]}; imagefolder needs images of one size")
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3 if rgb else 1, axis=2)
        out.append(a)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def list_image_folder(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """(class names, {"train"/"test"/maybe "val": [(file, label), ...]}) of an image folder (layouts above)."""
    root = Path(root)
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"data.root: {root} has no train/ folder; expected {root}/train/<class>/<images>")
    names = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not names:
        raise DataError(f"data.root: {train_dir} has no class folders")
    classes = {n: i for i, n in enumerate(names)}
    val_dir, test_dir = root / "val", root / "test"
    tiny_val = (val_dir / "val_annotations.txt").is_file() and (val_dir / "images").is_dir()
    split_items = {"train": _class_folder_files(train_dir, classes)}
    if _has_class_folders(test_dir):
        split_items["test"] = _class_folder_files(test_dir, classes)
        if _has_class_folders(val_dir):
            split_items["val"] = _class_folder_files(val_dir, classes)
    elif tiny_val:
        split_items["test"] = _tiny_val_files(val_dir, classes)
    elif _has_class_folders(val_dir):
        split_items["test"] = _class_folder_files(val_dir, classes)
    else:
        raise DataError(
            f"data.root: no labelled test set in {root}: expected test/<class>/, val/<class>/, "
            "or val/images/ with val/val_annotations.txt"
        )
    return names, split_items


def read_image_folder(root: Path) -> RawData:
    names, split_items = list_image_folder(root)
    loaded = {s: _load(items, s) for s, items in split_items.items()}
    ref_file = split_items["train"][0][0]
    ref = loaded["train"][0][0].shape[:2]
    rgb = any(a.ndim == 3 for arrays, _ in loaded.values() for a in arrays)
    x = {s: _stack(loaded[s][0], split_items[s], ref, ref_file, rgb) for s in loaded}
    y = {s: loaded[s][1] for s in loaded}
    return RawData(
        train_x=x["train"], train_y=y["train"], test_x=x["test"], test_y=y["test"], class_names=names,
        val_x=x.get("val"), val_y=y.get("val"), default_val=(0.1, "random"), origin=str(root),
    )
