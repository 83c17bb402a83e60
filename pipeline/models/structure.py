"""Physically smaller networks, stored as data: channel removal through torch-pruning's DependencyGraph.

A structural change is a list of steps `{"layer", "dim": "out", "removed", "channels_before"}` applied in
order; each removes output channels of one layer together with everything coupled to them (the batch
norms after it, the input channels of its consumers, every layer joined to it by a residual add). The
steps live in `structure.json` next to `model.safetensors`; loading rebuilds the registered
architecture, replays the steps (`apply_structure`), then loads the weights strictly, so no pickled
module is ever needed. A model that was shrunk carries its steps in `model.pipeline_structure`.

`shrink_zero_channels` is the lossless special case: it removes the channels whose value does not depend
on the input and is zero wherever it is consumed, and folds a constant into the classifier's bias where
that is exact. A channel with all-zero incoming weights is NOT always dead: the batch norm after it adds
a constant (beta - gamma * mean / sqrt(var + eps)), which reaches the next layer; a 3x3 zero-padded conv
turns that constant into a position-dependent map that no bias can absorb, so such channels are kept.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch_pruning as tp
from torch import nn

STRUCTURE_FILE = "structure.json"
STRUCTURE_ATTR = "pipeline_structure"
FORMAT = "pipeline.structure/1"


class StructureError(ValueError):
    """A structure record that does not fit the model it is replayed on."""


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    # tracing runs a forward pass: in train mode it would move the batch-norm running statistics
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def dependency_graph(model: nn.Module, input_shape: Sequence[int]) -> tp.DependencyGraph:
    """torch-pruning's graph of coupled channels, traced with one zero image of `input_shape` (C, H, W)."""
    first = next(model.parameters())
    example = torch.zeros(1, *[int(d) for d in input_shape], device=first.device, dtype=first.dtype)
    with _eval_mode(model), torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example_inputs=example)


def _classifier(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_classifier", None)
    return get() if callable(get) else None


def channel_groups(model: nn.Module, graph: tp.DependencyGraph) -> list[tp.dependency.Group]:
    """Every prunable group (full indices), rooted at a Conv2d/Linear output; the logits are never cut."""
    head = _classifier(model)
    ignored = [head] if head is not None else []
    return list(graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]))


def module_names(model: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules()}


def root_of(group) -> nn.Module:
    return group[0].dep.target.module


def steps_of(model: nn.Module) -> list[dict]:
    return list(getattr(model, STRUCTURE_ATTR, None) or [])


def prune_groups(model: nn.Module, graph: tp.DependencyGraph, removals: list[tuple[nn.Module, list[int]]]) -> list[dict]:
    """Remove output channels `idxs` of each root module (with all coupled layers), in order; returns the
    steps and appends them to the model's structure history."""
    names = module_names(model)
    done = []
    for module, idxs in removals:
        idxs = sorted({int(i) for i in idxs})
        if not idxs:
            continue
        step = {"layer": names[module], "dim": "out", "removed": idxs, "channels_before": _out_channels(module)}
        _prune_one(graph, module, idxs)
        done.append(step)
    setattr(model, STRUCTURE_ATTR, steps_of(model) + done)
    return done


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        return int(module.out_channels)
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    raise StructureError(f"{type(module).__name__} is not a Conv2d or Linear")


def _prune_one(graph: tp.DependencyGraph, module: nn.Module, idxs: list[int]) -> None:
    pruner = graph.get_pruner_of_module(module)
    group = graph.get_pruning_group(module, pruner.prune_out_channels, idxs)
    group.prune()


def structure_record(model: nn.Module, input_shape: Sequence[int]) -> dict | None:
    """What structure.json holds for `model` (None for a model of the registered shape)."""
    steps = steps_of(model)
    if not steps:
        return None
    channels = {n: _out_channels(m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    return {"format": FORMAT, "input_shape": [int(d) for d in input_shape], "steps": steps, "channels": channels}


def apply_structure(model: nn.Module, record: dict) -> nn.Module:
    """Replay a structure record on a freshly built model of the registered shape (in place; returned)."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise StructureError(f"not a structure record of format {FORMAT!r}: {str(record)[:80]}")
    graph = dependency_graph(model, record["input_shape"])
    modules = dict(model.named_modules())
    for i, step in enumerate(record["steps"]):
        module = modules.get(step.get("layer"))
        if module is None or step.get("dim") != "out":
            raise StructureError(f"step {i}: no layer {step.get('layer')!r} to cut along {step.get('dim')!r}")
        # checked before each step runs: the channel count it expects tells a record of another model apart
        if _out_channels(module) != step["channels_before"]:
            raise StructureError(f"step {i}: {step['layer']} has {_out_channels(module)} output channels, "
                                 f"the record expects {step['channels_before']}")
        removed = [int(r) for r in step["removed"]]
        if not removed or min(removed) < 0 or max(removed) >= step["channels_before"] or \
                len(set(removed)) >= step["channels_before"]:
            raise StructureError(f"step {i}: removed indices of {step['layer']} out of range or removing all")
        prune_groups(model, graph, [(module, removed)])
    for name, n in record.get("channels", {}).items():
        if name in modules and _out_channels(modules[name]) != n:
            raise StructureError(f"after replay {name} has {_out_channels(modules[name])} channels, record says {n}")
    return model


def slice_like(original: nn.Module, tensors: dict[str, torch.Tensor], record: dict) -> dict[str, torch.Tensor]:
    """Tensors shaped like parameters of `original` (e.g. masks) cut by the same structure steps: they are
    written into a copy of the unshrunk model, the steps replayed, and read back."""
    import copy

    if not tensors:
        return {}
    carrier = copy.deepcopy(original)
    setattr(carrier, STRUCTURE_ATTR, [])
    params = dict(carrier.named_parameters())
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t.to(params[name].dtype))
    apply_structure(carrier, record)
    after = dict(carrier.named_parameters())
    return {name: after[name].detach().clone().to(tensors[name].dtype) for name in tensors}


# ---------------------------------------------------------------------------------------------------
# Lossless shrink

def _producer_zero(module: nn.Module, idxs: list[int]) -> torch.Tensor:
    w = module.weight.detach()[idxs]
    zero = w.flatten(1).abs().amax(1) == 0
    if getattr(module, "bias", None) is not None:
        zero &= module.bias.detach()[idxs] == 0
    return zero


@torch.no_grad()
def _consumer_inputs(model: nn.Module, input_shape: Sequence[int]) -> dict[nn.Module, torch.Tensor]:
    """Per Conv2d/Linear: max |input| per input channel, for one zero image (eval mode)."""
    seen: dict[nn.Module, torch.Tensor] = {}

    def hook(mod, inputs, _out):
        x = inputs[0].detach()
        per_channel = x.abs().transpose(0, 1).flatten(1).amax(1)
        seen[mod] = per_channel if mod not in seen else torch.maximum(seen[mod], per_channel)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    first = next(model.parameters())
    try:
        with _eval_mode(model):
            model(torch.zeros(1, *input_shape, device=first.device, dtype=first.dtype))
    finally:
        for h in handles:
            h.remove()
    return seen


@torch.no_grad()
def _constant_inputs(model: nn.Module, linear: nn.Linear, input_shape) -> torch.Tensor:
    captured = {}
    handle = linear.register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0].detach()[0].clone()))
    first = next(model.parameters())
    try:
        with _eval_mode(model):
            model(torch.zeros(1, *input_shape, device=first.device, dtype=first.dtype))
    finally:
        handle.remove()
    return captured["x"]


def shrink_zero_channels(model: nn.Module, input_shape: Sequence[int], masks=None) -> dict:
    """Remove, in place, every channel that cannot change the logits; returns what was done.

    A channel of a coupled group is input-independent when every layer writing into it (conv/linear
    outputs, across residual adds) has all-zero incoming weights and bias there; batch norms and
    activations on the way are per channel, so it carries a fixed number into each consumer. It is
    removed when every consumer sees exactly zero; a constant entering a Linear with a bias (the
    classifier after global pooling) is folded into that bias; any other non-zero constant keeps it.
    """
    if masks is not None:
        masks.apply_(model)
    input_shape = [int(d) for d in input_shape]
    graph = dependency_graph(model, input_shape)
    groups = channel_groups(model, graph)
    seen = _consumer_inputs(model, input_shape)
    plan: list[tuple[nn.Module, list[int]]] = []
    folds: list[tuple[nn.Linear, list[int]]] = []
    kept_constant = 0
    for group in groups:
        n = len(group[0].idxs)
        free = torch.ones(n, dtype=torch.bool)
        consumers = []
        for item in group.items:
            module, handler = item.dep.target.module, item.dep.handler
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue  # batch norms, activations, pooling: per channel, they keep a constant constant
            roots = torch.as_tensor(item.root_idxs, dtype=torch.long)
            if graph.is_out_channel_pruning_fn(handler):
                free[roots[~_producer_zero(module, list(item.idxs)).cpu()]] = False
            else:
                consumers.append((module, list(item.idxs), roots))
        if not bool(free.any()):
            continue
        dead = free.clone()
        foldable = []
        for module, idxs, roots in consumers:
            if isinstance(module, nn.Linear) and module.bias is not None:
                foldable.append((module, idxs, roots))
                continue
            dead[roots[seen[module][idxs].cpu() != 0]] = False
        kept_constant += int(free.sum() - dead.sum())
        cut = torch.nonzero(dead).flatten().tolist()
        if len(cut) == n:
            cut = cut[1:]  # a group with no live channel keeps one: layers of width 0 do not export
        if not cut:
            continue
        plan.append((root_of(group), cut))
        drop = set(cut)
        for module, idxs, roots in foldable:
            cols = [i for i, r in zip(idxs, roots.tolist()) if r in drop]
            if cols:
                folds.append((module, cols))
    # every constant is read from the unchanged model before any bias moves: a fold into one Linear
    # would otherwise shift what a later Linear sees until the channels are actually cut
    constants = [_constant_inputs(model, module, input_shape)[cols] for module, cols in folds]
    folded = 0
    for (module, cols), x in zip(folds, constants):
        folded += int((x != 0).sum())
        with torch.no_grad():
            module.bias += module.weight[:, cols] @ x
    steps = prune_groups(model, graph, plan)
    return {"groups": len(groups), "groups_cut": len(steps),
            "channels_removed": sum(len(s["removed"]) for s in steps),
            "constants_folded": folded, "constant_channels_kept": kept_constant}


def replay_structure(model: nn.Module, path) -> nn.Module:
    """`apply_structure` from a (verified) structure.json; a record that does not fit is a CheckpointError."""
    from pipeline.engine import store
    from pipeline.engine.errors import CheckpointError

    try:
        return apply_structure(model, store.read_json(path))
    except (StructureError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot be replayed on {type(model).__name__}: {exc}") from None
