"""Optional backend: the `imagecorruptions` package (ImageNet-C parameters, images of 32 px and more).

Not a dependency: `pip install imagecorruptions-imaug` (a maintained fork that works with numpy 2 and
current scikit-image; needs opencv-python, scikit-image, numba) or `pip install imagecorruptions`
(1.1.2, 2020: its glass_blur, gaussian_blur and fog fail on current scikit-image / numpy). Its severities
are ImageNet-C's, much stronger on 32 px images than CIFAR-10-C's, so its numbers are labelled with
this backend and are not comparable with the builtin generator's or the published CIFAR sets'.
"""
from __future__ import annotations

import inspect
from importlib import metadata
from types import ModuleType

import numpy as np

from pipeline.engine.errors import DataError, PipelineError

from pipeline.corruptions.generate import image_rng

INSTALL_HINT = "pip install imagecorruptions-imaug  (or the unmaintained: pip install imagecorruptions)"
MIN_SIDE = 32


def import_library() -> ModuleType:
    try:
        import imagecorruptions
    except ImportError:
        raise PipelineError(f"corruptions.backend 'imagecorruptions': the package is not installed; {INSTALL_HINT}") from None
    return imagecorruptions


def library_version() -> str:
    for dist in ("imagecorruptions-imaug", "imagecorruptions"):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return "imagecorruptions (version unknown)"


class LibraryCorruptor:
    """Corrupts (N, H, W, C) uint8 images with the library, seeding its random draws per image."""

    def __init__(self, name: str, severity: int, seed: int):
        self.lib = import_library()
        known = getattr(self.lib, "corruption_dict", {})
        if name not in known:
            raise PipelineError(f"imagecorruptions has no corruption {name!r} (it has: {', '.join(known)})")
        self.name, self.severity, self.seed = name, severity, seed
        # the fork lets glass_blur / impulse_noise take their own seed; the rest draw from np.random
        self.takes_seed = "seed" in inspect.signature(known[name]).parameters
        self._checked = False

    def _one(self, img: np.ndarray, index: int) -> np.ndarray:
        seed32 = int(image_rng(self.seed, self.name, self.severity, index).integers(2 ** 32))
        kwargs = {"seed": seed32} if self.takes_seed else {}
        saved = np.random.get_state()
        np.random.seed(seed32)
        try:
            out = self.lib.corrupt(img[..., 0] if img.shape[2] == 1 else img, severity=self.severity,
                                   corruption_name=self.name, **kwargs)
        except Exception as e:  # e.g. 1.1.2's glass_blur / fog on current scikit-image / numpy
            raise PipelineError(f"imagecorruptions' {self.name} failed ({library_version()}: {type(e).__name__}: "
                                f"{e}); use backend 'builtin', or: {INSTALL_HINT}") from e
        finally:
            np.random.set_state(saved)
        out = np.asarray(out, dtype=np.uint8)
        if img.shape[2] == 1 and out.ndim == 3:  # the library returns RGB for grey input
            out = out.mean(axis=2).round().astype(np.uint8)
        return out.reshape(img.shape)

    def __call__(self, images: np.ndarray, start: int = 0) -> np.ndarray:
        if min(images.shape[1], images.shape[2]) < MIN_SIDE:
            raise DataError(f"corruptions.backend 'imagecorruptions' needs images of at least {MIN_SIDE} px, "
                            f"got {images.shape[1]}x{images.shape[2]}; use backend 'builtin'")
        out = np.stack([self._one(img, start + i) for i, img in enumerate(images)])
        if not self._checked and len(images):
            # the library's randomness is not ours to control: refuse a type it cannot repeat
            if not np.array_equal(self._one(images[0], start), out[0]):
                raise PipelineError(f"imagecorruptions' {self.name} gives different images for the same seed "
                                    f"({library_version()}); use backend 'builtin'")
            self._checked = True
        return out
