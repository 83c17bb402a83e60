"""FLOPs counter and training cost model against hand-computed counts."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.metrics.flops import TrainingFlopsMeter, count_macs, inference_flops
from pipeline.sparsity import MaskSet, prunable_params

torch.set_num_threads(1)


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)  # 4x8x8 out: 256 * 3*9 = 6912 MACs, 256 bias adds
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False)  # 6x4x4: 96 * 2*9 = 1728
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 2)  # 12 MACs, 2 bias adds

    def forward(self, x):
        x = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(torch.relu(self.bn(x)).mean((2, 3)))


def test_count_macs_hand_counts():
    model = SmallNet().train()
    layers = count_macs(model, (3, 8, 8))
    assert [(l.module, l.param, l.kind, l.macs, l.bias_adds, l.weights) for l in layers] == [
        ("conv1", "conv1.weight", "conv", 6912, 256, 108),
        ("conv2", "conv2.weight", "conv", 1728, 0, 108),
        ("fc", "fc.weight", "linear", 12, 2, 12),
    ]
    assert model.training and model.bn.training  # modes restored
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed


def test_a_module_called_twice_is_counted_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 5, bias=False)

        def forward(self, x):
            return self.lin(self.lin(x.flatten(1)))

    (layer,) = count_macs(Twice(), (5,))
    assert layer.macs == 50 and layer.bias_adds == 0


def test_inference_flops_dense_and_sparse():
    layers = count_macs(SmallNet(), (3, 8, 8))
    dense = inference_flops(layers)
    assert dense["dense_macs"] == 8652 and dense["dense_flops"] == 17304 and dense["ratio"] == 1.0
    sparse = inference_flops(layers, {"conv1.weight": 0.5, "fc.weight": 0.25})
    assert sparse["sparse_macs"] == 3456 + 1728 + 3 and sparse["sparse_flops"] == 2 * 5187
    assert sparse["ratio"] == pytest.approx(5187 / 8652)
    assert sparse["layers"]["conv2.weight"] == {"macs": 1728, "density": 1.0, "sparse_macs": 1728.0}
    with pytest.raises(ValueError, match="bn.weight"):
        inference_flops(layers, {"bn.weight": 0.5})


def test_inference_flops_joins_with_real_masks():
    model = SmallNet()
    params = prunable_params(model)
    masks = MaskSet({n: torch.arange(p.numel()).view(p.shape) % 4 == 0 for n, p in params.items()})
    result = inference_flops(count_macs(model, (3, 8, 8)), masks.layer_densities())
    assert result["sparse_macs"] == 8652 / 4


def training_flops(f_inf: float, n_images: int, epochs: int, attack_steps: int | None = None, *,
                   mode: str = "pgd") -> dict:
    """The meter at a constant per-image cost: every image of every epoch in one accumulate call."""
    meter = TrainingFlopsMeter(mode=mode, attack_steps=attack_steps)
    meter.accumulate(n_images * epochs, f_inf)
    return {"paper": meter.paper, "corrected": meter.corrected}


def test_training_flops_paper_and_corrected():
    pgd = training_flops(7, 45, 2)
    assert pgd["paper"] == 33 * 45 * 2 * 7 and pgd["corrected"] == 23 * 45 * 2 * 7
    assert training_flops(7, 45, 2, mode="clean") == {"paper": 3 * 630, "corrected": 3 * 630}
    fast = training_flops(7, 45, 2, mode="fast")
    assert (fast["paper"], fast["corrected"]) == (6 * 630, 5 * 630)
    assert training_flops(7, 45, 2, 3)["paper"] == 12 * 630
    with pytest.raises(ValueError, match="clean"):
        training_flops(7, 45, 2, 10, mode="clean")


def test_training_flops_reproduce_the_published_table():
    # spec §5: dense PGD-10 on CIFAR-10 = 772.41e17; Robust Bird = 50 clean epochs dense + 200 PGD sparse
    assert training_flops(260.07e9, 45_000, 200)["paper"] == pytest.approx(772.41e17, rel=1e-4)
    rb = training_flops(260.07e9, 45_000, 50, mode="clean")["paper"] + training_flops(64.64e9, 45_000, 200)["paper"]
    assert rb == pytest.approx(209.54e17, rel=1e-4)


def test_meter_matches_the_closed_form_at_constant_density():
    meter = TrainingFlopsMeter(mode="pgd")
    for _ in range(3):  # 3 epochs of 300 images in batches of 128
        for batch in (128, 128, 44):
            meter.accumulate(batch, 11)
    # (attack_steps + 1) x 3F per image (paper) and (3 + 2 x attack_steps) x F (corrected), PGD-10
    assert (meter.paper, meter.corrected, meter.images, meter.steps) == (33 * 11 * 900, 23 * 11 * 900, 900, 9)

def test_meter_integrates_a_density_trajectory_and_dense_gradients():
    meter = TrainingFlopsMeter(mode="pgd", attack_steps=2)
    meter.accumulate(10, 100)
    meter.accumulate(10, 50, f_dense_grad=200)  # a RigL-style growth step
    assert meter.paper == 9 * 10 * 100 + 9 * 10 * 50
    assert meter.corrected == 7 * 10 * 100 + (6 * 50 + 200) * 10
    resumed = TrainingFlopsMeter(mode="pgd", attack_steps=2)
    resumed.load_state_dict(meter.state_dict())
    assert resumed.state_dict() == meter.state_dict()
    with pytest.raises(ValueError, match="clean"):
        TrainingFlopsMeter(mode="clean").load_state_dict(meter.state_dict())
