"""Runs a pipeline: order, fingerprints, skipping finished stages, --from/--until, locking, failure records."""
from __future__ import annotations

import platform
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from pipeline.engine import distributed, integrity, runguard, store
from pipeline.engine.config import PipelineConfig
from pipeline.engine.console import Console
from pipeline.engine.rundir import (PROGRESS_DIR, STAGE_JSON, RunDir, StageRecord, output_fingerprint,
                                    stage_fingerprint)
from pipeline.engine.seeding import seed_everything
from pipeline.engine.errors import CheckpointError, ConfigError, PipelineError, UsageError
from pipeline.engine.registry import STAGES

# torch and the stage context (models, structure) are imported when a stage runs: `status` builds a Runner
if TYPE_CHECKING:
    import torch

RUN_JSON = "run.json"


@dataclass
class StageStatus:
    name: str
    type: str
    state: str  # done | stale | pending | partial | running | failed | damaged
    detail: str = ""
    metrics: dict | None = None
    seconds: float | None = None


def resolve_device(requested: str) -> torch.device:
    import torch

    if requested == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is visible to torch (torch.cuda.is_available() is False)")
        return torch.device("cuda")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cpu")


def library_versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "nni", "torch-pruning",
                "advertorch", "safetensors", "sparse-robust-pipeline"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


class Runner:
    def __init__(self, cfg: PipelineConfig, run_dir: Path | None = None, *, device: str | None = None,
                 quiet: bool = False):
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir else Path(cfg.run.output_dir) / cfg.run.name
        self.device_name = device or cfg.run.device
        self.console = Console(quiet=quiet or distributed.env_world().rank != 0)  # one rank speaks
        self._data_cache: dict = {}

    # -- status ---------------------------------------------------------------------------------
    def statuses(self, deep: bool = False) -> list[StageStatus]:
        """`deep`: hash every recorded file of a done stage; else the size + mtime fast path (integrity.py)."""
        run = RunDir(self.run_dir, self.cfg, deep=deep)
        return [StageStatus(st.name, st.type, st.status, st.detail,
                            st.metrics if st.status == "done" else None, st.seconds if st.status == "done" else None)
                for st in run.stages]

    # -- run ------------------------------------------------------------------------------------
    def run(self, from_stage: str | None = None, until_stage: str | None = None, source: str | None = None,
            overrides: list[str] | None = None, repair: bool = False) -> list[StageStatus]:
        names = [s.name for s in self.cfg.stages]
        for flag, value in (("--from", from_stage), ("--until", until_stage)):
            if value is not None and value not in names:
                raise ConfigError(f"{flag} {value}: no such stage (stages: {', '.join(names)})")
        start = names.index(from_stage) if from_stage else None
        stop = names.index(until_stage) if until_stage else len(names) - 1
        if start is not None and start > stop:
            raise UsageError(f"--from {from_stage} comes after --until {until_stage}: nothing would run")
        device = distributed.init(self.cfg.run.distributed, resolve_device(self.device_name))
        if runguard.read_only_pass(self, stop, start, repair):
            return self.statuses()

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.console.log_file = self.run_dir / "run.log" if distributed.is_main() else None
        self.console.activate()  # long evaluations report progress through it
        with distributed.run_lock(self.run_dir, on_stale=self._report_stale_lock):
            store.atomic_write_text(self.run_dir / "config.yaml",
                                    yaml.safe_dump(self.cfg.resolved(), sort_keys=False))
            # what `pipeline status` compares against later: the config file and the --set edits it ran with
            store.atomic_write_json(self.run_dir / RUN_JSON, {"source_config": str(Path(source).resolve()) if source else None,
                                                              "overrides": list(overrides or []),
                                                              "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})
            self.console.info(f"run directory: {self.run_dir}  (device: {device})")
            for i, st in enumerate(self.cfg.stages):
                if i > stop:
                    break
                forced = start is not None and i >= start
                status = {s.name: s for s in self.statuses()}[st.name]
                if status.state == "done" and not forced:  # verified, not trusted: hash it before the skip
                    record, _ = integrity.read_record(self.run_dir, st.name)
                    if damage := integrity.verify_files(self.run_dir, st.name, record or {}, deep=True):
                        status = StageStatus(st.name, st.type, "damaged", damage)
                status.state = distributed.broadcast_object(status.state)  # rank 0's reading decides
                if status.state == "damaged" and not forced:
                    if not repair:
                        raise CheckpointError(status.detail)
                    start, forced = i, True  # --repair: this stage and every later one run again
                    self.console.always(f"[{st.name}] damaged ({status.detail.split('; run again')[0]}); re-running it")
                if status.state == "done" and not forced:
                    if distributed.is_main():
                        integrity.record_stage(self.run_dir, st.name)  # adopts a record the run did not list yet
                    self.console.always(f"[{st.name}] done, skipped (fingerprint matches, files verified)")
                    continue
                why = ("--repair" if status.state == "damaged" else "--from") if forced else \
                    ("resuming" if status.state in ("partial", "running") else status.state)
                self._run_stage(st, device, fresh=forced, why=why)
        return self.statuses()

    def _report_stale_lock(self, info: dict) -> None:
        self.console.always(runguard.stale_lock_note(self, info))

    def _run_stage(self, st, device: torch.device, *, fresh: bool, why: str) -> None:
        cls = STAGES.get(st.type)
        in_fp = StageRecord(self.run_dir, st.input).data.get("output_fingerprint") if st.input else None
        fp = stage_fingerprint(self.cfg, st, in_fp)
        sdir = self.run_dir / st.name
        if distributed.is_main():
            integrity.forget_stage(self.run_dir, st.name)
            _clear_outputs(sdir, keep_progress=not fresh)
        distributed.barrier()
        from pipeline.engine.context import StageContext

        ctx = StageContext(pipeline_config=self.cfg, stage_cfg=st, run_dir=self.run_dir, device=device,
                           console=self.console, fingerprint=fp, data_cache=self._data_cache)
        self.console.always(f"[{st.name}] running {st.type} ({why})")
        seed_everything(self.cfg.run.seed)
        started = time.time()
        try:
            with distributed.stage_scope(cls.collective) as runs_here:
                if runs_here:
                    cls().run(ctx)
                    ctx.publish_surviving()
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                self.console.always(f"[{st.name}] interrupted; run the same command again to resume")
                raise
            runguard.write_failure(sdir / "failed.json", exc)
            if isinstance(exc, PipelineError):
                raise
            raise runguard.crash_error(st, exc, sdir / "failed.json") from exc
        runguard.fault_point(st.name)  # resume tests: PIPELINE_FAULT_IN_STAGE=<name> dies before the record
        finished = time.time()
        record = {
            "name": st.name,
            "type": st.type,
            "status": "done",
            "fingerprint": fp,
            "output_fingerprint": output_fingerprint(fp, ctx.files),
            "config": st.model_dump(mode="json"),
            "input": st.input,
            "input_fingerprint": in_fp,
            "model": ctx.model_card,
            "model_from": ctx.model_from,
            # the dataset the model now belongs to, when a transfer upstream (or here) moved it off the run's
            "model_data": ctx.record.pop("model_data", None) or _dump(ctx.model_data_config()),
            "metrics": ctx.metrics,
            **ctx.record,
            "files": dict(sorted(ctx.files.items())),
            "timings": {"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(finished)),
                        "seconds": round(finished - started, 3)},
            "device": str(device),
            "versions": library_versions(),
        }
        store.atomic_write_json(sdir / STAGE_JSON, record)
        if distributed.is_main():
            integrity.record_stage(self.run_dir, st.name)
        ctx.clear_progress()
        distributed.barrier()  # the next stage reads this one's files
        self.console.always(f"[{st.name}] done in {finished - started:.1f}s" + _metric_line(ctx.metrics))


def _dump(cfg) -> dict | None:
    return None if cfg is None else cfg.model_dump(mode="json")


def _metric_line(metrics: dict) -> str:
    keys = [k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)][:6]
    return ("  " + ", ".join(f"{k}={metrics[k]:.4g}" for k in keys)) if keys else ""


def _clear_outputs(sdir: Path, keep_progress: bool) -> None:
    """Before a stage (re)runs: its old outputs go; its progress stays unless this is a fresh run."""
    if not sdir.exists():
        return
    for child in sdir.iterdir():
        if child.name == PROGRESS_DIR and keep_progress:
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()

