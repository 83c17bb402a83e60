"""Clean (SA) and robust (RA) accuracy of a model, and the SW paper's summary metrics (spec §1.1)."""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.metrics.attacks import SPLITS, AttackConfig, advertorch_pgd
from pipeline.metrics.curve_config import SecurityCurve
from pipeline.engine import distributed
from pipeline.engine.errors import CheckpointError, ConfigError, DataError, PipelineError
from pipeline.engine.seeding import derive_seed
from pipeline.train.config import SELECTION_KEYS


def _as_tensor(a: Any, what: str) -> Tensor:
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    if isinstance(a, Tensor):
        return a
    raise DataError(f"{what}: expected a torch.Tensor or numpy array, got {type(a).__name__}")


def _check_images(x: Tensor, y: Tensor) -> None:
    if x.ndim != 4:
        raise DataError(f"images: expected shape (N, C, H, W), got {tuple(x.shape)}")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        raise DataError(f"images: shape {tuple(x.shape)} looks channels-last (N, H, W, C); "
                        "pass (N, C, H, W)")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"labels: expected shape ({x.shape[0]},), got {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise DataError("images: the evaluation set is empty")


@contextmanager
def _seeded_fork(device: torch.device, seed: int) -> Iterator[None]:
    """Fork (and seed) only the generators the attack draws from, so training's stream is untouched."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index]), torch.cuda.device(index):
            torch.default_generator.manual_seed(seed)
            torch.cuda.manual_seed(seed)  # the current (= this) device only
            yield
    else:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield


def evaluate(model: nn.Module, x: Tensor | np.ndarray, y: Tensor | np.ndarray, *, batch_size: int = 256,
             attack: AttackConfig | None = None, device: torch.device | str, limit: int | None = None,
             seed: int = 0) -> dict[str, float | int]:
    """Accuracy (%) and mean CE of `model` in eval mode on (N, C, H, W) images, uint8 or floats in [0, 1].

    With an attack (advertorch PGD; kind 'fgsm_rs' runs it with one step) an example is robust only
    if it is classified correctly after every restart; the loss is on the first restart's examples.
    The attack's random starts are seeded by `seed` in a forked RNG: the global RNG state is the same
    afterwards. The model's train/eval modes (per submodule) are restored. Only the first `limit`
    examples are used when given.
    """
    device = torch.device(device)
    x, y = _as_tensor(x, "images"), _as_tensor(y, "labels")
    _check_images(x, y)
    if limit is not None:
        if limit < 1:
            raise PipelineError(f"limit must be >= 1, got {limit}")
        x, y = x[:limit], y[:limit]
    if batch_size < 1:
        raise PipelineError(f"batch_size must be >= 1, got {batch_size}")
    n = int(x.shape[0])
    if distributed.active():  # each rank judges its contiguous share; the counts are summed below
        start, stop = distributed.shard(n)
        x, y = x[start:stop], y[start:stop]
        seed = seed if distributed.rank() == 0 else derive_seed(seed, "eval-rank", distributed.rank())
    attacked = attack is not None and attack.kind != "none"
    float_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)

    modes = {m: m.training for m in model.modules()}
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    try:
        with _seeded_fork(device, seed), _attack_progress(attack if attacked else None, x.shape[0]) as bar:
            for start in range(0, x.shape[0], batch_size):
                xb = x[start:start + batch_size].to(device, non_blocking=True)
                yb = y[start:start + batch_size].to(device, non_blocking=True).long()
                xb = xb.to(float_dtype).div_(255.0) if xb.dtype == torch.uint8 else xb
                if not attacked:
                    with torch.no_grad():
                        logits = model(xb)
                        correct += (logits.argmax(dim=1) == yb).sum()
                        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").double()
                    continue
                steps = 1 if attack.kind == "fgsm_rs" else attack.steps
                robust = torch.ones_like(yb, dtype=torch.bool)
                for restart in range(attack.restarts):
                    x_adv = advertorch_pgd(model, xb, yb, eps=attack.eps, step=attack.step, steps=steps,
                                           random_start=attack.random_start)
                    with torch.no_grad():
                        logits = model(x_adv)
                        robust &= logits.argmax(dim=1) == yb
                        if restart == 0:
                            loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").double()
                correct += robust.sum()
                bar.update(int(yb.shape[0]))
    finally:
        for m, training in modes.items():
            m.training = training
    if distributed.active():
        total = distributed.all_reduce_sum(torch.stack([correct.double(), loss_sum]))
        correct, loss_sum = total[0].long(), total[1]
    return {"acc": 100.0 * correct.item() / n, "loss": loss_sum.item() / n, "n": n}


def _attack_progress(attack: AttackConfig | None, n: int):
    """Progress of an attacked evaluation (PGD-50 x 5 on thousands of images takes minutes)."""
    from contextlib import nullcontext

    from pipeline.engine.console import _NoBar, progress

    if attack is None:
        return nullcontext(_NoBar())
    steps = 1 if attack.kind == "fgsm_rs" else attack.steps
    label = f"{attack.kind.upper()}-{steps}" + (f"x{attack.restarts}" if attack.restarts > 1 else "")
    return progress(n, f"{label} images")


def robust_gap(train_ra: float, test_ra: float) -> float:
    """Robust generalization gap (pp): train RA minus test RA."""
    return train_ra - test_ra


def _has(row: dict, key: str) -> bool:
    value = row.get(key)
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def select_best(history: Sequence[dict], key: str = "val_ra") -> int:
    """Index of the row with the highest `key` (ties: the earliest); rows without it are skipped."""
    best = None
    for i, row in enumerate(history):
        if _has(row, key) and (best is None or row[key] > history[best][key]):
            best = i
    if best is None:
        raise PipelineError(f"no epoch in the history has {key!r}: was that evaluation switched off?")
    return best


def _last(history: Sequence[dict], key: str) -> float | None:
    return next((row[key] for row in reversed(history) if _has(row, key)), None)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


# The best epoch is the one with the highest val RA; with val SA when the evaluation measured no RA
# (clean training evaluated without an attack). Training, evaluate and compare all choose by this
# (SELECTION_KEYS lives with the training config, which validates without torch).
def selection_key(history: Sequence[dict]) -> str | None:
    """The key a logged history's best epoch is chosen on (None: no val figure was logged)."""
    return next((k for k in SELECTION_KEYS if any(_has(row, k) for row in history)), None)


def summarize_selected(history: Sequence[dict]) -> dict[str, Any]:
    """summarize_history on the selection key; {} when the history logged no val figure."""
    key = selection_key(history)
    return {} if key is None else summarize_history(history, key)


def summarize_history(history: Sequence[dict], select_key: str = "val_ra") -> dict[str, Any]:
    """SW main_adv summary: RA/SA at the best-`select_key` epoch, at the last evaluated epoch, and the diffs.

    SA_best is the test SA of the same epoch as RA_best (not the highest SA). `select_key="test_ra"`
    gives the Robust Bird script's test-selected RA_best. Values missing from a row come back as None.
    """
    i = select_best(history, select_key)
    row = history[i]
    ra_best, sa_best = row.get("test_ra"), row.get("test_sa")
    ra_final, sa_final = _last(history, "test_ra"), _last(history, "test_sa")
    return {
        "RA_best": ra_best, "RA_final": ra_final, "RA_diff": _diff(ra_best, ra_final),
        "SA_best": sa_best, "SA_final": sa_final, "SA_diff": _diff(sa_best, sa_final),
        "best_epoch": row.get("epoch", i),
    }


def _max(history: Sequence[dict], key: str) -> float | None:
    values = [row[key] for row in history if _has(row, key)]
    return max(values) if values else None


def rb_script_summary(history: Sequence[dict]) -> dict[str, Any]:
    """Robust Bird's train_eb.py summary (spec §1.1), test-selected, each maximum over its own epoch:
    RA_best = max test RA, SA_best = max test SA, gap_best = max running train acc - RA_best,
    gap_final = last running train acc - RA_final. Only for rebuilding RB rows: the headline figures
    (summarize_history, robust_gap_*) select on val and use the canonical gap. Missing values are None."""
    ra_best, sa_best = _max(history, "test_ra"), _max(history, "test_sa")
    ra_final, sa_final = _last(history, "test_ra"), _last(history, "test_sa")
    train_best, train_final = _max(history, "train_acc"), _last(history, "train_acc")
    return {"RA_best": ra_best, "RA_final": ra_final, "RA_diff": _diff(ra_best, ra_final),
            "SA_best": sa_best, "SA_final": sa_final, "SA_diff": _diff(sa_best, sa_final),
            "gap_best": _diff(train_best, ra_best), "gap_final": _diff(train_final, ra_final),
            "evaluated_epochs": sum(1 for row in history if _has(row, "test_ra"))}


# ---------------------------------------------------------------------------------------------------
# An evaluate stage's measurements and its metric keys


def _held(data, split: str) -> bool:
    """Whether a split's images are in memory (a streamed dataset keeps its training images on disk)."""
    return len(getattr(data, f"{split}_x")) == len(getattr(data, f"{split}_y"))


def evaluate_attacks(model: nn.Module, data, attacks: Sequence, *, limits: dict[str, int | None], batch_size: int,
                     device, seed: int, skipped: dict[str, str] | None = None, log=None) -> dict[str, Any]:
    """Clean SA per split, then each attack on its splits (AutoAttack or PGD/FGSM-RS), model in eval mode.

    Returns {"sa", "n", "clean_loss": per split; "ra": attack label -> {attack (its parameters), split ->
    RA, n, robust_loss (PGD), backend (AutoAttack), gap (train - test) or skipped}}."""
    from pipeline.metrics.autoattack import AutoAttackConfig, run_autoattack

    skipped = skipped or {}
    sa: dict[str, float] = {}
    n: dict[str, int] = {}
    clean_loss: dict[str, float] = {}
    for split in SPLITS:
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        if len(y) == 0 or not _held(data, split):
            continue
        out = evaluate(model, x, y, batch_size=batch_size, device=device, limit=limits.get(split))
        sa[split], n[split], clean_loss[split] = out["acc"], out["n"], out["loss"]
    ra: dict[str, dict] = {}
    for attack in attacks:
        label = attack.label()
        entry: dict[str, Any] = {"attack": attack.model_dump(mode="json")}
        ra[label] = entry
        if label in skipped:
            entry["skipped"] = skipped[label]
            continue
        for split in attack.splits:
            x, y, limit = getattr(data, f"{split}_x"), getattr(data, f"{split}_y"), limits.get(split)
            if len(y) == 0:
                continue
            if not _held(data, split):
                raise ConfigError(f"{label}.splits: the {split} split of streamed data ({data.source}) is not held "
                                  f"in memory; attack val and test only (splits: [val, test])")
            if isinstance(attack, AutoAttackConfig):
                lim = (limit if attack.n is None else attack.n if limit is None else min(limit, attack.n)) or len(y)
                out = run_autoattack(model, x[:lim], y[:lim], attack, device=device, seed=seed,
                                     batch_size=attack.batch_size or batch_size)
                entry["backend"] = out["backend"]
            else:
                out = evaluate(model, x, y, batch_size=batch_size, attack=attack, device=device, limit=limit, seed=seed)
                entry.setdefault("robust_loss", {})[split] = out["loss"]
            entry[split] = out["acc"]
            entry.setdefault("n", {})[split] = out["n"]
            if log is not None:
                log(f"{label} {split}: RA {out['acc']:.2f}  (SA {sa[split]:.2f}, n={out['n']})")
        if "train" in entry and "test" in entry:
            entry["gap"] = robust_gap(entry["train"], entry["test"])
    return {"sa": sa, "n": n, "clean_loss": clean_loss, "ra": ra}


def checkpoint_gaps(res: dict, first: str, history: Sequence[dict], epoch: int | None) -> dict[str, float | None]:
    """Canonical and running-train gaps of one checkpoint under the attack labelled `first`. `history`
    is the training history whose running train accuracy was adversarial (empty for clean training)."""
    entry = res["ra"].get(first, {})
    row = next((r for r in history if r.get("epoch") == epoch), None) if epoch is not None else None
    train_acc = row.get("train_acc") if row else None
    return {"robust_gap": entry.get("gap"),
            "robust_gap_running_train": (robust_gap(train_acc, entry["test"])
                                         if train_acc is not None and "test" in entry else None),
            "running_train_acc": train_acc}


def checkpoint_figures(res: dict, file: str, epoch: int | None) -> dict[str, Any]:
    """One checkpoint's figures without the attack parameters (those sit once in metrics['ra'])."""
    ra = {label: ({"skipped": True} if "skipped" in e else {s: e[s] for s in (*SPLITS, "gap") if s in e})
          for label, e in res["ra"].items()}
    return {"file": file, "epoch": epoch, "sa": res["sa"], "n": res["n"], "ra": ra,
            **{k: res[k] for k in ("robust_gap", "robust_gap_running_train", "running_train_acc")}}


@dataclass
class SplitScores:
    """One split of the selected checkpoint: images, SA, clean loss; RA and robust loss under the first attack."""

    n: int
    sa: float
    loss: float
    ra: float | None = None
    robust_loss: float | None = None


_SPLIT_FIELDS = ("sa", "n", "loss", "ra", "robust_loss")
_SUMMARY_KEYS = ("RA_best", "RA_final", "RA_diff", "SA_best", "SA_final", "SA_diff", "best_epoch")
_TAIL = ("robust_overfitting", "robust_overfitting_measured", "robust_gap_best", "robust_gap_final", "density",
         "corruption", "rb_script")


@dataclass
class EvaluationMetrics:
    """The metrics of an evaluate stage, stored flat in stage.json `metrics` (and metrics.json):
    `{split}_{sa,n,loss,ra,robust_loss}` of the selected checkpoint under the first attack, its gaps,
    every attack in `ra`, each judged checkpoint in `checkpoints`, the training history's summary as
    `history_*`, the overfitting, per-checkpoint gaps, density and corruption figures, and the security
    curve (RA against eps) when one was asked for."""

    SECTION: ClassVar[str] = "metrics"

    checkpoint: str
    splits: dict[str, SplitScores]
    attack: dict
    ra: dict[str, dict]
    checkpoints: dict[str, dict]
    robust_gap: float | None = None
    robust_gap_running_train: float | None = None
    history: dict[str, Any] = field(default_factory=dict)
    robust_overfitting: float | None = None
    robust_overfitting_measured: float | None = None
    robust_gap_best: float | None = None
    robust_gap_final: float | None = None
    density: float | None = None
    corruption: dict | None = None
    security_curve: SecurityCurve | None = None
    rb_script: dict | None = None  # rb_script_summary of the history, when the evaluate stage asks for it

    def split(self, name: str) -> SplitScores | None:
        return self.splits.get(name)

    def to_json(self) -> dict[str, Any]:
        m: dict[str, Any] = {"checkpoint": self.checkpoint}
        for name, s in self.splits.items():
            m.update({f"{name}_{k}": getattr(s, k) for k in _SPLIT_FIELDS if getattr(s, k) is not None})
        for key in ("robust_gap", "robust_gap_running_train"):
            if getattr(self, key) is not None:
                m[key] = getattr(self, key)
        m.update({"attack": self.attack, "ra": self.ra, "checkpoints": self.checkpoints})
        m.update({f"history_{k}": v for k, v in self.history.items()})
        m.update({k: getattr(self, k) for k in _TAIL if getattr(self, k) is not None})
        if self.security_curve is not None:
            m["security_curve"] = self.security_curve.to_json()
        return m

    @classmethod
    def from_json(cls, m: Any, where: str = "metrics") -> EvaluationMetrics | None:
        if m is None:
            return None
        if not isinstance(m, dict):
            raise CheckpointError(f"{where}: expected a mapping, got {type(m).__name__}")
        splits: dict[str, dict] = {}
        kwargs: dict[str, Any] = {"history": {}}
        plain = {"checkpoint", "attack", "ra", "checkpoints", "robust_gap", "robust_gap_running_train", *_TAIL}
        for key, value in m.items():
            split, _, rest = key.partition("_")
            if key in plain:
                kwargs[key] = value
            elif key == "security_curve":
                kwargs[key] = SecurityCurve.from_json(value, f"{where}.security_curve")
            elif key.startswith("history_") and key[8:] in _SUMMARY_KEYS:
                kwargs["history"][key[8:]] = value
            elif split in SPLITS and rest in _SPLIT_FIELDS:
                splits.setdefault(split, {})[rest] = value
            else:
                raise CheckpointError(f"{where}: unknown evaluation metric {key!r}")
        missing = [k for k in ("checkpoint", "attack", "ra", "checkpoints") if k not in kwargs]
        bad = [s for s, v in splits.items() if not {"n", "sa", "loss"} <= v.keys()]
        if missing or bad:
            raise CheckpointError(f"{where}: missing {', '.join(missing + [f'{s}_n/sa/loss' for s in bad])}")
        return cls(splits={s: SplitScores(**v) for s, v in splits.items()}, **kwargs)
