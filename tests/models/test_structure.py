"""pipeline.models.structure: lossless channel shrink on every registered architecture, replay from data."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data import DataConfig, load_dataset
from pipeline.models import create_model, list_models
from pipeline.models.structure import (StructureError, apply_structure, channel_groups, dependency_graph,
                                       prune_groups, shrink_zero_channels, slice_like, structure_record)
from pipeline.sparsity import MaskSet

SHAPES = {"small_cnn": (3, 8, 8), "convnet4": (3, 8, 8), "preact_resnet18": (3, 16, 16),
          "resnet18_cifar": (3, 16, 16), "resnet34_cifar": (3, 8, 8), "vgg16_bn": (3, 32, 32),
          "wrn34_10": (3, 8, 8), "resnet50": (3, 32, 32)}


@pytest.fixture(scope="module")
def digits():
    data = load_dataset(DataConfig(dataset="digits"))
    return data.test_x[:6].float() / 255.0  # real images, (N, 1, 8, 8)


def real_inputs(digits, shape):
    x = digits.repeat(1, shape[0], 1, 1)
    return F.interpolate(x, size=shape[1:], mode="bilinear", align_corners=False)


def trained_looking(arch: str, shape, zero_roots: int = 3):
    """The architecture with non-trivial batch-norm statistics and, in every coupled group, the first
    `zero_roots` channels' incoming weights zeroed in every layer writing into them: what magnitude
    pruning leaves. Batch-norm betas of half of those channels are pushed negative (ReLU kills the
    constant: removable) and half positive (a constant reaches the next conv: must stay)."""
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_chans=shape[0]).eval()
    g = torch.Generator().manual_seed(1)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1, generator=g)
            mod.running_var.uniform_(0.8, 1.2, generator=g)
            mod.weight.data.uniform_(0.8, 1.2, generator=g)
            mod.bias.data.normal_(0, 0.2, generator=g)
    graph = dependency_graph(model, shape)
    with torch.no_grad():
        for group in channel_groups(model, graph):
            for item in group.items:
                mod = item.dep.target.module
                sel = [i for i, r in zip(item.idxs, item.root_idxs) if r < zero_roots]
                if isinstance(mod, (nn.Conv2d, nn.Linear)) and graph.is_out_channel_pruning_fn(item.dep.handler):
                    mod.weight[sel] = 0
                    if mod.bias is not None:
                        mod.bias[sel] = 0
                elif isinstance(mod, nn.BatchNorm2d):
                    for i, r in zip(item.idxs, item.root_idxs):
                        if r < zero_roots:
                            mod.bias[i] = -1.0 if r % 2 == 0 else 1.0
    return model


def test_every_registered_architecture_is_covered():
    assert set(SHAPES) == set(list_models())


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_shrink_zero_channels_is_lossless(arch, digits):
    shape = SHAPES[arch]
    model = trained_looking(arch, shape)
    x = real_inputs(digits, shape)
    reference = copy.deepcopy(model).double()
    with torch.no_grad():
        before32, before64 = model(x), reference(x.double())
    n_params = sum(p.numel() for p in model.parameters())
    report = shrink_zero_channels(model, shape)
    assert report["channels_removed"] > 0 and sum(p.numel() for p in model.parameters()) < n_params
    with torch.no_grad():
        after32, after64 = model(x), copy.deepcopy(model).double()(x.double())
    # the transformation is exact up to the float32 rounding of a folded bias (float64 forward); in float32
    # the summation order of fewer channels differs as well
    assert (after64 - before64).abs().max().item() < 1e-7
    assert (after32 - before32).abs().max().item() <= 1e-5 * max(1.0, before32.abs().max().item())
    # the positive-beta channels feed a padded conv somewhere: a constant no bias can absorb, so they stay
    if arch != "small_cnn":
        assert report["constant_channels_kept"] > 0


def test_naive_removal_of_zero_weight_channels_would_change_the_logits(digits):
    """Why the shrink looks past the weights: a channel with zero incoming weights still carries the batch
    norm's constant into the next conv (PreAct: bn2 -> relu -> conv2), so cutting it is not lossless."""
    shape = SHAPES["preact_resnet18"]
    model = trained_looking("preact_resnet18", shape)
    x = real_inputs(digits, shape)
    with torch.no_grad():
        before = model(x)
    graph = dependency_graph(model, shape)
    block = model.net.layer1[0].conv1  # its group: conv1 out -> bn2 -> conv2 in; roots 0..2 zeroed
    prune_groups(model, graph, [(block, [0, 1, 2])])
    with torch.no_grad():
        assert (model(x) - before).abs().max().item() > 1e-3


def test_structure_replays_from_data_and_weights_load_strictly(digits):
    shape = SHAPES["preact_resnet18"]
    model = trained_looking("preact_resnet18", shape)
    shrink_zero_channels(model, shape)
    record = structure_record(model, shape)
    assert record["steps"] and all({"layer", "dim", "removed", "channels_before"} <= set(s) for s in record["steps"])
    torch.manual_seed(5)
    fresh = apply_structure(create_model("preact_resnet18", num_classes=10, in_chans=3).eval(), record)
    fresh.load_state_dict(model.state_dict(), strict=True)
    x = real_inputs(digits, shape)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert structure_record(fresh, shape) == record
    with pytest.raises(StructureError, match="output channels"):  # replayed twice: the counts no longer fit
        apply_structure(fresh, record)


def test_masks_are_sliced_like_the_weights():
    shape = SHAPES["resnet18_cifar"]
    model = trained_looking("resnet18_cifar", shape)
    g = torch.Generator().manual_seed(2)
    masks = MaskSet({n: torch.rand(p.shape, generator=g) > 0.3 for n, p in model.named_parameters()
                     if p.ndim == 4})
    masks.apply_(model)
    original = copy.deepcopy(model)
    shrink_zero_channels(model, shape)
    sliced = slice_like(original, {k: v.float() for k, v in masks.items()},
                        {**structure_record(model, shape)})
    params = dict(model.named_parameters())
    for name, m in sliced.items():
        assert m.shape == params[name].shape
        assert int(params[name][m == 0].count_nonzero()) == 0  # the zeros still sit where the mask says
