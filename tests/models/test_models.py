"""Model registry: every registered architecture is built, run and checked by name."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models import ClassifierModel, NormalizeByChannel, create_model, list_models, register_model
from pipeline.models import registry

torch.set_num_threads(1)

BIG = {"wrn34_10", "resnet50"}  # batch 1 keeps these fast


def batch_for(arch: str) -> int:
    return 1 if arch in BIG else 2


def prunable_weights(model: nn.Module) -> list[int]:
    return [m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_builtin_names_are_registered():
    assert list_models() == sorted(["preact_resnet18", "resnet18_cifar", "resnet34_cifar", "vgg16_bn",
                                    "wrn34_10", "resnet50", "small_cnn", "convnet4"])


@pytest.mark.parametrize("arch", list_models())
def test_forward_shape_and_attributes(arch):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10).eval()
    assert isinstance(model, ClassifierModel)
    assert (model.arch, model.num_classes, model.in_chans) == (arch, 10, 3)
    with torch.no_grad():
        out = model(torch.rand(batch_for(arch), 3, 32, 32))
    assert out.shape == (batch_for(arch), 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", list_models())
def test_normalization_is_applied_inside(arch):
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    torch.manual_seed(0)
    model = create_model(arch, num_classes=4, mean=mean, std=std).eval()
    x = torch.rand(batch_for(arch), 3, 32, 32)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model(x)
        assert torch.allclose(out, model.net((x - m) / s), atol=1e-5)
        model.normalize.mean.fill_(0.9)
        assert not torch.allclose(model(x), out, atol=1e-4)
    # the statistics travel with the weights
    state = model.state_dict()
    assert torch.equal(state["normalize.std"].flatten(), torch.tensor(std))


@pytest.mark.parametrize("arch", list_models())
def test_layer_names_are_the_first_conv_and_final_linear_run(arch):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10).eval()
    modules = dict(model.named_modules())
    assert model.first_layer_name.startswith("net.") and model.classifier_name.startswith("net.")
    assert isinstance(modules[model.first_layer_name], nn.Conv2d)
    assert isinstance(modules[model.classifier_name], nn.Linear)
    assert model.get_classifier() is modules[model.classifier_name]

    calls: list[tuple[str, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, args, out, name=name: calls.append((name, out)))
             for name, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert calls[0][0] == model.first_layer_name
    assert calls[-1][0] == model.classifier_name
    assert torch.equal(calls[-1][1], out)


@pytest.mark.parametrize("arch", list_models())
def test_reset_classifier_changes_outputs_and_keeps_other_weights(arch):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    old_fc = model.get_classifier()
    name = model.classifier_name

    model.reset_classifier(7)

    fc = model.get_classifier()
    assert fc is not old_fc and model.classifier_name == name and model.num_classes == 7
    assert (fc.in_features, fc.out_features) == (old_fc.in_features, 7) and fc.bias is not None
    after = model.state_dict()
    assert set(after) == set(before)  # same keys: checkpoints stay loadable
    for key, value in before.items():
        if key.startswith(name + "."):
            assert after[key].shape[0] == 7
        else:
            assert torch.equal(after[key], value), key
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 7)


@pytest.mark.parametrize("arch", list_models())
def test_one_input_channel(arch):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=3, in_chans=1).eval()
    assert model.get_submodule(model.first_layer_name).in_channels == 1
    assert model.normalize.mean.shape == (1, 1, 1, 1)
    with torch.no_grad():
        assert model(torch.rand(1, 1, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("arch", ["small_cnn", "preact_resnet18"])
def test_same_seed_same_weights(arch):
    def build(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return create_model(arch, num_classes=10).state_dict()

    a, b, c = build(1), build(1), build(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["net.fc.weight"], c["net.fc.weight"])


# Exact conv+linear weight counts at 10 classes (weights only, no biases or BN).
# PreActResNet-18: stem 3*64*9 = 1,728; stages 147,456 + 524,288 + 2,097,152 + 8,388,608
# (shortcuts 8,192 / 32,768 / 131,072 included); fc 5,120 -> 11,164,352 in 21 tensors.
# VGG-16-BN: 13 convs 14,710,464 + fc 5,120 = 14,715,584 (spec: 14.72M).
# WRN-34-10: stem 432; groups 2,099,200 + 8,806,400 + 35,225,600; fc 6,400 = 46,138,032 (spec: 46.14M).
# ResNet-50: 53 convs = 23,454,912 (spec: ~23.5M) + fc 2048*10.
# convnet4: 3*32*9 + 32*64*9 + 64*128*9 + 128*256*9 = 387,936; fc 2,560 -> 390,496 in 5 tensors.
@pytest.mark.parametrize("arch, tensors, total", [
    ("preact_resnet18", 21, 11_164_352),
    ("resnet18_cifar", 21, 11_164_352),  # same conv shapes as the PreAct version
    ("vgg16_bn", 14, 14_715_584),
    ("wrn34_10", 35, 46_138_032),
    ("resnet50", 54, 23_454_912 + 20_480),
    ("convnet4", 5, 390_496),
])
def test_weight_counts(arch, tensors, total):
    counts = prunable_weights(create_model(arch, num_classes=10))
    assert (len(counts), sum(counts)) == (tensors, total)


def test_preact_resnet18_stable_state_dict_keys():
    state = create_model("preact_resnet18", num_classes=10).state_dict()
    for key in ["normalize.mean", "normalize.std", "net.conv1.weight", "net.layer1.0.bn1.weight",
                "net.layer1.0.conv2.weight", "net.layer2.0.shortcut.weight", "net.layer4.1.bn2.running_var",
                "net.bn.weight", "net.fc.weight", "net.fc.bias"]:
        assert key in state, key
    assert "net.layer1.0.shortcut.weight" not in state  # identity shortcut in the first stage
    assert "net.conv1.bias" not in state


def test_preact_shortcuts_read_the_right_tensor():
    """Fresh eval-mode BN is (nearly) the identity, so for all-negative x the pre-activation
    relu(bn1(x)) is zero: the projection shortcut (which reads it) and the conv path give zeros,
    while the identity shortcut passes the raw x through."""
    net = create_model("preact_resnet18", num_classes=10).net.eval()
    projecting, identity = net.layer2[0], net.layer1[1]
    assert projecting.shortcut is not None and identity.shortcut is None
    with torch.no_grad():
        x = -torch.rand(1, 64, 8, 8) - 0.1
        assert torch.equal(projecting(x), torch.zeros(1, 128, 4, 4))
        assert torch.equal(identity(x), x)


@pytest.mark.parametrize("arch, size", [("preact_resnet18", 8), ("preact_resnet18", 64),
                                        ("vgg16_bn", 64), ("wrn34_10", 64)])
def test_other_input_sizes(arch, size):
    model = create_model(arch, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, size, size)).shape == (1, 5)


def test_small_cnn_is_small_and_takes_digits():
    model = create_model("small_cnn", num_classes=10, in_chans=1).eval()
    assert sum(p.numel() for p in model.parameters()) < 50_000
    with torch.no_grad():
        assert model(torch.rand(4, 1, 8, 8)).shape == (4, 10)


def test_small_cnn_learns_sklearn_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixels in [0, 1]
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    perm = torch.randperm(len(x))
    x, y = x[perm], y[perm]
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
    model = create_model("small_cnn", num_classes=10, in_chans=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(5):
        model.train()
        for i in range(0, len(x_train), 64):
            loss = F.cross_entropy(model(x_train[i:i + 64]), y_train[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy > 0.9


def test_normalize_by_channel_known_answer():
    norm = NormalizeByChannel([0.5, 0.25], [0.5, 0.25])
    assert norm.mean.shape == norm.std.shape == (1, 2, 1, 1)
    out = norm(torch.ones(1, 2, 1, 1))
    assert out.flatten().tolist() == [1.0, 3.0]


def test_default_mean_std_is_half():
    model = create_model("small_cnn", num_classes=2, in_chans=2)
    assert model.normalize.mean.flatten().tolist() == [0.5, 0.5]
    assert model.normalize.std.flatten().tolist() == [0.5, 0.5]


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError) as err:
        create_model("resnet9000", num_classes=10)
    message = str(err.value)
    assert "resnet9000" in message
    for name in list_models():
        assert name in message


@pytest.mark.parametrize("kwargs, fragment", [
    ({"mean": [0.5, 0.5]}, "mean has 2 values but in_chans is 3"),
    ({"std": [0.5] * 4}, "std has 4 values but in_chans is 3"),
    ({"std": [0.5, 0.0, 0.5]}, "std must be positive"),
    ({"num_classes": 0}, "num_classes"),
])
def test_bad_arguments_are_value_errors(kwargs, fragment):
    args = {"num_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=fragment):
        create_model("small_cnn", **args)


def test_register_model_enrols_a_factory(monkeypatch):
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))

    @register_model("tiny_linear_probe")
    def tiny(*, num_classes: int, in_chans: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(in_chans, 4, 1), nn.Flatten(), nn.Linear(4, num_classes))

    assert "tiny_linear_probe" in list_models()
    model = create_model("tiny_linear_probe", num_classes=3, in_chans=2)
    assert (model.first_layer_name, model.classifier_name) == ("net.0", "net.2")
    assert model(torch.rand(5, 2, 1, 1)).shape == (5, 3)
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny_linear_probe")(tiny)
