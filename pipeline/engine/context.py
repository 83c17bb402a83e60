"""What a stage sees while it runs: `StageContext`, the facade a stage reads its input and writes every
output through (finished stages are read with `pipeline.engine.rundir.StageRecord`)."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline.engine import distributed, store
from pipeline.engine.errors import CheckpointError
from pipeline.engine.progress import Progress
from pipeline.engine.rundir import MODEL, PROGRESS_DIR, StageRecord, masks_file_for
from pipeline.engine.seeding import derive_seed
from pipeline.models.card import build_model
from pipeline.models.card import model_card as card_for  # `self.model_card` is the card this stage hands on
from pipeline.models.structure import STRUCTURE_FILE, structure_record

if TYPE_CHECKING:
    from pipeline.engine.config import PipelineConfig
    from pipeline.engine.console import Console
    from pipeline.data import DataSplits

# progress-state key under which a stage's surviving artifacts (name -> sha256) travel across a resume
_ARTIFACTS = "_artifacts"
ARTIFACTS_DIR = "artifacts"


class StageContext:
    """Owned by the runner; a stage reads its input and writes every output through it."""

    def __init__(self, *, pipeline_config: PipelineConfig, stage_cfg, run_dir: Path, device: torch.device,
                 console: Console, fingerprint: str, data_cache: dict):
        self.pipeline_config = pipeline_config  # the whole run's config; `config` is this stage's own
        self.config = stage_cfg
        self.name: str = stage_cfg.name
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / self.name
        self.device = device
        self.console = console
        self.seed: int = pipeline_config.run.seed
        self.fingerprint = fingerprint
        self.metrics: dict[str, Any] = {}
        self.record: dict[str, Any] = {}  # this stage's stage.json sections beyond the runner's: flops, sparsity, ...
        self.files: dict[str, str] = {}  # file name -> sha256
        self.model_card: dict | None = None
        self.model_from: str | None = None
        self._data_cache = data_cache
        self._history: list[dict] = []
        self._progress = Progress(self.dir / PROGRESS_DIR, fingerprint, self.log)
        self._artifacts: dict[str, str] = {}  # surviving artifacts: name -> sha256 (see save_surviving)
        self._parent: StageContext | None = None
        self._tag: dict = {}
        self.input: StageRecord | None = (StageRecord.finished_stage(self.run_dir, stage_cfg.input)
                                          if stage_cfg.input else None)
        self.dir.mkdir(parents=True, exist_ok=True)

    # -- inputs ---------------------------------------------------------------------------------
    def data(self, data_cfg=None) -> DataSplits:
        """The dataset this stage works on, loaded once per process: `data_cfg` when given, else the
        dataset the input model was last trained on (after a transfer upstream), else the run's."""
        from pipeline.data import load_dataset

        data_cfg = data_cfg or self.model_data_config() or self.pipeline_config.data
        key = data_cfg.model_dump_json()
        if key not in self._data_cache:
            self.log(f"loading dataset {data_cfg.dataset}")
            with distributed.rank_zero_first():  # one download / cache fill, then the others read it
                self._data_cache[key] = load_dataset(data_cfg)
        return self._data_cache[key]

    def model_data_config(self):
        """The DataConfig a transfer stage upstream recorded for the input model (None: the run's data)."""
        from pipeline.data import DataConfig

        if self.input is None:
            return None
        recorded = self.input.model_holder().section("model_data")
        return None if recorded is None else DataConfig.model_validate(recorded)

    def new_model(self, data: DataSplits | None = None, arch: str | None = None) -> torch.nn.Module:
        data = data or self.data()
        card = card_for(arch or self.pipeline_config.model.arch, data)
        torch.manual_seed(self.seed)  # initial weights depend on the run seed only
        return build_model(card).to(self.device)

    def input_or_new_model(self, data: DataSplits | None = None):
        """(model, masks, card): the input stage's model when this stage has an input, else a fresh one."""
        if self.input is not None:
            return self.load_input_model()
        data = data or self.data()
        return self.new_model(data), None, card_for(self.pipeline_config.model.arch, data)

    def load_input_model(self):
        if self.input is None:
            raise CheckpointError(f"stage {self.name!r} has no input stage to load a model from")
        return self.input.load_model(self.device)

    # -- outputs --------------------------------------------------------------------------------
    def save_model(self, model: torch.nn.Module, card: dict, masks=None, filename: str = MODEL) -> None:
        """Write the model's weights (exact zeros where masked) and, for model.safetensors, its masks and card."""
        self.save_weights(model.state_dict(), filename, masks=masks)
        if masks is not None:
            self.save_masks(masks, masks_file_for(filename))
        if filename == MODEL:
            self.model_card = dict(card)
            structure = structure_record(model, (card["in_chans"], *card["input_size"]))
            if structure is not None:  # the weights of a shrunk network only fit after this replay
                self.write_json(STRUCTURE_FILE, structure)

    def save_masks(self, masks, filename: str) -> None:
        self.files[filename] = store.save_tensors(self.dir / filename, {k: v.bool() for k, v in masks.items()})

    def save_weights(self, state: dict, filename: str, masks=None, metadata: dict | None = None) -> None:
        self.files[filename] = _write_weights(self.dir / filename, state, masks,
                                              metadata or self._weights_metadata(filename))

    def _weights_metadata(self, filename: str) -> dict:
        # one metadata key only: safetensors writes metadata in hash-map order, and files must be byte-reproducible
        return {"pipeline": json.dumps({"stage": self.name, "file": filename}, sort_keys=True)}

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
            holder = self.input.model_holder()
            self.model_from, self.model_card = holder.name, holder.card

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
        sub._progress = Progress(self.progress_dir / name, self.fingerprint, self.log)
        sub.record = {}
        sub._history = []
        sub._parent, sub._tag = self, dict(tag)
        sub._parent_rows = list(self._history)
        return sub

    # -- mid-stage progress -----------------------------------------------------------------------
    @property
    def progress_dir(self) -> Path:
        return self._progress.dir

    def save_progress(self, state: dict) -> None:
        """Everything needed to continue this stage (see pipeline.engine.progress); call at safe points only."""
        if not distributed.is_main():  # rank 0 saves for everyone; the barrier publishes its files
            distributed.barrier()
            return
        if self._artifacts:
            state = {**state, _ARTIFACTS: dict(self._artifacts)}
        self._progress.save(state, self._history)
        distributed.barrier()

    def load_progress(self) -> dict | None:
        try:
            loaded = self._progress.load(self.name)
        except CheckpointError as exc:
            stage = self.config.name
            raise CheckpointError(f"{exc}\nstage {stage!r}'s saved progress is damaged; run with --from {stage} "
                                  f"to restart {stage!r} from its beginning (later stages run again too)") from None
        if loaded is None:
            return None
        state, history = loaded
        self.set_history(history)
        self._artifacts.update(state.pop(_ARTIFACTS, {}))
        return state

    def clear_progress(self) -> None:
        if distributed.is_main():
            self._progress.clear()

    # -- artifacts that survive a resume ---------------------------------------------------------
    def save_surviving(self, filename: str, state: dict, masks=None, metadata: dict | None = None) -> str:
        """Write a tensors file that is an output of this stage but is made long before it finishes (an
        IMP round's ticket). It waits in progress/artifacts/ so that a resume keeps it, the next
        save_progress records it, and the runner moves every recorded one into the stage folder when the
        stage is done (`publish_surviving`). `masks` zero the weights as in save_weights; `metadata` is
        written as given (none for a masks file, as save_masks). Returns its sha256."""
        path = self.dir / PROGRESS_DIR / ARTIFACTS_DIR / filename
        self._artifacts[filename] = _write_weights(path, state, masks, metadata)
        return self._artifacts[filename]

    def surviving_tensors(self, filename: str) -> dict[str, torch.Tensor]:
        if filename not in self._artifacts:
            raise CheckpointError(f"stage {self.name!r} saved no artifact {filename}")
        return store.load_tensors(self.dir / PROGRESS_DIR / ARTIFACTS_DIR / filename, self._artifacts[filename])

    def publish_surviving(self) -> None:
        """Copy the recorded artifacts into the stage folder, each checked against its sha256."""
        for name, sha in sorted(self._artifacts.items()):
            self.write_bytes(name, store.verify_file(self.dir / PROGRESS_DIR / ARTIFACTS_DIR / name, sha))

    # -- misc -------------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        self.console.info(msg)

    def generator(self, *parts: int, device: torch.device | str | None = None) -> torch.Generator:
        """A generator seeded from (run seed, *parts): resumable randomness without saved generator internals."""
        dev = torch.device(device or self.device)
        g = torch.Generator(device=dev)
        g.manual_seed(derive_seed(self.seed, *parts))
        return g



def _write_weights(path: Path, state: dict, masks, metadata: dict | None) -> str:
    if masks is not None:
        # stored weights carry exact zeros where masked, whatever the training loop left there
        state = dict(state)
        for name, mask in masks.items():
            state[name] = state[name] * mask.to(state[name].device, state[name].dtype)
    return store.save_tensors(path, state, metadata=metadata)
