"""Atomic writes, sha256 verification and weights-only loading."""
from __future__ import annotations

import os

import pytest
import torch

from pipeline.engine import store
from pipeline.engine.errors import CheckpointError


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "a.json"
    store.atomic_write_json(path, {"x": 1})
    store.atomic_write_json(path, {"x": 2})
    assert store.read_json(path) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp files left


def test_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "m.bin"
    store.atomic_write_bytes(path, b"old")
    with pytest.raises(RuntimeError):
        with store.atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.bin"]


def test_tensors_round_trip_and_tamper_detection(tmp_path):
    path = tmp_path / "model.safetensors"
    tensors = {"w": torch.randn(4, 3), "mask": torch.rand(4, 3) > 0.5}
    sha = store.save_tensors(path, tensors)
    back = store.load_tensors(path, sha)
    assert torch.equal(back["w"], tensors["w"]) and back["mask"].dtype == torch.bool

    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # flip one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        store.load_tensors(path, sha)

    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(CheckpointError, match="truncated or altered"):
        store.load_tensors(path, sha)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        store.load_tensors(path, None)


def test_state_loads_weights_only(tmp_path):
    path = tmp_path / "state.pt"
    sha = store.save_state(path, {"step": 3, "t": torch.ones(2), "nested": [1, {"a": 2.0}]})
    assert store.load_state(path, sha)["nested"][1]["a"] == 2.0

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(CheckpointError, match="weights-only"):
        store.load_state(bad)
