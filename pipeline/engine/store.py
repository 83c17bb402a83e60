"""Files of a run: atomic writes, sha256 verification, weights-only loading.

Every file a stage leaves is written to a temp file in the same folder, fsynced and renamed over the
target, so a crash leaves either the old file or the new one, never half of one. Files listed in a
stage.json carry their sha256; loading checks it first and refuses anything truncated or altered.
Nothing is unpickled beyond tensors and plain containers.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from pipeline.engine import distributed
from pipeline.engine.errors import CheckpointError

# torch and safetensors are imported by the tensor functions only: the light commands read JSON through here
if TYPE_CHECKING:
    import torch


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    # The rename itself must reach the disk, or a power cut can lose the new name.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on normal exit fsync it and rename it over `path`.

    Under torchrun only rank 0 writes: other ranks get a scratch path that is thrown away."""
    target = Path(path)
    if not distributed.is_main():
        with tempfile.TemporaryDirectory(prefix="pipeline-rank-") as scratch:
            yield Path(scratch) / target.name
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs should read like any other file
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write `data` atomically; return its sha256 (on every rank; only rank 0 writes)."""
    if not distributed.is_main():
        return sha256_bytes(data)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return sha256_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> str:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    torch = sys.modules.get("torch")  # not imported: obj cannot be a tensor
    if torch is not None and isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _read_text_as(path: str | os.PathLike, parse, errors: tuple[type[Exception], ...], what: str) -> Any:
    p = Path(path)
    try:
        return parse(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{p}: file not found") from None
    except (*errors, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{p}: not valid {what} ({exc}); the file is damaged") from None


def read_json(path: str | os.PathLike) -> Any:
    return _read_text_as(path, json.loads, (json.JSONDecodeError,), "JSON")


def read_written_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file this project wrote (a run's config.yaml); user configs go through engine.config."""
    import yaml

    return _read_text_as(path, yaml.safe_load, (yaml.YAMLError,), "YAML")


def verify_file(path: str | os.PathLike, expected_sha256: str | None) -> bytes:
    """Read a whole file and check its sha256; raise CheckpointError naming the file otherwise."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{p}: file not found") from None
    if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
        raise CheckpointError(
            f"{p}: sha256 mismatch (expected {expected_sha256[:12]}…, file has {sha256_bytes(data)[:12]}…); "
            "the file was truncated or altered after it was written. Re-run the stage that made it "
            "(pipeline run CONFIG --from STAGE)."
        )
    return data


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """Save tensors as safetensors, atomically; return the file's sha256."""
    from safetensors.torch import save as st_save

    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    data = st_save(flat, metadata=metadata)
    return atomic_write_bytes(path, data)


def load_tensors(path: str | os.PathLike, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    data = verify_file(path, expected_sha256)
    try:
        return st_load(data)
    except (SafetensorError, Exception) as exc:  # safetensors raises its own error or plain ones on garbage
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def save_state(path: str | os.PathLike, obj: Any) -> str:
    """torch.save of tensors and plain containers only (loadable with weights_only=True), atomically."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_state(path: str | os.PathLike, expected_sha256: str | None = None) -> Any:
    import torch

    data = verify_file(path, expected_sha256)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError / RuntimeError on damaged or unsafe files
        raise CheckpointError(f"{path}: cannot be loaded weights-only ({type(exc).__name__}: {exc})") from None
