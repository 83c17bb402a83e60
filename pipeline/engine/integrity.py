"""Integrity of a run directory: finished stages are verified before they are trusted.

`<run>/integrity.json` is the run-level record. It is rewritten atomically right after each stage's
stage.json and holds, per finished stage, the sha256 of that stage.json and the size and mtime of
every file the stage recorded:

    {"format": 1, "stages": {"warmup": {"record_sha256": "...",
                                        "files": {"model.safetensors": {"size": 1234, "mtime_ns": ...}}}}}

So an edited metric (stage.json no longer matches its sha256) is refused, and a deleted or unreadable
stage.json of a stage the run finished is reported as damaged instead of looking "pending" and being
retrained silently along with everything after it.

File verification policy (`verify_files`):
  * a missing file, or one whose size differs from the record, is damaged (no hashing needed);
  * `deep=True` (a `run` about to skip the stage): every file up to FULL_HASH_BYTES is hashed, and a
    larger one when its size or mtime differs from what was recorded at write time;
  * `deep=False` (`status`): a file is hashed only when its size or mtime differs from the record.
A byte flipped in place changes the mtime, so `status` catches it too; silent media corruption of a
file over FULL_HASH_BYTES whose stat is unchanged is caught when a later stage loads it (every load
checks the sha256). The record guards against accidents (edits, truncation, deletion, bad copies),
not against someone who rewrites both stage.json and integrity.json.

A stage folder removed as a whole counts as never run (a deliberate `rm -r`, nothing left to protect).
A stage.json that the record does not list (a run made before this file existed, or a kill between
the two writes) is adopted after its files pass a full hash check.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.engine import store
from pipeline.engine.errors import CheckpointError

INTEGRITY_JSON = "integrity.json"
STAGE_JSON = "stage.json"
FULL_HASH_BYTES = 64 << 20  # hashing 64 MiB costs ~0.1 s; bigger files use the size + mtime fast path


def _load(run_dir: Path) -> dict:
    path = Path(run_dir) / INTEGRITY_JSON
    if not path.exists():
        return {"format": 1, "stages": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            raise ValueError("no 'stages' mapping")
        return data
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: damaged ({exc}); it protects the stage records of this run. "
                              "Delete it to re-adopt every stage after a full hash check of its files") from None


def entry(run_dir: Path, name: str) -> dict | None:
    return _load(run_dir)["stages"].get(name)


def _stats(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def record_stage(run_dir: Path, name: str) -> None:
    """Call right after `<run>/<name>/stage.json` was written: remember its sha256 and its files' stats."""
    run_dir = Path(run_dir)
    sdir = run_dir / name
    data = (sdir / STAGE_JSON).read_bytes()
    files = json.loads(data).get("files") or {}
    new = {"record_sha256": store.sha256_bytes(data), "files": {f: _stats(sdir / f) for f in sorted(files)}}
    whole = _load(run_dir)
    if whole["stages"].get(name) == new:
        return
    whole["stages"][name] = new
    store.atomic_write_json(run_dir / INTEGRITY_JSON, whole)


def forget_stage(run_dir: Path, name: str) -> None:
    """Call before a stage (re)runs: its old record no longer describes what is on disk."""
    run_dir = Path(run_dir)
    if not (run_dir / INTEGRITY_JSON).exists():
        return
    whole = _load(run_dir)
    if whole["stages"].pop(name, None) is not None:
        store.atomic_write_json(run_dir / INTEGRITY_JSON, whole)


def _repair_hint(name: str) -> str:
    return f"run again with --repair to redo {name!r} and every later stage"


def read_record(run_dir: Path, name: str) -> tuple[dict | None, str | None]:
    """(stage.json contents or None, problem or None). A problem means the stage is damaged."""
    run_dir = Path(run_dir)
    path = run_dir / name / STAGE_JSON
    known = entry(run_dir, name)
    if not path.exists():
        if known is None or not path.parent.exists():
            # no record, or the whole stage folder removed on purpose: nothing finished is left to lose
            return None, None
        return None, f"stage {name!r}'s record {path} is missing, but the run recorded it as finished; {_repair_hint(name)}"
    data = path.read_bytes()
    if known is not None and store.sha256_bytes(data) != known["record_sha256"]:
        return None, (f"stage {name!r}'s record {path} was altered after the stage wrote it (sha256 differs "
                      f"from {INTEGRITY_JSON}); its metrics cannot be trusted; {_repair_hint(name)}")
    try:
        record = json.loads(data.decode("utf-8"))
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"stage {name!r}'s record {path} is damaged ({exc}); {_repair_hint(name)}"
    return record, None


def checked_record(run_dir: Path, name: str) -> dict:
    """stage.json of a finished stage, or CheckpointError (exit 4) when it is damaged or altered."""
    record, problem = read_record(run_dir, name)
    if problem:
        raise CheckpointError(problem)
    if record is None:
        raise CheckpointError(f"stage {name!r} has not finished: {Path(run_dir) / name / STAGE_JSON} is missing; run it first")
    return record


def verify_files(run_dir: Path, name: str, record: dict, *, deep: bool) -> str | None:
    """The first problem with the files `record` lists (see the module docstring), or None."""
    sdir = Path(run_dir) / name
    stats = (entry(run_dir, name) or {}).get("files", {})
    for fname, sha in sorted((record.get("files") or {}).items()):
        path = sdir / fname
        if not path.is_file():
            return f"stage {name!r}: its output {path} is missing; {_repair_hint(name)}"
        now = _stats(path)
        known = stats.get(fname)
        if known is not None and known["size"] != now["size"]:
            return (f"stage {name!r}: {path} is {now['size']} bytes but was written with {known['size']} "
                    f"(truncated or replaced); {_repair_hint(name)}")
        if (deep and (known != now or now["size"] <= FULL_HASH_BYTES)) or (known is not None and known != now):
            if store.sha256_file(path) != sha:
                return (f"stage {name!r}: {path} does not match the sha256 in its stage.json (altered or "
                        f"damaged after it was written); {_repair_hint(name)}")
    return None
