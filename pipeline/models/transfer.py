"""Transfer of a ticket to another dataset (Double-Win, spec §4.2): new dense head, target statistics, kept mask.

A ticket trained on dataset A (weights + masks) is re-targeted to dataset B: the normalisation buffers
inside the model take B's mean/std, the final Linear is replaced by a fresh dense one with B's number
of classes, and every backbone mask is kept while the old head's mask is dropped (the head is new and
dense). The model card follows (classes, names, dataset, statistics).

Also here: key mapping for checkpoints written by other code (spec §8.15: the reference loads with
strict=False, so a `module.`-prefixed file silently loads nothing). A transferred stage records its dataset
under MODEL_DATA_KEY in stage.json; `StageContext.data()` reads it, so downstream stages (evaluate, export,
further fine-tuning) work on the dataset the model was last trained on, not the run's own `data:`.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar

import torch
from pydantic import Field

from pipeline.data import DataConfig, DataSplits
from pipeline.engine.errors import CheckpointError, DataError
from pipeline.models.card import model_card
from pipeline.engine.schema import StrictModel
from pipeline.sparsity import MaskSet

T = TypeVar("T")

# Prefixes that wrappers put in front of parameter names: DataParallel/DDP, Lightning-style holders,
# our own ClassifierModel (`net.`), torch.compile.
WRAPPER_PREFIXES = ("module.", "model.", "net.", "_orig_mod.")


class TransferConfig(StrictModel):
    """The `transfer:` block of a finetune stage."""

    data: DataConfig = Field(description="dataset B, a full data section (train_fraction / subset / subset_seed "
                                         "give the data-limited 1% and 10% settings)")
    head: Literal["new", "keep"] = Field(
        default="new", description="new: a fresh dense classifier for B's classes; keep: reuse the head (same classes)")
    keep_mask: bool = Field(default=True, description="keep the ticket's backbone mask during fine-tuning "
                                                      "(false: fine-tune every weight, the pruned ones start at 0)")


def dataset_label(name: str, source: str = "") -> str:
    """'cifar100' or 'npz (path/to/file.npz)': how a dataset is named in messages and tables."""
    return f"{name} ({source})" if source and source != name else name


def check_compatible(card: dict, data: DataSplits, source_stage: str = "input") -> None:
    """Raise DataError unless B's images have the channels and size the model was built for."""
    have = [data.in_chans, *data.input_size]
    want = [int(card["in_chans"]), *(int(s) for s in card["input_size"])]
    if have != want:
        what = "channels" if have[0] != want[0] else "image size"
        raise DataError(
            f"transfer.data: {dataset_label(data.name, data.source)} has {_shape(have)} images, but the model of "
            f"stage {source_stage!r} was trained on {card.get('dataset', '?')} with {_shape(want)} images "
            f"({what} differ); transfer needs the same input shape")


def _shape(chw: list[int]) -> str:
    return "x".join(str(v) for v in chw)


@torch.no_grad()
def set_normalization(model: torch.nn.Module, mean: Iterable[float], std: Iterable[float]) -> None:
    """Write new per-channel statistics into the model's normalisation buffers (shape (1, C, 1, 1))."""
    norm = model.normalize
    new_mean = torch.as_tensor(list(mean), dtype=norm.mean.dtype, device=norm.mean.device).view_as(norm.mean)
    new_std = torch.as_tensor(list(std), dtype=norm.std.dtype, device=norm.std.device).view_as(norm.std)
    norm.mean.copy_(new_mean)
    norm.std.copy_(new_std)


def retarget_model(model: torch.nn.Module, card: dict, data: DataSplits, *, head: str, seed: int) -> dict:
    """Fit `model` (a ClassifierModel) to dataset B in place and return B's model card.

    head "new": a fresh Linear initialised under `seed` in a forked CPU RNG, so the head is the same
    on every device and the caller's RNG stream is untouched. head "keep": B must have as many classes.
    """
    if head == "keep":
        if int(card["num_classes"]) != data.num_classes:
            raise DataError(f"transfer.head: 'keep' needs the same number of classes, but the model has "
                            f"{card['num_classes']} and {dataset_label(data.name, data.source)} has "
                            f"{data.num_classes}; use head: new")
    else:
        device = next(model.parameters()).device
        model.cpu()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.reset_classifier(data.num_classes)
        model.to(device)
    set_normalization(model, data.mean, data.std)
    new_card = {**card, **model_card(card["arch"], data)}
    return new_card


def head_param_names(model: torch.nn.Module) -> list[str]:
    name = model.classifier_name
    return [f"{name}.weight", f"{name}.bias"]


def transfer_masks(masks: MaskSet | None, model: torch.nn.Module, *, keep: bool,
                   new_head: bool) -> tuple[MaskSet | None, list[str]]:
    """(masks to enforce on B, names of the mask entries dropped).

    With a new head its mask entry goes (the head is dense); with keep=False every entry goes.
    The remaining entries must each name a parameter of the model with the same shape.
    """
    if masks is None:
        return None, []
    if not keep:
        return None, list(masks)
    head = set(head_param_names(model)) if new_head else set()
    dropped = [n for n in masks if n in head]
    kept = {n: m for n, m in masks.items() if n not in head}
    if not kept:
        return None, dropped
    mapped = map_state_keys(kept, {n: p for n, p in model.named_parameters()}, required=(), what="ticket masks")
    return MaskSet(mapped), dropped


def canonical_key(key: str) -> str:
    """`key` without leading wrapper prefixes (module., model., net., _orig_mod.), and a torch-prune
    `weight_orig` read as `weight`."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key[: -len("_orig")] if key.endswith(".weight_orig") else key


def split_pruning_reparam(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a torch.nn.utils.prune state dict into (effective weights, masks).

    `x.weight_orig` * `x.weight_mask` becomes `x.weight`, and `x.weight_mask` goes into the masks under
    `x.weight` (the reference Robust Bird tickets are saved this way, spec §8.13).
    """
    weights, masks = {}, {}
    for key, value in state.items():
        if key.endswith(".weight_mask"):
            continue
        if key.endswith(".weight_orig"):
            base = key[: -len("_orig")]
            mask = state.get(base + "_mask")
            if mask is None:
                raise CheckpointError(f"{key}: no matching {base}_mask in the checkpoint")
            weights[base] = value * mask.to(value.dtype)
            masks[base] = mask != 0
        else:
            weights[key] = value
    orphans = [k for k in state if k.endswith(".weight_mask") and k[: -len("_mask")] not in masks]
    for key in orphans:  # a mask without weight_orig: the weight was saved plainly
        masks[key[: -len("_mask")]] = state[key] != 0
    return weights, masks


def map_state_keys(source: Mapping[str, T], target: Mapping[str, Any], *, required: Iterable[str] | None = None,
                   ignore: Iterable[str] = (), what: str = "checkpoint") -> dict[str, T]:
    """Rename `source` entries to the keys of `target`, matching names up to wrapper prefixes.

    Every key in `required` (default: all target keys) must be covered, every source key must land on
    a target key unless its canonical name is in `ignore` (e.g. an old head), and shapes must agree
    where both sides have one. Anything else is a CheckpointError that lists the keys at fault, so a
    checkpoint from another code base never loads partially in silence.
    """
    by_canon: dict[str, str] = {}
    for key in target:
        canon = canonical_key(key)
        if canon in by_canon:
            raise CheckpointError(f"{what}: target keys {by_canon[canon]!r} and {key!r} are the same name "
                                  "up to a wrapper prefix")
        by_canon[canon] = key
    skip = {canonical_key(k) for k in ignore}
    mapped: dict[str, T] = {}
    unknown, bad_shape = [], []
    for key, value in source.items():
        canon = canonical_key(key)
        if canon in skip:
            continue
        dest = by_canon.get(canon)
        if dest is None:
            unknown.append(key)
            continue
        if dest in mapped:
            raise CheckpointError(f"{what}: two entries map onto {dest!r} (one of them is {key!r})")
        want, have = getattr(target[dest], "shape", None), getattr(value, "shape", None)
        if want is not None and have is not None and tuple(want) != tuple(have):
            bad_shape.append(f"{key} {tuple(have)} -> {dest} {tuple(want)}")
        mapped[dest] = value
    needed = list(target) if required is None else list(required)
    missing = [k for k in needed if k not in mapped and canonical_key(k) not in skip]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_few(missing)}")
    if unknown:
        problems.append(f"{len(unknown)} key(s) match nothing in the model: {_few(unknown)}")
    if bad_shape:
        problems.append(f"shape mismatch: {_few(bad_shape)}")
    if problems:
        raise CheckpointError(f"{what}: does not fit the model ({'; '.join(problems)})")
    return mapped


def _few(items: list[str], n: int = 5) -> str:
    head = ", ".join(items[:n])
    return head + (f" and {len(items) - n} more" if len(items) > n else "")


def class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(labels.long().cpu(), minlength=num_classes).tolist()


# Key in stage.json naming the data a stage's model was (last) trained on when it is not the run's `data:`.
MODEL_DATA_KEY = "model_data"


def transfer_record(*, source_card: dict, source_stage: str, source_round: int | None = None, card: dict,
                    data: DataSplits, cfg: TransferConfig,
                    source_masks: MaskSet | None, masks: MaskSet | None, dropped: list[str],
                    head_layer: str) -> dict:
    """The `transfer` section of stage.json."""
    dcfg = cfg.data
    limited = dcfg.train_fraction < 1.0
    source_density = float(source_masks.density()) if source_masks is not None else 1.0
    return {
        "source": {"stage": source_stage, "round": source_round, "dataset": source_card.get("dataset"),
                   "arch": source_card["arch"], "num_classes": int(source_card["num_classes"]),
                   "mean": source_card.get("mean"), "std": source_card.get("std")},
        "target": {"dataset": data.name, "source": data.source, "num_classes": data.num_classes,
                   "train_images": len(data.train_y), "train_per_class": class_counts(data.train_y, data.num_classes),
                   "val_images": len(data.val_y), "test_images": len(data.test_y),
                   "train_fraction": dcfg.train_fraction, "subset": dcfg.subset if limited else "all",
                   "subset_seed": dcfg.subset_seed if limited and dcfg.subset == "balanced" else None,
                   "mean": card["mean"], "std": card["std"]},
        "head": {"mode": cfg.head, "layer": head_layer, "dense": head_layer + ".weight" not in (masks or {}),
                 "num_classes": int(card["num_classes"])},
        "masks": {"keep_mask": cfg.keep_mask, "source_layers": len(source_masks or {}),
                  "source_density": source_density, "source_sparsity": 1.0 - source_density,
                  "dropped": dropped, "kept_layers": len(masks or {}),
                  "density_kept": float(masks.density()) if masks is not None else 1.0,
                  "note": _mask_note(source_masks, masks, dropped, cfg)},
    }


def _mask_note(source_masks, masks, dropped: list[str], cfg: TransferConfig) -> str:
    if source_masks is None:
        return "the input model is dense; nothing to keep"
    if not cfg.keep_mask:
        return "keep_mask is false: every mask entry was dropped and all weights are trained"
    if dropped:
        return f"the mask of the old classifier ({', '.join(dropped)}) was dropped: the new head is dense"
    return "every mask entry was kept"
