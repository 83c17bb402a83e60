"""A stage's mid-run progress: numbered state files named by a manifest, written so that a kill at any
moment leaves a manifest that names a complete, verified state.

Order of writes: the state goes to a new file (state-<n>.pt), only then does manifest.json name it, and
older states go last. A manifest written under another config (fingerprint) is discarded, not resumed.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from pipeline.engine import store
from pipeline.engine.errors import CheckpointError
from pipeline.engine.seeding import capture_rng, restore_rng

MANIFEST = "manifest.json"


def progress_detail(manifest: dict) -> str:
    """Where a stage's saved progress stands, with epochs counted from 1 as the log counts them."""
    epoch, step, in_epoch = manifest.get("epoch"), manifest.get("step"), manifest.get("step_in_epoch")
    if not isinstance(epoch, int):
        return "? (its progress manifest is unreadable; run with --from STAGE to restart the stage)"
    if in_epoch:  # cut inside epoch `epoch` (0-based in the manifest)
        return f"epoch {epoch + 1} (part done), step {step}"
    return f"epoch {epoch} (done), step {step}"


class Progress:
    def __init__(self, directory: Path, fingerprint: str, log: Callable[[str], None]):
        self.dir = Path(directory)
        self.fingerprint = fingerprint
        self.log = log

    def save(self, state: dict, history: list[dict]) -> None:
        """Everything needed to continue; loadable weights-only. Call at safe points only."""
        state = dict(state)
        state["rng"] = capture_rng()
        state["history"] = list(history)
        manifest_path = self.dir / MANIFEST
        previous = store.read_json(manifest_path).get("file") if manifest_path.exists() else None
        number = int(previous.split("-")[1].split(".")[0]) + 1 if previous else 1
        name = f"state-{number:06d}.pt"
        sha = store.save_state(self.dir / name, state)
        store.atomic_write_json(manifest_path, {"fingerprint": self.fingerprint, "file": name, "sha256": sha,
                                                "epoch": state.get("epoch"), "step": state.get("step"),
                                                "step_in_epoch": state.get("step_in_epoch")})
        for old in self.dir.glob("state-*.pt"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def load(self, who: str) -> tuple[dict, list[dict]] | None:
        """(state, history) of the last saved state, with the global RNGs restored; None to start over."""
        manifest_path = self.dir / MANIFEST
        if not manifest_path.exists():
            return None
        manifest = store.read_json(manifest_path)
        if not isinstance(manifest, dict) or not all(isinstance(manifest.get(k), str) for k in ("file", "sha256")):
            raise CheckpointError(f"{manifest_path}: not a progress manifest")
        if manifest.get("fingerprint") != self.fingerprint:
            self.log(f"{who}: saved progress belongs to a different config; starting the stage over")
            self.clear()
            return None
        state = store.load_state(self.dir / manifest["file"], manifest["sha256"])
        restore_rng(state.pop("rng"))
        history = state.pop("history")
        self.log(f"{who}: resuming from saved progress ({progress_detail(manifest)})")
        return state, history

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
