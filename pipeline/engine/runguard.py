"""The runner's edges: a read-only or misplaced run directory, crash records, lock and progress notes.

Kept apart from runner.py so the order-and-skip logic there stays short.
"""
from __future__ import annotations

import errno
import os
import signal
import time
import traceback
from pathlib import Path

from pipeline.engine import store
from pipeline.engine.errors import CheckpointError, PipelineError, StageCrashed, UsageError

PROGRESS_MANIFEST = Path("progress") / "manifest.json"


def stale_lock_note(runner, info: dict) -> str:
    if "raw" in info:
        who = "a previous run (its lock file is unreadable)"
    else:
        who = f"the previous run in this directory (process {info.get('pid', '?')}, started {info.get('started', '?')})"
    saved = any((runner.run_dir / st.name / PROGRESS_MANIFEST).exists() for st in runner.cfg.stages)
    then = "; resuming from its saved progress" if saved else "; it left no saved progress, finished stages are kept"
    return f"note: {who} ended without finishing (stale lock){then}"


def write_failure(path: Path, exc: BaseException) -> None:
    """failed.json for `pipeline status`; a full disk must not hide the original error behind its own."""
    try:
        store.atomic_write_json(path, {
            "error": str(exc) if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
    except OSError:
        pass


def crash_error(st, exc: BaseException, failed: Path) -> StageCrashed:
    """An unexpected failure inside a stage: exit 1 with a plain message (5 is for a stage's own checks)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        where = f" ({exc.filename})" if exc.filename else ""
        text = f"{os.strerror(exc.errno)}{where}"
        if exc.errno == errno.ENOSPC:
            text += "; free some space and run the same command again to resume from the last progress save"
    else:
        text = f"{type(exc).__name__}: {exc}"
    tb = f" (traceback in {failed})" if failed.exists() else ""
    return StageCrashed(f"stage {st.name!r} ({st.type}) stopped: {text}{tb}")


def _check_location(run_dir: Path) -> None:
    for parent in (run_dir, *run_dir.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{parent} is a file, not a directory; it cannot hold the run directory "
                                 f"{run_dir} (check run.output_dir / --run-dir)")
            return


def read_only_pass(runner, stop: int, start: int | None, repair: bool) -> bool:
    """Before anything is written. True when the run directory is read-only and every stage up to
    `stop` is done and verified, so nothing needs writing: the skip lines are printed and the caller
    returns. A read-only directory with work to do is a clear error instead of a permission traceback."""
    run_dir = runner.run_dir
    _check_location(run_dir)
    if not run_dir.exists() or os.access(run_dir, os.W_OK | os.X_OK):
        return False
    statuses = runner.statuses(deep=True)[: stop + 1]
    todo = [s for s in statuses if s.state != "done"]
    if start is None and not todo:
        for s in statuses:
            runner.console.always(f"[{s.name}] done, skipped (fingerprint matches, files verified; read-only run directory)")
        return True
    damaged = [s for s in todo if s.state == "damaged"]
    if damaged and not repair:
        raise CheckpointError(damaged[0].detail)
    names = [s.name for s in statuses[start:]] if start is not None else [s.name for s in todo]
    raise UsageError(f"{run_dir} is read-only, and stage(s) {', '.join(names)} would need to run; "
                     "make it writable or pass --run-dir to run elsewhere")


def os_error_message(exc: OSError) -> tuple[str, int]:
    """(message, exit code) for an OSError outside a stage: permission problems are the user's to fix
    (2); a full disk or other I/O failure is 1, both without a traceback."""
    where = f": {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{os.strerror(exc.errno)}{where} (a read-only or someone else's folder? pass --out / --run-dir elsewhere)", 2
    if exc.errno == errno.ENOSPC:
        return f"{os.strerror(exc.errno)}{where}; free some space and run the same command again", 1
    if exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.EEXIST):
        return f"{os.strerror(exc.errno)}{where}", 2
    return f"{exc.strerror or exc}{where}", 1


def fault_point(stage: str) -> None:
    """Fault injection for the resume tests: SIGKILL this process when `stage` has written all its
    outputs but not yet its stage.json (the widest window for leftovers), as PIPELINE_FAULT_IN_STAGE says."""
    if os.environ.get("PIPELINE_FAULT_IN_STAGE") == stage:
        os.kill(os.getpid(), signal.SIGKILL)
