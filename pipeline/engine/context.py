"""What a stage sees while it runs (`StageContext`) and how it reads a finished stage (`StageHandle`)."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.engine import integrity, store
from pipeline.engine.errors import CheckpointError
from pipeline.engine.seeding import capture_rng, derive_seed, restore_rng
from pipeline.models.card import build_model, model_card

if TYPE_CHECKING:
    from pipeline.engine.config import PipelineConfig
    from pipeline.engine.console import Console
    from pipeline.data import DataSplits

PROGRESS_DIR = "progress"
STAGE_JSON = "stage.json"


class StageHandle:
    """A finished stage on disk. Every file it hands out is checked against the sha256 in stage.json."""

    def __init__(self, run_dir: Path, name: str):
        self.name = name
        self.dir = Path(run_dir) / name
        self.run_dir = Path(run_dir)
        self.record: dict = integrity.checked_record(self.run_dir, name)  # refuses an altered stage.json

    @property
    def metrics(self) -> dict:
        return self.record.get("metrics", {})

    @property
    def card(self) -> dict | None:
        return self.record.get("model")

    def has_file(self, name: str) -> bool:
        return name in self.record.get("files", {})

    def file(self, name: str) -> Path:
        files = self.record.get("files", {})
        if name not in files:
            raise CheckpointError(f"stage {self.name!r} did not write {name} (it wrote: {', '.join(files) or 'nothing'})")
        path = self.dir / name
        actual = store.sha256_file(path) if path.exists() else None
        if actual != files[name]:
            store.verify_file(path, files[name])  # raises with the clear message
        return path

    def read_tensors(self, name: str) -> dict[str, torch.Tensor]:
        return store.load_tensors(self.dir / name, self.record.get("files", {}).get(name) or _missing(self, name))

    def history(self, all_rows: bool = False) -> list[dict]:
        """Epoch rows of the weights this stage hands on. A stage that trains several times (imp rounds)
        names the rows that belong to them in stage.json `history_select`; `all_rows` returns everything."""
        if not self.has_file("history.jsonl"):
            return []
        path = self.file("history.jsonl")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return rows if all_rows else selected_history(rows, self.record)

    def model_stage(self) -> "StageHandle":
        """The stage holding the weights this stage is about (evaluate/export pass their input's along)."""
        src = self.record.get("model_from")
        if src and src != self.name:
            return StageHandle(self.run_dir, src).model_stage()
        return self

    def load_model(self, device: torch.device | str = "cpu", weights: str = "model.safetensors"):
        """Return (model, masks or None, card). The model is rebuilt from the card, then weights are loaded
        strictly. Masks: masks.safetensors for model.safetensors, else `<weights stem>.masks.safetensors`."""
        holder = self.model_stage()
        card = holder.card
        if card is None:
            raise CheckpointError(f"stage {holder.name!r} has no model card in its stage.json")
        model = build_model(card)
        state = holder.read_tensors(weights)
        missing, unexpected = _load_strict(model, state)
        if missing or unexpected:
            raise CheckpointError(
                f"{holder.dir / weights}: does not fit model {card['arch']!r} "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        masks = None
        masks_file = "masks.safetensors" if weights == "model.safetensors" else \
            weights.removesuffix(".safetensors") + ".masks.safetensors"
        if holder.has_file(masks_file):
            from pipeline.sparsity import MaskSet

            masks = MaskSet(holder.read_tensors(masks_file))
        return model.to(device), (masks.to(device) if masks is not None else None), card


def selected_history(rows: list[dict], record: dict) -> list[dict]:
    """The rows of a stage's history.jsonl that its stage.json `history_select` names (all when unset)."""
    select = record.get("history_select")
    if not select:
        return rows
    return [r for r in rows if all(r.get(k) == v for k, v in select.items())]


def _missing(handle: StageHandle, name: str):
    raise CheckpointError(f"stage {handle.name!r} did not write {name}")


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


class StageContext:
    """Owned by the runner; a stage reads its input and writes every output through it."""

    def __init__(self, *, cfg: PipelineConfig, stage_cfg, run_dir: Path, device: torch.device,
                 console: Console, fingerprint: str, data_cache: dict):
        self.cfg = cfg
        self.config = stage_cfg
        self.name: str = stage_cfg.name
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / self.name
        self.device = device
        self.console = console
        self.seed: int = cfg.run.seed
        self.fingerprint = fingerprint
        self.metrics: dict[str, Any] = {}
        self.record: dict[str, Any] = {}  # extra stage.json sections: sparsity, flops, runtime, ...
        self.files: dict[str, str] = {}  # file name -> sha256
        self.model_card: dict | None = None
        self.model_from: str | None = None
        self._data_cache = data_cache
        self._history: list[dict] = []
        self._progress_dir = self.dir / PROGRESS_DIR
        self._parent: StageContext | None = None
        self._tag: dict = {}
        self.input: StageHandle | None = StageHandle(self.run_dir, stage_cfg.input) if stage_cfg.input else None
        self.dir.mkdir(parents=True, exist_ok=True)

    # -- inputs ---------------------------------------------------------------------------------
    def data(self, data_cfg=None) -> DataSplits:
        """The dataset this stage works on, loaded once per process: `data_cfg` when given, else the
        dataset the input model was last trained on (after a transfer upstream), else the run's."""
        from pipeline.data import load_dataset

        data_cfg = data_cfg or self.model_data_config() or self.cfg.data
        key = data_cfg.model_dump_json()
        if key not in self._data_cache:
            self.log(f"loading dataset {data_cfg.dataset}")
            self._data_cache[key] = load_dataset(data_cfg)
        return self._data_cache[key]

    def model_data_config(self):
        """The DataConfig a transfer stage upstream recorded for the input model (None: the run's data)."""
        from pipeline.data import DataConfig

        if self.input is None:
            return None
        recorded = self.input.model_stage().record.get("model_data")
        return None if recorded is None else DataConfig.model_validate(recorded)

    def new_model(self, data: DataSplits | None = None, arch: str | None = None) -> torch.nn.Module:
        data = data or self.data()
        card = model_card(arch or self.cfg.model.arch, data)
        torch.manual_seed(self.seed)  # initial weights depend on the run seed only
        return build_model(card).to(self.device)

    def input_or_new_model(self, data: DataSplits | None = None):
        """(model, masks, card): the input stage's model when this stage has an input, else a fresh one."""
        if self.input is not None:
            return self.load_input_model()
        data = data or self.data()
        return self.new_model(data), None, model_card(self.cfg.model.arch, data)

    def load_input_model(self):
        if self.input is None:
            raise CheckpointError(f"stage {self.name!r} has no input stage to load a model from")
        return self.input.load_model(self.device)

    # -- outputs --------------------------------------------------------------------------------
    def save_model(self, model: torch.nn.Module, card: dict, masks=None, filename: str = "model.safetensors") -> None:
        """Write the model's weights (exact zeros where masked) and, for model.safetensors, its masks and card."""
        self.save_weights(model.state_dict(), filename, masks=masks)
        if masks is not None:
            self.save_masks(masks, "masks.safetensors" if filename == "model.safetensors"
                            else filename.removesuffix(".safetensors") + ".masks.safetensors")
        if filename == "model.safetensors":
            self.model_card = dict(card)

    def save_masks(self, masks, filename: str) -> None:
        self.files[filename] = store.save_tensors(self.dir / filename, {k: v.bool() for k, v in masks.items()})

    def save_weights(self, state: dict, filename: str, masks=None) -> None:
        if masks is not None:
            # stored weights carry exact zeros where masked, whatever the training loop left there
            state = dict(state)
            for name, mask in masks.items():
                state[name] = state[name] * mask.to(state[name].device, state[name].dtype)
        # one metadata key only: safetensors writes metadata in hash-map order, and files must be byte-reproducible
        meta = {"pipeline": json.dumps({"stage": self.name, "file": filename}, sort_keys=True)}
        self.files[filename] = store.save_tensors(self.dir / filename, state, metadata=meta)

    def write_json(self, name: str, obj: Any) -> Path:
        self.files[name] = store.atomic_write_json(self.dir / name, obj)
        return self.dir / name

    def write_bytes(self, name: str, data: bytes) -> Path:
        self.files[name] = store.atomic_write_bytes(self.dir / name, data)
        return self.dir / name

    def register_file(self, name: str) -> Path:
        """Record a file some library wrote into the stage folder (atomically, by its own means)."""
        path = self.dir / name
        self.files[name] = store.sha256_file(path)
        return path

    def pass_model_through(self) -> None:
        """For stages that judge or convert a model without changing it: downstream loads the input's weights."""
        if self.input is not None:
            self.model_from = self.input.model_stage().name
            self.model_card = self.input.model_stage().card

    # -- history --------------------------------------------------------------------------------
    @property
    def history(self) -> list[dict]:
        return self._history

    def set_history(self, rows: list[dict]) -> None:
        self._history = list(rows)
        self._write_history()

    def log_epoch(self, row: dict) -> None:
        self._history.append(row)
        self._write_history()

    def _write_history(self) -> None:
        if self._parent is not None:  # a sub-run's rows land in the stage's history, tagged
            self._parent.set_history(self._parent_rows + [{**self._tag, **r} for r in self._history])
            return
        text = "".join(json.dumps(r, default=store._json_default) + "\n" for r in self._history)
        self.files["history.jsonl"] = store.atomic_write_text(self.dir / "history.jsonl", text)

    def sub_context(self, name: str, tag: dict) -> "StageContext":
        """A view of this stage for one of several training runs inside it (e.g. an IMP round): its own
        progress folder (progress/<name>/), history (appended to the stage's, rows tagged with `tag`)
        and `record`; files, metrics and everything else are shared with the stage."""
        sub = copy.copy(self)
        sub.name = f"{self.name}/{name}"
        sub._progress_dir = self.progress_dir / name
        sub.record = {}
        sub._history = []
        sub._parent, sub._tag = self, dict(tag)
        sub._parent_rows = list(self._history)
        return sub

    # -- mid-stage progress -----------------------------------------------------------------------
    @property
    def progress_dir(self) -> Path:
        return self._progress_dir

    def save_progress(self, state: dict) -> None:
        """Everything needed to continue this stage; loadable weights-only. Call at safe points only.

        The state goes to a new file (state-<n>.pt) and only then does manifest.json name it, so a kill
        at any moment leaves a manifest that names a complete, verified state; older states go last."""
        state = dict(state)
        state["rng"] = capture_rng()
        state["history"] = list(self._history)
        manifest_path = self.progress_dir / "manifest.json"
        previous = store.read_json(manifest_path).get("file") if manifest_path.exists() else None
        number = int(previous.split("-")[1].split(".")[0]) + 1 if previous else 1
        name = f"state-{number:06d}.pt"
        sha = store.save_state(self.progress_dir / name, state)
        store.atomic_write_json(manifest_path, {"fingerprint": self.fingerprint, "file": name, "sha256": sha,
                                                "epoch": state.get("epoch"), "step": state.get("step"),
                                                "step_in_epoch": state.get("step_in_epoch")})
        for old in self.progress_dir.glob("state-*.pt"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def load_progress(self) -> dict | None:
        try:
            return self._load_progress()
        except CheckpointError as exc:
            stage = self.config.name
            raise CheckpointError(f"{exc}\nstage {stage!r}'s saved progress is damaged; run with --from {stage} "
                                  f"to restart {stage!r} from its beginning (later stages run again too)") from None

    def _load_progress(self) -> dict | None:
        from pipeline.engine.runguard import progress_detail

        manifest_path = self.progress_dir / "manifest.json"
        if not manifest_path.exists():
            return None
        manifest = store.read_json(manifest_path)
        if not isinstance(manifest, dict) or not all(isinstance(manifest.get(k), str) for k in ("file", "sha256")):
            raise CheckpointError(f"{manifest_path}: not a progress manifest")
        if manifest.get("fingerprint") != self.fingerprint:
            self.log(f"{self.name}: saved progress belongs to a different config; starting the stage over")
            self.clear_progress()
            return None
        state = store.load_state(self.progress_dir / manifest["file"], manifest["sha256"])
        restore_rng(state.pop("rng"))
        self.set_history(state.pop("history"))
        self.log(f"{self.name}: resuming from saved progress ({progress_detail(manifest)})")
        return state

    def clear_progress(self) -> None:
        shutil.rmtree(self.progress_dir, ignore_errors=True)

    # -- misc -------------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        self.console.info(msg)

    def generator(self, *parts: int, device: torch.device | str | None = None) -> torch.Generator:
        """A generator seeded from (run seed, *parts): resumable randomness without saved generator internals."""
        dev = torch.device(device or self.device)
        g = torch.Generator(device=dev)
        g.manual_seed(derive_seed(self.seed, *parts))
        return g

