"""Transfer of a ticket to another dataset (Double-Win, spec §4.2): new dense head, target statistics, kept mask.

A ticket trained on dataset A (weights + masks) is re-targeted to dataset B: the normalisation buffers
inside the model take B's mean/std, the final Linear is replaced by a fresh dense one with B's number
of classes, and every backbone mask is kept while the old head's mask is dropped (the head is new and
dense). The model card follows (classes, names, dataset, statistics).

A transferred stage records its dataset
under MODEL_DATA_KEY in stage.json; `StageContext.data()` reads it, so downstream stages (evaluate, export,
further fine-tuning) work on the dataset the model was last trained on, not the run's own `data:`.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

from pipeline.data import DataSplits
from pipeline.engine.errors import CheckpointError, DataError
from pipeline.models.card import model_card
from pipeline.models.transfer_config import TransferConfig  # noqa: F401  (moved; still importable)
from pipeline.sparsity import MaskSet


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
    params = dict(model.named_parameters())
    # the masks come from this project's own stages, so names match exactly; a mismatch is a damaged file
    bad = [f"{n} {tuple(m.shape)}" + (f" -> {tuple(params[n].shape)}" if n in params else " (no such parameter)")
           for n, m in kept.items() if n not in params or tuple(params[n].shape) != tuple(m.shape)]
    if bad:
        raise CheckpointError(f"ticket masks: do not fit the model ({_few(bad)})")
    return MaskSet(kept), dropped


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
