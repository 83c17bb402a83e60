"""One writer per run directory.

The lock is an advisory `flock` on `<run>/.lock`, which the kernel releases when the owning process
dies however it dies (even SIGKILL), so two writers can never both hold it and a dead one never blocks
the next. The file also carries the owner's pid, host and start time: for the error message when the
run is busy, and to report (when it is still there at the next start) that the last owner died
without finishing.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from pipeline.engine.errors import LockError

LOCK_NAME = ".lock"


def read_lock(run_dir: Path) -> dict | None:
    try:
        text = (Path(run_dir) / LOCK_NAME).read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        return {"raw": text[:200]}


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def lock_state(run_dir: Path) -> str:
    """'free', 'held' (a live process owns it), or 'stale' (its owner died without releasing)."""
    path = Path(run_dir) / LOCK_NAME
    if not path.exists():
        return "free"
    fd = os.open(path, os.O_RDONLY)
    try:
        if not _try_flock(fd):
            return "held"
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return "stale" if read_lock(run_dir) else "free"


class RunLock:
    """Context manager; `on_stale(info)` is told when the previous owner died holding the run."""

    def __init__(self, run_dir: Path, on_stale=None):
        self.path = Path(run_dir) / LOCK_NAME
        self.on_stale = on_stale
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        if not _try_flock(fd):
            os.close(fd)
            info = read_lock(self.path.parent) or {}
            raise LockError(
                f"{self.path.parent} is in use by process {info.get('pid', '?')} on {info.get('host', '?')} "
                f"(since {info.get('started', '?')}); wait for it to finish or stop it first"
            )
        previous = read_lock(self.path.parent)
        if previous and self.on_stale:
            self.on_stale(previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # a clean finish: nothing stale to report next time
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
