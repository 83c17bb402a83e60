"""Tests for pipeline.data: loaders, splits, subsets, statistics, augmentation and resumable batches."""
from __future__ import annotations

import urllib.error
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from pipeline.data import (
    KNOWN_STATS,
    DataConfig,
    augment_batch,
    channel_stats,
    eval_batches,
    load_dataset,
    num_batches,
    split_val,
    subset_indices,
    train_batches,
)
from pipeline.data import sources
from pipeline.engine.errors import DataError

CIFAR10_NPZ = Path("/work/shared/data/cifar10-subset.npz")

torch.set_num_threads(1)


def _write_npz(path: Path, *, n_train=40, n_val=10, n_test=20, size=6, classes=4, **override) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, size, size, 3), dtype=np.uint8),
        "y_train": np.arange(n_train) % classes,
        "x_val": rng.integers(0, 256, (n_val, size, size, 3), dtype=np.uint8),
        "y_val": np.arange(n_val) % classes,
        "x_test": rng.integers(0, 256, (n_test, size, size, 3), dtype=np.uint8),
        "y_test": np.arange(n_test) % classes,
        "label_names": np.array([f"c{i}" for i in range(classes)]),
    }
    for key, value in override.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    np.savez(path, **arrays)
    return path


def _npz_cfg(path: Path, **kw) -> DataConfig:
    return DataConfig(dataset="npz", path=path, **kw)


def _toy(n=50, size=6, channels=3):
    x = torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    return x, torch.arange(n) % 5


def _batches(x, y, **kw):
    args = dict(batch_size=16, seed=7, epoch=2, augment="crop_flip_rotate", crop_padding=2, device="cpu")
    args.update(kw)
    return list(train_batches(x, y, **args))


# --- digits -------------------------------------------------------------------------------------


def test_digits_sizes_values_and_determinism():
    from sklearn.datasets import load_digits

    a, b = load_dataset(DataConfig()), load_dataset(DataConfig())
    assert (len(a.train_y), len(a.val_y), len(a.test_y)) == (1257, 180, 360)
    assert a.train_x.dtype == torch.uint8 and a.train_y.dtype == torch.int64
    assert a.train_x.shape == (1257, 1, 8, 8) and a.in_chans == 1 and a.input_size == (8, 8)
    assert a.class_names == [str(d) for d in range(10)] and a.num_classes == 10
    assert a.augment == "crop" and a.crop_padding == 1  # never flipped
    assert len(a.mean) == len(a.std) == 1
    # Fixed split: test = the last 360 images, val = the 180 before them; 0..16 scaled to 0..255.
    ref = load_digits()
    assert torch.equal(a.test_y, torch.from_numpy(ref.target[-360:]))
    assert torch.equal(a.val_y, torch.from_numpy(ref.target[1257:1437]))
    first = ref.images[0]
    assert torch.equal(a.train_x[0, 0], torch.from_numpy(np.rint(first * 255 / 16).astype(np.uint8)))
    assert int(a.train_x.max()) == 255
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert a.mean == b.mean and a.std == b.std


def test_explicit_val_size_tail_and_random():
    tail = load_dataset(DataConfig(val_size=100))
    full = load_dataset(DataConfig(val_size=0))
    assert len(full.val_y) == 0 and len(full.train_y) == 1437
    assert torch.equal(tail.val_x, full.train_x[-100:]) and torch.equal(tail.train_x, full.train_x[:-100])
    frac = load_dataset(DataConfig(val_size=0.25))
    assert len(frac.val_y) == round(0.25 * 1437)
    r1 = load_dataset(DataConfig(val_size=100, val_mode="random", split_seed=1))
    r1b = load_dataset(DataConfig(val_size=100, val_mode="random", split_seed=1))
    r2 = load_dataset(DataConfig(val_size=100, val_mode="random", split_seed=2))
    assert torch.equal(r1.val_x, r1b.val_x) and not torch.equal(r1.val_x, r2.val_x)
    assert len(r1.train_y) == 1337 and torch.equal(r1.test_x, full.test_x)


def test_split_val_tail_matches_cifar_protocol():
    train, val = split_val(50000, 5000, "tail", seed=10, what="x")
    assert torch.equal(val, torch.arange(45000, 50000)) and torch.equal(train, torch.arange(45000))
    train, val = split_val(100, 0.1, "random", seed=10, what="x")
    assert len(val) == 10 and len(train) == 90
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(100))
    assert torch.equal(train, train.sort().values)
    with pytest.raises(DataError, match="no training images"):
        split_val(10, 10, "tail", seed=0, what="data.val_size")


# --- npz ----------------------------------------------------------------------------------------


def test_npz_nhwc_loads_as_nchw(tmp_path):
    path = _write_npz(tmp_path / "toy.npz")
    raw = np.load(path)
    s = load_dataset(_npz_cfg(path))
    assert s.train_x.shape == (40, 3, 6, 6) and s.val_x.shape == (10, 3, 6, 6) and s.test_x.shape == (20, 3, 6, 6)
    assert torch.equal(s.train_x, torch.from_numpy(raw["x_train"]).permute(0, 3, 1, 2))
    assert torch.equal(s.val_y, torch.from_numpy(raw["y_val"]))
    assert s.class_names == ["c0", "c1", "c2", "c3"] and s.augment == "crop_flip" and s.crop_padding == 4
    # Not a known dataset: the stats are the training split's.
    expect = raw["x_train"].astype(np.float64) / 255
    assert s.mean == pytest.approx(expect.mean(axis=(0, 1, 2)), abs=1e-4)
    assert s.std == pytest.approx(expect.std(axis=(0, 1, 2)), abs=1e-4)


def test_npz_nchw_without_val_uses_tail_and_rejects_val_size_with_own_val(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (30, 3, 5, 5), dtype=np.uint8)
    path = _write_npz(tmp_path / "nchw.npz", n_train=30, size=5, x_train=x, x_val=None, y_val=None,
                      x_test=x[:4], y_test=np.zeros(4, dtype=np.int64))
    s = load_dataset(_npz_cfg(path))
    assert len(s.val_y) == 3 and torch.equal(s.val_x, torch.from_numpy(x[-3:]))
    with pytest.raises(DataError, match="val_size.*own validation set"):
        load_dataset(_npz_cfg(_write_npz(tmp_path / "withval.npz"), val_size=5))


@pytest.mark.parametrize(
    "override, needle",
    [
        ({"x_test": None}, "missing array 'x_test'"),
        ({"y_train": np.zeros(39, dtype=np.int64)}, "'y_train' has shape (39,) but 'x_train' holds 40"),
        ({"x_test": np.zeros((20, 7, 7, 3), dtype=np.uint8)}, "'x_test' images are (3, 7, 7)"),
        ({"y_test": np.full(20, 4)}, "'y_test' holds label 4, outside [0, 4)"),
        ({"label_names": None, "y_val": np.full(10, -1)}, "'y_val' holds label -1"),
        ({"x_train": np.zeros((40, 6, 6, 3), dtype=np.float32)}, "'x_train' has dtype float32"),
        ({"y_train": np.zeros(40, dtype=np.float64)}, "'y_train' has dtype float64"),
        ({"x_train": np.zeros((40, 6, 6, 5), dtype=np.uint8)}, "expected 1 or 3 channels"),
        ({"y_val": None}, "has 'x_val' but no 'y_val'"),
    ],
)
def test_malformed_npz_errors_name_file_and_key(tmp_path, override, needle):
    path = _write_npz(tmp_path / "bad.npz", **override)
    with pytest.raises(DataError) as err:
        load_dataset(_npz_cfg(path))
    assert str(path) in str(err.value) and needle in str(err.value)


def test_unreadable_or_vanished_npz(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=f"cannot read {junk}"):
        load_dataset(_npz_cfg(junk))
    cfg = _npz_cfg(_write_npz(tmp_path / "gone.npz"))
    cfg.path.unlink()
    with pytest.raises(DataError, match=f"file not found: {cfg.path}"):
        load_dataset(cfg)


def test_real_cifar10_subset():
    if not CIFAR10_NPZ.is_file():
        pytest.skip(f"{CIFAR10_NPZ} not present")
    s = load_dataset(_npz_cfg(CIFAR10_NPZ))
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (10000, 5000, 1000)
    assert s.train_x.shape[1:] == (3, 32, 32) and s.num_classes == 10 and s.class_names[0] == "airplane"
    assert (s.mean, s.std) == KNOWN_STATS["cifar10"]
    assert s.augment == "crop_flip" and s.crop_padding == 4
    assert torch.equal(torch.bincount(s.train_y), torch.full((10,), 1000))


def test_norm_stats_override_and_channel_stats():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 1, 2, 2).contiguous()
    assert channel_stats(x) == ((0.5,), (0.5,))
    with pytest.raises(DataError, match="norm_stats.*RGB"):
        load_dataset(DataConfig(norm_stats="cifar10"))


# --- torchvision sets ---------------------------------------------------------------------------


def test_missing_torchvision_files_name_the_root(tmp_path):
    for name, expected in (("cifar10", "cifar-10-batches-py/data_batch_1"), ("cifar100", "cifar-100-python/train"),
                           ("svhn", "train_32x32.mat")):
        with pytest.raises(DataError) as err:
            load_dataset(DataConfig(dataset=name, root=tmp_path))
        msg = str(err.value)
        assert str(tmp_path) in msg and expected in msg and "download: true" in msg


def test_offline_download_becomes_data_error(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvd.CIFAR10, "download", offline)
    with pytest.raises(DataError, match=f"cannot download cifar10 in {tmp_path}.*no network"):
        load_dataset(DataConfig(dataset="cifar10", root=tmp_path, download=True))


def test_torchvision_arrays_convert_and_split_tail(tmp_path, monkeypatch):
    for f in sources._EXPECTED["cifar10"]:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).touch()
    n = 5100
    data = np.random.default_rng(2).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    fake_train = SimpleNamespace(data=data, targets=list(np.arange(n) % 10), classes=[f"k{i}" for i in range(10)])
    fake_test = SimpleNamespace(data=data[:7], targets=[1] * 7, classes=fake_train.classes)
    monkeypatch.setattr(sources, "_torchvision_sets", lambda name, root, download: (fake_train, fake_test))
    s = load_dataset(DataConfig(dataset="cifar10", root=tmp_path))
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (100, 5000, 7)
    assert torch.equal(s.val_x, torch.from_numpy(data[100:]).permute(0, 3, 1, 2))
    assert (s.mean, s.std) == KNOWN_STATS["cifar10"] and s.augment == "crop_flip"


# --- image folders ------------------------------------------------------------------------------


def _png(path: Path, value: int, size=(6, 6), mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 0)).save(path)


def test_imagefolder_plain_layout(tmp_path):
    for c, name in enumerate(["cat", "dog"]):
        for i in range(10):
            _png(tmp_path / "train" / name / f"{i}.png", 10 * c + i)
        _png(tmp_path / "val" / name / "v.png", 200 + c, mode="L")
    s = load_dataset(DataConfig(dataset="imagefolder", root=tmp_path))
    assert s.class_names == ["cat", "dog"] and s.train_x.shape[1:] == (3, 6, 6)
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (18, 2, 2)  # 10% of train drawn as val
    assert torch.equal(s.test_y, torch.tensor([0, 1])) and int(s.test_x[1, 2, 0, 0]) == 201  # gray -> RGB
    again = load_dataset(DataConfig(dataset="imagefolder", root=tmp_path))
    assert torch.equal(s.val_x, again.val_x)
    _png(tmp_path / "train" / "dog" / "odd.png", 0, size=(5, 6))
    with pytest.raises(DataError, match="odd.png is 5x6.*one size"):
        load_dataset(DataConfig(dataset="imagefolder", root=tmp_path))


def test_imagefolder_raw_tiny_imagenet_layout(tmp_path):
    wnids = ["n00000001", "n00000002"]
    for c, w in enumerate(wnids):
        for i in range(5):
            _png(tmp_path / "train" / w / "images" / f"{w}_{i}.JPEG", c)
    notes = []
    for i, w in enumerate([wnids[1], wnids[0], wnids[1]]):
        _png(tmp_path / "val" / "images" / f"val_{i}.JPEG", 50)
        notes.append(f"val_{i}.JPEG\t{w}\t0\t0\t5\t5")
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(notes) + "\n")
    _png(tmp_path / "test" / "images" / "test_0.JPEG", 9)  # unlabelled: ignored
    s = load_dataset(DataConfig(dataset="imagefolder", root=tmp_path, val_size=2, val_mode="random"))
    assert s.class_names == wnids and len(s.train_y) == 8 and len(s.val_y) == 2
    assert torch.equal(s.test_y, torch.tensor([1, 0, 1]))


# --- subsets ------------------------------------------------------------------------------------


def test_balanced_subset_counts_and_first_n():
    y = torch.arange(1000) % 10
    y = y[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]
    idx = subset_indices(y, 0.1, "balanced", seed=0, num_classes=10)
    assert len(idx) == 100 and torch.equal(torch.bincount(y[idx], minlength=10), torch.full((10,), 10))
    assert torch.equal(idx, subset_indices(y, 0.1, "balanced", seed=0, num_classes=10))
    assert not torch.equal(idx, subset_indices(y, 0.1, "balanced", seed=1, num_classes=10))
    assert torch.equal(subset_indices(y, 0.01, "first", seed=0, num_classes=10), torch.arange(10))
    odd = subset_indices(y, 0.105, "balanced", seed=0, num_classes=10)  # 105 = 10 * 10 + 5
    counts = torch.bincount(y[odd], minlength=10)
    assert len(odd) == 105 and int(counts.max()) == 11 and int(counts.min()) == 10
    with pytest.raises(DataError, match="class 0 has 1 training images"):
        subset_indices(torch.tensor([0, 1, 1, 1, 1, 1]), 0.7, "balanced", seed=0, num_classes=2)
    with pytest.raises(DataError, match="keeps none"):
        subset_indices(y, 0.0001, "first", seed=0, num_classes=10)


def test_load_dataset_applies_subset_after_val():
    full = load_dataset(DataConfig())
    first = load_dataset(DataConfig(train_fraction=0.5, subset="first"))
    assert torch.equal(first.train_x, full.train_x[:628]) and torch.equal(first.val_x, full.val_x)
    assert first.mean == full.mean  # stats come from the whole training split
    bal = load_dataset(DataConfig(train_fraction=0.2))
    counts = torch.bincount(bal.train_y, minlength=10)
    assert len(bal.train_y) == 251 and int(counts.max() - counts.min()) <= 1


# --- batches and augmentation -------------------------------------------------------------------


def test_num_batches():
    assert num_batches(45000, 128) == 352 and num_batches(45000, 128, drop_last=True) == 351
    assert num_batches(0, 4) == 0


def test_train_batches_deterministic_and_resumable():
    x, y = _toy()
    full = _batches(x, y)
    assert [len(b[1]) for b in full] == [16, 16, 16, 2]
    again = _batches(x, y)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full, again))
    for k in (1, 3, 4):
        tail = _batches(x, y, start_batch=k)
        assert len(tail) == len(full) - k
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[k:], tail))
    other = _batches(x, y, epoch=3)
    assert not torch.equal(torch.cat([b[1] for b in full]), torch.cat([b[1] for b in other]))
    with pytest.raises(ValueError, match="start_batch"):
        _batches(x, y, start_batch=5)
    assert len(_batches(x, y, drop_last=True)) == 3


def test_unaugmented_epoch_is_a_permutation_in_unit_range():
    x, y = _toy()
    xs, ys = zip(*_batches(x, y, augment="none"))
    images = torch.cat(xs)
    assert images.dtype == torch.float32 and 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    order = torch.cat(ys)
    # 'none' yields exactly x / 255 in the shuffled order; recover the order from the pixels.
    flat = (images * 255).round().to(torch.uint8).flatten(1)
    perm = torch.tensor([int((x.flatten(1) == row).all(1).nonzero()[0]) for row in flat])
    assert torch.equal(perm.sort().values, torch.arange(len(x))) and torch.equal(order, y[perm])
    assert torch.allclose(images, x[perm].float() / 255)


def test_crop_and_flip_are_shifts_and_mirrors():
    # Distinct pixel values so every output pixel identifies its source.
    x = (torch.arange(64 * 1 * 5 * 5) % 250 + 1).to(torch.uint8).view(64, 1, 5, 5)
    p = 2
    out = augment_batch(x, augment="crop_flip", crop_padding=p, gen=torch.Generator().manual_seed(0))
    out8 = (out * 255).round().to(torch.uint8)
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    flips = shifts = 0
    for i in range(len(x)):
        found = None
        for dy in range(2 * p + 1):
            for dx in range(2 * p + 1):
                crop = padded[i, :, dy:dy + 5, dx:dx + 5]
                for flipped in (False, True):
                    if torch.equal(out8[i], crop.flip(-1) if flipped else crop):
                        found = (dy, dx, flipped)
        assert found is not None, f"image {i} is not a padded crop (optionally mirrored)"
        flips += found[2]
        shifts += found[:2] != (p, p)
    assert 10 < flips < 54 and shifts > 32  # both happen, neither always
    assert out.shape == (64, 1, 5, 5) and not torch.equal(out8, x)


def test_rotation_keeps_centre_and_values():
    x = torch.randint(1, 256, (32, 3, 9, 9), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    out = augment_batch(x, augment="crop_flip_rotate", crop_padding=0, gen=torch.Generator().manual_seed(2))
    ref = augment_batch(x, augment="crop_flip", crop_padding=0, gen=torch.Generator().manual_seed(2))
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(out[:, :, 4, 4], ref[:, :, 4, 4])  # the centre pixel stays put
    allowed = torch.cat([x.flatten(), torch.zeros(1, dtype=torch.uint8)]).unique()
    assert torch.isin((out * 255).round().to(torch.uint8), allowed).all()  # nearest: no new values
    assert not torch.equal(out, ref)


def test_none_leaves_images_unchanged_and_bad_name_rejected():
    x, _ = _toy(8)
    out = augment_batch(x, augment="none", crop_padding=4, gen=torch.Generator().manual_seed(0))
    assert torch.equal(out, x.float() / 255)
    with pytest.raises(ValueError, match="resolved"):
        augment_batch(x, augment="auto", crop_padding=4, gen=torch.Generator())


def test_eval_batches_fixed_order_and_limit():
    x, y = _toy(10)
    got = list(eval_batches(x, y, batch_size=4, device="cpu", limit=7))
    assert [len(b[1]) for b in got] == [4, 3]
    assert torch.equal(torch.cat([b[0] for b in got]), x[:7].float() / 255)
    assert torch.equal(torch.cat([b[1] for b in got]), y[:7])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_match_cpu():
    x, y = _toy()
    cpu = _batches(x, y, augment="crop_flip")
    gpu = _batches(x, y, augment="crop_flip", device="cuda")
    assert gpu[0][0].device.type == "cuda"
    assert all(torch.equal(a[0], b[0].cpu()) and torch.equal(a[1], b[1].cpu()) for a, b in zip(cpu, gpu))


# --- config validation --------------------------------------------------------------------------


def _error_fields(exc: ValidationError) -> str:
    return "\n".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"train_fraction": 0.0}, "train_fraction: "),
        ({"train_fraction": 1.5}, "train_fraction: "),
        ({"val_size": 1.5}, "val_size: "),
        ({"val_size": -3}, "val_size: "),
        ({"val_size": True}, "val_size: "),
        ({"crop_padding": -1}, "crop_padding: "),
        ({"augment": "mixup"}, "augment: "),
        ({"colour": "red"}, "colour: "),
        ({"dataset": "npz"}, "path: required for dataset 'npz'"),
        ({"dataset": "npz", "path": "/nonexistent/x.npz"}, "path: file not found: /nonexistent/x.npz"),
        ({"dataset": "cifar10"}, "root: required"),
        ({"dataset": "cifar10", "root": "/nonexistent/c10"}, "root: directory not found: /nonexistent/c10"),
        ({"path": "/tmp"}, "path: only used with dataset 'npz'"),
        ({"download": True}, "download: only"),
        ({"dataset": "imagefolder", "root": "/tmp", "val_size": 10}, "val_mode: 'tail'"),
    ],
)
def test_config_errors_name_the_field(kwargs, needle):
    with pytest.raises(ValidationError) as err:
        DataConfig(**kwargs)
    assert needle in _error_fields(err.value)


def test_config_accepts_download_into_missing_root(tmp_path):
    cfg = DataConfig(dataset="svhn", root=tmp_path / "later", download=True, val_size="0.2")
    assert cfg.val_size == 0.2 and cfg.root == tmp_path / "later"
