"""Corruptions: every type on RGB and grey, determinism, severity order, known answers, the published
loader on a small .npy layout, the corruption benchmark, and the optional imagecorruptions backend."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.corruptions import ALL, EXTRA, STANDARD, corrupt, corrupt_images, get, image_rng, load_published
from pipeline.corruptions.benchmark import CorruptionConfig, evaluate_corruptions
from pipeline.engine.errors import DataError, PipelineError


def scene(h: int, w: int, c: int, seed: int) -> np.ndarray:
    """A small uint8 picture: two gradients, a bright block and a little grain (mid-range values)."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = 0.25 + 0.4 * xx + 0.2 * yy
    base[h // 4:h // 2, w // 4:3 * w // 4] += 0.3
    img = base[..., None] * np.array([1.0, 0.8, 0.6][:c]) + r.normal(0, 0.03, (h, w, c))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


RGB = scene(32, 32, 3, 0)
GREY = scene(8, 8, 1, 1)[..., 0]  # (H, W), as digits images are


def test_catalog_has_the_15_standard_and_4_extra_types():
    assert len(STANDARD) == 15 and len(EXTRA) == 4 and len(set(ALL)) == 19
    assert {"speckle_noise", "gaussian_blur", "spatter", "saturate"} == set(EXTRA)
    for name in ALL:
        spec = get(name)
        assert len(spec.params) == 5 and spec.standard == (name in STANDARD)


@pytest.mark.parametrize("name", ALL)
def test_every_corruption_on_rgb_32_and_grey_8(name):
    for img, severities in ((RGB, (1, 3, 5)), (GREY, (5,)), (GREY[..., None], (5,))):
        for sev in severities:
            out = corrupt(img, name, sev, image_rng(7, name, sev, 0))
            assert out.dtype == np.uint8 and out.shape == img.shape
            again = corrupt(img, name, sev, image_rng(7, name, sev, 0))
            assert np.array_equal(out, again), "not deterministic under a seed"
            others = {corrupt(img, name, sev, image_rng(seed, name, sev, 0)).tobytes() for seed in range(8, 12)}
            if get(name).random:  # (one other seed may draw e.g. no snow flake on an 8 x 8 image)
                assert len(others | {out.tobytes()}) > 1, "the same image for every seed"
            else:
                assert others == {out.tobytes()}, "a deterministic corruption depends on the seed"
            if name == "saturate" and (img.ndim == 2 or img.shape[2] == 1):
                assert np.array_equal(out, img)  # a grey image has no saturation to change
            elif img is RGB and sev < 3 and name == "spatter":
                continue  # light water drops may miss a given picture
            else:
                assert not np.array_equal(out, img), f"{name} s{sev} left the {img.shape} image unchanged"


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "gaussian_blur",
                                  "defocus_blur", "motion_blur", "zoom_blur", "snow", "fog", "brightness",
                                  "contrast", "jpeg_compression"])
def test_distortion_grows_with_severity(name):
    images = [scene(32, 32, 3, s) for s in range(3)]
    dist = [np.mean([np.abs(corrupt(im, name, s, image_rng(0, name, s, i)).astype(float) - im).mean()
                     for i, im in enumerate(images)]) for s in range(1, 6)]
    assert all(b >= a for a, b in zip(dist, dist[1:])), dist
    assert dist[-1] > dist[0]


def test_known_answers_of_simple_types():
    img = np.array([[[100, 100, 100], [200, 200, 200]]], dtype=np.uint8)  # 1 x 2 RGB, per-channel mean 150
    out = corrupt(img, "contrast", 2, image_rng(0, "contrast", 2, 0))  # factor 0.5
    assert out[0, :, 0].tolist() == [125, 175]
    grey = np.full((4, 4), 51, dtype=np.uint8)  # 0.2
    out = corrupt(grey, "brightness", 5, image_rng(0, "brightness", 5, 0))  # +0.3 on the value
    assert np.all(out == 127)  # floor(0.5 * 255), truncated as the published sets
    mid = np.full((64, 64, 3), 128, dtype=np.uint8)
    noisy = corrupt(mid, "gaussian_noise", 5, image_rng(0, "gaussian_noise", 5, 0)).astype(float)
    assert np.std(noisy - 128) == pytest.approx(0.10 * 255, rel=0.05)
    hit = corrupt(mid, "impulse_noise", 5, image_rng(0, "impulse_noise", 5, 0)) != 128
    assert hit.mean() == pytest.approx(0.07, abs=0.01)
    for name in ("gaussian_blur", "defocus_blur", "zoom_blur", "motion_blur", "pixelate", "glass_blur"):
        flat = np.full((32, 32, 3), 90, dtype=np.uint8)  # blurring a flat image changes nothing
        assert np.array_equal(corrupt(flat, name, 5, image_rng(0, name, 5, 0)), flat), name


def test_batches_are_index_deterministic():
    images = np.stack([scene(16, 16, 3, s) for s in range(5)])
    whole = corrupt_images(images, "fog", 3, seed=4)
    tail = corrupt_images(images[2:], "fog", 3, seed=4, start=2)
    assert np.array_equal(whole[2:], tail)
    assert not np.array_equal(whole[0], corrupt_images(images[:1], "fog", 3, seed=5)[0])


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="severity"):
        corrupt(RGB, "fog", 6, image_rng(0, "fog", 6, 0))
    with pytest.raises(ValueError, match="uint8"):
        corrupt(RGB.astype(np.float32), "fog", 1, image_rng(0, "fog", 1, 0))
    with pytest.raises(KeyError, match="unknown corruption"):
        corrupt(RGB, "rain", 1, image_rng(0, "rain", 1, 0))


# -- the published layout -------------------------------------------------------------------------

N = 8  # images per severity


def write_published(root, names=("fog", "contrast"), per=N, labels=None):
    """<name>.npy = 5 severity blocks of `per` 4x4 RGB images; pixel value = 10 * severity + image index."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        blocks = [np.full((per, 4, 4, 3), 0, dtype=np.uint8) + (10 * s + np.arange(per, dtype=np.uint8))[:, None, None, None]
                  for s in range(1, 6)]
        np.save(root / f"{name}.npy", np.concatenate(blocks))
    labels = np.tile(np.arange(per) % 2, 5).astype(np.uint8) if labels is None else labels
    np.save(root / "labels.npy", labels)
    return root


def test_published_loader_reads_the_severity_blocks(tmp_path):
    ps = load_published(write_published(tmp_path / "c10c"))
    assert ps.types == ["fog", "contrast"] and ps.per_severity == N  # in the published order
    block = ps.images("contrast", 3, limit=5)
    assert block.shape == (5, 4, 4, 3) and block[:, 0, 0, 0].tolist() == [30, 31, 32, 33, 34]
    assert ps.images("fog", 5)[-1, 0, 0, 0] == 50 + N - 1
    assert ps.targets(limit=3).tolist() == [0, 1, 0]
    assert load_published(tmp_path / "c10c", types=["contrast"]).types == ["contrast"]


def test_published_loader_errors_name_the_file(tmp_path):
    root = write_published(tmp_path / "a")
    with pytest.raises(DataError, match="snow.npy"):
        load_published(root, types=["snow"])
    with pytest.raises(DataError, match="directory not found"):
        load_published(tmp_path / "nope")
    (root / "labels.npy").unlink()
    with pytest.raises(DataError, match="labels.npy"):
        load_published(root)
    bad = write_published(tmp_path / "b", labels=np.zeros(7, dtype=np.uint8))
    with pytest.raises(DataError, match="7 labels"):
        load_published(bad)
    odd = write_published(tmp_path / "c")
    np.save(odd / "fog.npy", np.zeros((12, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="severities"):
        load_published(odd)


class Brightest(nn.Module):
    """Class 1 iff the mean pixel is above 0.1 (in [0, 1] units)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3)) * self.w - 0.1
        return torch.stack([-m, m], dim=1)


def test_benchmark_on_published_set_known_answer(tmp_path):
    # pixel 10 s + i over 255: above 0.1 (25.5) iff 10 s + i > 25.5; labels are all 1
    root = write_published(tmp_path / "c", labels=np.ones(5 * N, dtype=np.uint8))
    test_x = torch.full((N, 3, 4, 4), 200, dtype=torch.uint8)
    test_y = torch.ones(N, dtype=torch.long)
    test_y[:2] = 0  # clean accuracy 75 %
    res = evaluate_corruptions(Brightest(), test_x, test_y, CorruptionConfig(path=root, generate=True),
                               device="cpu", batch_size=3, num_classes=2)
    expect = [100.0 * sum(10 * s + i > 25.5 for i in range(N)) / N for s in range(1, 6)]  # 0, 25, 100, 100, 100
    assert res["source"] == "published" and res["per"]["fog"] == expect and res["per"]["contrast"] == expect
    assert res["mean_acc"] == pytest.approx(np.mean(expect)) and res["mean_acc_15"] is None
    assert res["clean_acc"] == 75.0 and res["n"] == N
    sub = evaluate_corruptions(Brightest(), test_x, test_y,
                               CorruptionConfig(path=root, types=["fog"], severities=[2], limit=4),
                               device="cpu", batch_size=8)
    assert sub["per"] == {"fog": [0.0]} and sub["n"] == 4  # 20..23 are all below 25.5
    with pytest.raises(DataError, match="model takes"):
        evaluate_corruptions(Brightest(), torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.ones(2, dtype=torch.long),
                             CorruptionConfig(path=root), device="cpu", batch_size=2)


def test_benchmark_generated_when_published_absent(tmp_path):
    test_x = torch.from_numpy(np.stack([scene(8, 8, 1, s) for s in range(6)])).permute(0, 3, 1, 2).contiguous()
    test_y = torch.ones(6, dtype=torch.long)
    cfg = CorruptionConfig(path=tmp_path / "absent", generate=True, types=["fog", "contrast"], limit=4)
    res = evaluate_corruptions(Brightest(), test_x, test_y, cfg, device="cpu", batch_size=4)
    assert res["source"] == "generated" and res["backend"] == "builtin" and res["path"] is None
    assert res["n"] == 4 and set(res["per"]) == {"fog", "contrast"} and all(len(v) == 5 for v in res["per"].values())
    assert res == {**evaluate_corruptions(Brightest(), test_x, test_y, cfg, device="cpu", batch_size=4),
                   "seconds": res["seconds"]}
    with pytest.raises(ValueError, match="path: directory not found.*generate: true"):
        CorruptionConfig(path=tmp_path / "absent")  # caught when the config is validated, before any work
    vanished = CorruptionConfig.model_construct(path=tmp_path / "absent", generate=False, types=None,
                                                severities=[1], limit=None, seed=0, backend="builtin", batch_size=None)
    with pytest.raises(DataError, match="generate: true"):  # and if the directory goes away after validation
        evaluate_corruptions(Brightest(), test_x, test_y, vanished, device="cpu", batch_size=4)
    with pytest.raises(ValueError, match="generate: true"):
        CorruptionConfig()


def _fake_library(monkeypatch, *, seeded: bool):
    fake = types.ModuleType("imagecorruptions")
    calls = []

    def fog(img, severity=1):
        return img

    def corrupt_fn(image, severity=1, corruption_name=None, **kwargs):
        calls.append((image.shape, severity, corruption_name))
        if corruption_name == "glass_blur":  # as 1.1.2 on current scikit-image
            raise TypeError("gaussian() got an unexpected keyword argument 'multichannel'")
        rgb = np.stack([image] * 3, axis=-1) if image.ndim == 2 else image
        draw = np.random.randint(0, 40, size=rgb.shape) if seeded else np.random.default_rng().integers(0, 40, rgb.shape)
        return np.clip(rgb.astype(int) + draw, 0, 255).astype(np.uint8)

    fake.corruption_dict = {"fog": fog, "glass_blur": fog}
    fake.corrupt = corrupt_fn
    monkeypatch.setitem(sys.modules, "imagecorruptions", fake)
    return calls


def test_imagecorruptions_backend_is_seeded_and_checked(monkeypatch):
    from pipeline.corruptions.library import LibraryCorruptor

    calls = _fake_library(monkeypatch, seeded=True)
    state = np.random.get_state()[1].copy()
    grey = np.stack([scene(32, 32, 1, s) for s in range(2)])
    a = LibraryCorruptor("fog", 2, seed=3)(grey)
    b = LibraryCorruptor("fog", 2, seed=3)(grey)
    assert a.shape == grey.shape and np.array_equal(a, b) and not np.array_equal(a, grey)
    assert np.array_equal(np.random.get_state()[1], state)  # the global stream is left as it was
    assert calls[0] == ((32, 32), 2, "fog")  # grey handed over as (H, W)
    with pytest.raises(DataError, match="at least 32 px"):
        LibraryCorruptor("fog", 1, seed=0)(np.zeros((1, 8, 8, 1), dtype=np.uint8))
    with pytest.raises(PipelineError, match="glass_blur failed .*multichannel"):
        LibraryCorruptor("glass_blur", 1, seed=0)(grey)
    with pytest.raises(PipelineError, match="no corruption 'snow'"):
        LibraryCorruptor("snow", 1, seed=0)
    _fake_library(monkeypatch, seeded=False)
    with pytest.raises(PipelineError, match="same seed"):
        LibraryCorruptor("fog", 1, seed=0)(grey)


def test_imagecorruptions_backend_missing(monkeypatch):
    from pipeline.corruptions.library import import_library

    monkeypatch.setitem(sys.modules, "imagecorruptions", None)  # import fails
    with pytest.raises(PipelineError, match="pip install imagecorruptions"):
        import_library()
