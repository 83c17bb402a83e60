"""Masks from nni 3.0's one-shot pruners, chosen by name, keyed by our parameter names.

`config_list` is nni 3.0's format, e.g.
    [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.8, "exclude_op_names": ["fc"]}]
nni ranks within each layer (or each output channel / filter for l1, l2, fpgm) unless a config entry
sets `global_group_id`, which nni supports but ranks element by element in a Python heap, far too slow
for millions of weights. The global magnitude masks of Robust Bird and IMP therefore come from
`global_magnitude_masks`, not from nni; this module serves the per-layer criteria.

Only the weight masks are returned (biases, inputs and outputs stay dense, whatever the config targets),
for the modules the config selects. nni wraps modules in place and its unwrap re-creates the
parameters (which would detach an optimizer holding the old ones), so nni works on a deep copy and the
caller's model is never touched. Only `nni.compression.pruning` is used (ModelSpeedup does not run on
current torch).
"""
from __future__ import annotations

import copy
import importlib
from typing import Any

import torch
from torch import nn

from pipeline.engine.errors import ConfigError

from pipeline.sparsity.masks import MaskSet
from pipeline.sparsity.criteria_names import NEEDS_TRAINING, PRUNERS  # noqa: F401  (moved; still importable)


def _pruner_class(pruner: str) -> type:
    if pruner in NEEDS_TRAINING:
        raise ConfigError(f"pruner: {pruner!r} is not supported here: {NEEDS_TRAINING[pruner]}, which needs an "
                          f"nni Evaluator with training data; use one of {sorted(PRUNERS)}")
    if pruner not in PRUNERS:
        raise ConfigError(f"pruner: unknown pruner {pruner!r}; valid: {', '.join(sorted(PRUNERS))}")
    module = importlib.import_module("nni.compression.pruning")
    return getattr(module, PRUNERS[pruner])


def criterion_masks(model: nn.Module, *, pruner: str, config_list: list[dict[str, Any]],
                    dummy_input: torch.Tensor | None = None) -> MaskSet:
    """Masks chosen by nni's `pruner` ("level", "l1", "l2", "fpgm") under `config_list`.

    `dummy_input` (optional) is run once through the wrapped copy so nni can record shapes for configs
    that target module inputs or outputs.
    """
    cls = _pruner_class(pruner)
    work = copy.deepcopy(model)
    try:
        instance = cls(work, copy.deepcopy(config_list))
    except Exception as exc:  # nni's schema errors are plain exceptions with a readable message
        raise ConfigError(f"config_list: nni {cls.__name__} rejected it: {exc}") from exc
    try:
        if dummy_input is not None:
            instance.track_forward(dummy_input)
        _, nni_masks = instance.compress()
    finally:
        instance.unwrap_model()
    params = dict(work.named_parameters())
    out = {}
    for module_name, targets in nni_masks.items():
        mask = targets.get("weight")
        if mask is None:
            continue
        name = f"{module_name}.weight" if module_name else "weight"
        weight = params[name]
        out[name] = mask.to(weight.device).expand_as(weight) != 0
    # Order as in the model, not as nni happened to return them.
    return MaskSet({n: out[n] for n in params if n in out})
