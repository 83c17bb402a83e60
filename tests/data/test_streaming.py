"""The streaming image folder: deterministic, resumable, shardable order; ImageNet-style crops; a real run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data import DataConfig, load_dataset, training_batches
from pipeline.data.streaming import StreamingSplits

from tests.conftest import run_cli

STREAM = {"image_size": 12, "resize_size": 14, "min_scale": 0.3, "workers": 0}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes x 10 train PNGs of mixed sizes (and one grayscale), 3 x 3 labelled val PNGs."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 10), ("val", 3)):
        for c in ("ant", "bee", "cat"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                h, w = int(rng.integers(14, 30)), int(rng.integers(14, 30))
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                img = Image.fromarray(pixels[:, :, 0]) if i == 0 else Image.fromarray(pixels)
                img.save(root / split / c / f"{i}.png")
    return root


def batches(data, **kw):
    args = {"batch_size": 8, "seed": 3, "epoch": 1, "device": "cpu", **kw}
    return list(training_batches(data, **args))


def test_streamed_order_is_deterministic_resumable_and_shards_into_the_whole(folder):
    data = load_dataset(DataConfig(dataset="imagefolder", root=folder, val_size=6, val_mode="random",
                                   stream=STREAM))
    assert isinstance(data, StreamingSplits)
    assert len(data.train_y) == 24 and data.test_x.shape == (9, 3, 12, 12) and data.val_x.shape == (6, 3, 12, 12)
    assert data.input_size == (12, 12) and data.in_chans == 3
    full = batches(data)
    assert [x.shape[0] for x, _ in full] == [8, 8, 8] and full[0][0].shape[1:] == (3, 12, 12)
    assert all(0 <= float(x.min()) and float(x.max()) <= 1 for x, _ in full)
    again = batches(data)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full, again))
    resumed = batches(data, start_batch=2)  # a resume at batch 2 reads the uninterrupted run's batch 2
    assert torch.equal(resumed[0][0], full[2][0]) and len(resumed) == 1
    parts = [batches(data, shard=(r, 2)) for r in (0, 1)]  # two ranks: each batch split, union = the batch
    for b, (x, y) in enumerate(full):
        assert torch.equal(torch.cat([parts[0][b][0], parts[1][b][0]]), x)
        assert torch.equal(torch.cat([parts[0][b][1], parts[1][b][1]]), y)
    workers = load_dataset(DataConfig(dataset="imagefolder", root=folder, val_size=6, val_mode="random",
                                      stream={**STREAM, "workers": 2}))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, batches(workers)))  # worker count: no effect
    other = batches(data, epoch=2)
    assert not torch.equal(other[0][1], full[0][1]) or not torch.equal(other[0][0], full[0][0])


def test_stream_needs_an_image_folder():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="only dataset 'imagefolder' can be streamed"):
        DataConfig(dataset="digits", stream=STREAM)
    with pytest.raises(ValidationError, match="resize_size: 10 is below image_size 12"):
        DataConfig(dataset="digits", stream={**STREAM, "resize_size": 10})


def test_a_training_stage_runs_on_streamed_data(folder, write_config, tmp_path):
    cfg = {"run": {"name": "stream", "seed": 1},
           "data": {"dataset": "imagefolder", "root": str(folder), "stream": {**STREAM, "workers": 1}},
           "model": {"arch": "small_cnn"},
           "stages": [{"name": "warmup", "type": "dense_warmup", "mode": "fast", "epochs": 2, "batch_size": 8,
                       "optimizer": {"lr": 0.05}, "schedule": {"kind": "constant"}, "eval": {"robust": False}}]}
    run_dir = tmp_path / "run"
    run_cli("run", str(write_config(cfg)), "--run-dir", str(run_dir), "-q", check=True)
    rec = json.loads((run_dir / "warmup" / "stage.json").read_text())
    assert rec["metrics"]["epochs_run"] == 2 and rec["model"]["input_size"] == [12, 12]
    assert rec["flops"]["training"]["images"] == 2 * 27  # every streamed training image, each epoch
