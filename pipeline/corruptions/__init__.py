"""Common corruptions (CIFAR-10-C style): the 15 standard types and 4 extra, 5 severities each.

    from pipeline.corruptions import ALL, corrupt, image_rng, load_published
    bad = corrupt(img_uint8_hwc, "fog", 3, image_rng(seed=0, name="fog", severity=3, index=17))

Generated corruptions use the published CIFAR-10-C parameters (pixel-sized ones grow with images
larger than 32 px) with our own implementations; `catalog.get(name).note` says where one departs
from the published recipe. Published sets are read from their `.npy` layout by `load_published`.
"""
from __future__ import annotations

from pipeline.corruptions.catalog import ALL, EXTRA, SEVERITIES, STANDARD, Corruption, get
from pipeline.corruptions.generate import corrupt, corrupt_images, image_rng
from pipeline.corruptions.published import PublishedCorruptions, load_published

__all__ = ["ALL", "EXTRA", "SEVERITIES", "STANDARD", "Corruption", "PublishedCorruptions", "corrupt",
           "corrupt_images", "get", "image_rng", "load_published"]
