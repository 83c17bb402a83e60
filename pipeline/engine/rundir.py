"""The one read model of a run directory: `RunDir` (the run and its stages in config order) and
`StageRecord` (one stage's folder: its parsed stage.json, status, sha256-verified files, history, model).

The runner derives what to skip from it, `pipeline status` prints it, and the reports, `compare`,
`double-win`, ticket loading and the stages that read an input stage all read a run through it, so there
is one rule for each question: which rows a history hands on (`history_select`), which stage holds the
weights another stage is about (`model_from`), and when a stage counts as done.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.engine import integrity, store
from pipeline.engine.errors import CheckpointError, PipelineError
from pipeline.engine.progress import progress_detail
from pipeline.engine.section import T

if TYPE_CHECKING:
    import torch

    from pipeline.engine.config import PipelineConfig

STAGE_JSON = "stage.json"
PROGRESS_DIR = "progress"
HISTORY = "history.jsonl"
MASKS = "masks.safetensors"
MODEL = "model.safetensors"
STRUCTURE_FILE = "structure.json"  # pipeline.models.structure writes it beside a shrunk network's weights

# Keys that change how a stage runs but not what it produces: editing them must not retrain anything.
_NOT_FINGERPRINTED_STAGE = {"progress_every_steps"}
_NOT_FINGERPRINTED_DATA = {"download"}


def fingerprint_of(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def stage_fingerprint(cfg: PipelineConfig, stage_cfg, input_output_fp: str | None) -> str:
    """Hash of everything that determines this stage's outputs: its config, the run's data/model/seed, its input."""
    return fingerprint_of({
        "stage": stage_cfg.model_dump(mode="json", exclude=_NOT_FINGERPRINTED_STAGE),
        # an unset `stream` is left out, so runs made before streaming existed keep their fingerprints
        "data": cfg.data.model_dump(mode="json", exclude=_NOT_FINGERPRINTED_DATA | (
            {"stream"} if getattr(cfg.data, "stream", None) is None else set())),
        "model": cfg.model.model_dump(mode="json"),
        "seed": cfg.run.seed,
        "input": input_output_fp,
    })


def output_fingerprint(fingerprint: str, files: dict[str, str]) -> str:
    return fingerprint_of({"fingerprint": fingerprint, "files": dict(sorted(files.items()))})


def masks_file_for(weights: str) -> str:
    """The masks that belong to a weights file: masks.safetensors for model.safetensors, else
    `<weights stem>.masks.safetensors` (IMP round tickets, best/final checkpoints)."""
    return MASKS if weights == MODEL else weights.removesuffix(".safetensors") + ".masks.safetensors"


def selected_history(rows: list[dict], select: dict | None) -> list[dict]:
    """The rows a stage.json `history_select` names (all rows when it names none)."""
    if not select:
        return rows
    return [r for r in rows if all(r.get(k) == v for k, v in select.items())]


class StageRecord:
    """One stage's folder. `data` is its parsed stage.json ({} until it finished); `status` is one of
    done / stale / partial / running / failed / pending / damaged, with `detail` saying why."""

    def __init__(self, run_dir: Path, name: str, type: str = "?", *, run: RunDir | None = None):
        self.name = name
        self.type = type
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / name
        self.run = run
        self.data: dict = {}
        self.status, self.detail = "pending", ""
        self._cache: dict[str, list[dict]] = {}
        try:  # checked against the run's integrity record: an altered or lost stage.json is damaged
            record, problem = integrity.read_record(self.run_dir, name)
        except PipelineError as exc:
            record, problem = None, str(exc)
        if problem:
            self.status, self.detail = "damaged", problem
        elif record is not None:
            self.data = record
            self.type = self.data.get("type", type)
            self.status = "done"
        elif (self.dir / "failed.json").exists():
            self.status, self.detail = "failed", _safe_json(self.dir / "failed.json").get("error", "")
        elif (self.dir / PROGRESS_DIR / "manifest.json").exists():
            man = _safe_json(self.dir / PROGRESS_DIR / "manifest.json")
            self.status, self.detail = "partial", f"saved at {progress_detail(man)}"

    @classmethod
    def finished_stage(cls, run_dir: Path, name: str) -> StageRecord:
        """A stage that must have finished (an input being loaded): a clear error when it has not."""
        rec = cls(run_dir, name)
        if not rec.finished:
            why = rec.detail if rec.status == "damaged" else f"{rec.dir / STAGE_JSON} is missing; run it first"
            raise CheckpointError(f"stage {name!r} has not finished: {why}")
        return rec

    # -- the parsed stage.json ------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return bool(self.data)

    def section(self, key: str | type[T]) -> Any:
        """A stage.json section: raw by key, or parsed by its typed class (`st.section(FlopsRecord)`);
        None when the stage did not write it."""
        if isinstance(key, str):
            return self.data.get(key)
        where = f"{self.dir / STAGE_JSON}: {key.SECTION}"
        return key.from_json(self.data.get(key.SECTION), where)

    @property
    def metrics(self) -> dict:
        return self.data.get("metrics") or {}

    @property
    def files(self) -> dict[str, str]:
        return self.data.get("files") or {}

    @property
    def config(self) -> dict:
        return self.data.get("config") or {}

    @property
    def card(self) -> dict | None:
        return self.data.get("model")

    @property
    def seconds(self) -> float | None:
        return (self.data.get("timings") or {}).get("seconds")

    @property
    def input_name(self) -> str | None:
        return self.data.get("input") or self.config.get("input")

    # -- files ------------------------------------------------------------------------------------
    def has_file(self, name: str) -> bool:
        return name in self.files

    def file(self, name: str) -> Path:
        """The path of a file this stage recorded, after checking it against its recorded sha256."""
        if name not in self.files:
            raise CheckpointError(f"stage {self.name!r} did not write {name} "
                                  f"(it wrote: {', '.join(self.files) or 'nothing'})")
        store.verify_file(self.dir / name, self.files[name])
        return self.dir / name

    def jsonl(self, name: str) -> list[dict]:
        if name not in self._cache:
            text = self.file(name).read_text(encoding="utf-8")
            try:
                self._cache[name] = [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"{self.dir / name}: not JSON lines ({exc})") from None
        return self._cache[name]

    def history(self, all_rows: bool = False) -> list[dict]:
        """Epoch rows of the weights this stage hands on. A stage that trains several times (imp rounds)
        names the rows that belong to them in stage.json `history_select`; `all_rows` returns everything."""
        rows = self.jsonl(HISTORY) if HISTORY in self.files else []
        return rows if all_rows else selected_history(rows, self.data.get("history_select"))

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self.files:
            raise CheckpointError(f"stage {self.name!r} did not write {name}")
        return store.load_tensors(self.dir / name, self.files[name])

    # -- the model --------------------------------------------------------------------------------
    def _sibling(self, name: str) -> StageRecord | None:
        if self.run is not None:
            return self.run.stage(name)
        return StageRecord(self.run_dir, name)

    def model_holder(self, required: bool = True) -> StageRecord:
        """The stage holding the weights this stage is about (evaluate/export pass their input's along).
        With `required=False` the chase stops at the last finished stage instead of raising."""
        st, seen = self, set()
        while st.data.get("model_from") and st.data["model_from"] != st.name and st.name not in seen:
            seen.add(st.name)
            nxt = st._sibling(st.data["model_from"])
            if nxt is None or not nxt.finished:
                if required:
                    raise CheckpointError(f"stage {st.name!r} hands on the model of {st.data['model_from']!r}, "
                                          "which has not finished")
                break
            st = nxt
        return st

    def build_model(self) -> tuple[torch.nn.Module, dict]:
        """(model, card): this stage's architecture rebuilt from its model card, weights not loaded. The one
        place a recorded model is rebuilt: a structural change the stage recorded beside its card (e.g. a
        channel-pruning history) is applied here, before any weights load."""
        from pipeline.models.card import build_model

        if self.card is None:
            raise CheckpointError(f"stage {self.name!r} has no model card in its stage.json")
        model = build_model(self.card)
        if self.has_file(STRUCTURE_FILE):  # a shrunk network: its structure is replayed before the weights load
            from pipeline.models.structure import replay_structure

            replay_structure(model, self.file(STRUCTURE_FILE))
        return model, self.card

    def load_model(self, device: torch.device | str = "cpu", weights: str = MODEL):
        """(model, masks or None, card): the model is rebuilt from the holder's card, then its weights
        are loaded strictly; the masks are those `masks_file_for(weights)` names, when recorded."""
        holder = self.model_holder()
        model, card = holder.build_model()
        state = holder.tensors(weights)
        missing, unexpected = _load_strict(model, state)
        if missing or unexpected:
            raise CheckpointError(f"{holder.dir / weights}: does not fit model {card['arch']!r} "
                                  f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        masks = None
        if holder.has_file(masks_file_for(weights)):
            from pipeline.sparsity import MaskSet

            masks = MaskSet(holder.tensors(masks_file_for(weights))).to(device)
        return model.to(device), masks, card


class RunDir:
    """A run directory: config.yaml and one StageRecord per configured stage, in config order.

    With `cfg` (the validated config the runner holds) finished stages are also checked against the
    fingerprint that config gives them (stale when they differ or their input is not done); without it
    the run's own config.yaml is validated, and where that fails (a stage plugin not installed here) the
    statuses are the plain on-disk view."""

    def __init__(self, run_dir: Path | str, cfg: PipelineConfig | None = None, *, locked: bool | None = None,
                 deep: bool = False):
        self.dir = Path(run_dir)
        self.deep = deep  # hash every recorded file of a done stage, not only those whose size/mtime changed
        cfg_path = self.dir / "config.yaml"
        if cfg is None:
            if not cfg_path.exists():
                raise PipelineError(f"{self.dir}: not a run directory (no config.yaml)")
            self.config_text = cfg_path.read_text(encoding="utf-8")
            self.config: dict = store.read_written_yaml(cfg_path) or {}
            cfg = _validated(self.config)
        else:
            self.config = cfg.resolved()
            self.config_text = cfg_path.read_text(encoding="utf-8") if cfg_path.exists() else ""
        self.name = (self.config.get("run") or {}).get("name") or self.dir.name
        self.stages = [StageRecord(self.dir, st.get("name"), st.get("type", "?"), run=self)
                       for st in self.config.get("stages") or []]
        self._by_name = {s.name: s for s in self.stages}
        if cfg is not None:
            self._judge(cfg, locked)

    def _judge(self, cfg: PipelineConfig, locked: bool | None) -> None:
        if locked is None:
            from pipeline.engine.lock import lock_state

            locked = lock_state(self.dir) == "held"
        for st_cfg in cfg.stages:
            rec = self._by_name[st_cfg.name]
            rec.type = st_cfg.type
            if rec.status == "partial" and locked:
                rec.status = "running"
            if rec.status != "done":
                continue
            inp = self._by_name.get(st_cfg.input) if st_cfg.input else None
            expected = stage_fingerprint(cfg, st_cfg, inp.data.get("output_fingerprint") if inp else None)
            if inp is not None and inp.status != "done":
                rec.status, rec.detail = "stale", f"its input {st_cfg.input!r} is {inp.status}"
            elif rec.data.get("fingerprint") != expected:
                rec.status, rec.detail = "stale", "its config or input changed since it ran"
            elif damage := integrity.verify_files(self.dir, rec.name, rec.data, deep=self.deep):
                # a stale stage reruns anyway; a damaged one contributes nothing to reports and inputs
                rec.status, rec.detail, rec.data = "damaged", damage, {}

    def stage(self, name: str | None) -> StageRecord | None:
        return self._by_name.get(name) if name else None

    def finished(self, stage_type: str | None = None) -> list[StageRecord]:
        return [s for s in self.stages if s.finished and (stage_type is None or s.type == stage_type)]

    def model_holder(self, st: StageRecord) -> StageRecord:
        return st.model_holder(required=False)

    def lineage(self, st: StageRecord) -> list[StageRecord]:
        """`st` and the stages it descends from through `input` links, upstream first."""
        chain, seen = [], set()
        cur: StageRecord | None = st
        while cur is not None and cur.name not in seen:
            seen.add(cur.name)
            chain.append(cur)
            cur = self.stage(cur.input_name)
        return chain[::-1]

    def evaluate_stage(self) -> StageRecord | None:
        done = self.finished("evaluate")
        return done[-1] if done else None

    def final_model_stage(self) -> StageRecord | None:
        """The stage holding the run's final model: the weights the last evaluate stage judged, or else
        those of the last finished stage that has a model."""
        ev = self.evaluate_stage()
        if ev is not None:
            return self.model_holder(ev)
        with_model = [s for s in self.finished() if s.card]
        return self.model_holder(with_model[-1]) if with_model else None

    def training_stages(self, upto: StageRecord | None = None) -> list[StageRecord]:
        """Stages that trained (they record training FLOPs), in the lineage of `upto` or of the whole run."""
        pool = self.lineage(upto) if upto is not None else self.finished()
        return [s for s in pool if s.finished and (s.section("flops") or {}).get("training")]


def _validated(config: dict) -> PipelineConfig | None:
    try:
        from pipeline.engine.config import validate_tree

        return validate_tree(config)
    except Exception:  # any failure here only downgrades the statuses to the plain on-disk view
        return None


def _safe_json(path: Path) -> dict:
    try:
        return store.read_json(path)
    except PipelineError as exc:
        return {"error": str(exc)}


def _load_strict(model: torch.nn.Module, state: dict) -> tuple[list, list]:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        return missing, unexpected
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        return bad, []
    model.load_state_dict(state, strict=True)
    return [], []
