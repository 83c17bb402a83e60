"""One writer per run directory: an O_EXCL lock file holding the owner's pid and host."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from .errors import LockError

LOCK_NAME = ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_lock(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / LOCK_NAME).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def lock_state(run_dir: Path) -> str:
    """'free', 'held' (a live process on this host), or 'stale' (its owner is gone)."""
    info = read_lock(run_dir)
    if info is None:
        return "free" if not (Path(run_dir) / LOCK_NAME).exists() else "stale"
    if info.get("host") != socket.gethostname():
        return "held"  # cannot check another host's processes; assume it is alive
    return "held" if _pid_alive(int(info.get("pid", -1))) else "stale"


class RunLock:
    """Context manager; `on_stale(info)` is told when a dead owner's lock is taken over."""

    def __init__(self, run_dir: Path, on_stale=None):
        self.path = Path(run_dir) / LOCK_NAME
        self.on_stale = on_stale
        self._held = False

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                state = lock_state(self.path.parent)
                info = read_lock(self.path.parent) or {}
                if state == "held":
                    raise LockError(
                        f"{self.path.parent} is in use by process {info.get('pid')} on {info.get('host')} "
                        f"(since {info.get('started', '?')}); wait for it to finish or stop it first"
                    ) from None
                if self.on_stale:
                    self.on_stale(info)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S")}, f)
                f.flush()
                os.fsync(f.fileno())
            self._held = True
            return self
        raise LockError(f"could not take the lock {self.path}")

    def __exit__(self, *exc) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False
