"""Image operations the corruptions share. Images are float arrays (H, W, C) in [0, 1], C = 1 or 3."""
from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from PIL import Image
from scipy import ndimage

REFERENCE_SIDE = 32  # CIFAR-10-C's parameters are stated for 32 x 32 images
LUMA = np.array([0.299, 0.587, 0.114])


def spatial_scale(x: np.ndarray) -> float:
    """Factor for parameters measured in pixels: 1 up to 32 px, growing with the shorter side above."""
    return max(1.0, min(x.shape[0], x.shape[1]) / REFERENCE_SIDE)


def next_pow2(n: int) -> int:
    return 1 << max(1, math.ceil(math.log2(max(n, 2))))


def luminance(x: np.ndarray) -> np.ndarray:
    """(H, W, 1) grey level; a grey image is its own luminance."""
    if x.shape[2] == 1:
        return x.copy()
    return (x @ LUMA)[..., None]


def tint(x: np.ndarray, rgb: tuple[float, float, float]) -> np.ndarray:
    """A colour as a (1, 1, C) array for x: the colour itself, or its grey level for a grey image."""
    c = np.asarray(rgb, dtype=np.float64)
    return (c if x.shape[2] == 3 else np.array([c @ LUMA]))[None, None, :]


def gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """Gaussian blur over the two spatial axes of a (H, W) or (H, W, C) array."""
    if sigma <= 0:
        return np.array(x, dtype=np.float64, copy=True)
    sig = (sigma, sigma) + (0.0,) * (x.ndim - 2)
    return ndimage.gaussian_filter(np.asarray(x, dtype=np.float64), sigma=sig, mode=mode, truncate=truncate)


def correlate_channels(x: np.ndarray, kernel: np.ndarray, mode: str = "mirror") -> np.ndarray:
    # 'mirror' in scipy is OpenCV's default border (reflect-101), which the published recipes inherit
    return ndimage.correlate(x, kernel[:, :, None], mode=mode)


def gaussian_kernel_1d(size: int, sigma: float) -> np.ndarray:
    i = np.arange(size) - (size - 1) / 2.0
    k = np.exp(-(i ** 2) / (2.0 * sigma ** 2))
    return k / k.sum()


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """A normalised disk of `radius` px on a fixed grid, anti-aliased by a small Gaussian."""
    if radius <= 8:
        half, ksize = 8, 3
    else:
        half, ksize = int(math.ceil(radius)), 5
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    g = gaussian_kernel_1d(ksize, alias_blur)
    return ndimage.correlate(disk, np.outer(g, g), mode="mirror")


def motion_blur(x: np.ndarray, radius: float, sigma: float, angle_deg: float) -> np.ndarray:
    """One-sided linear motion blur: Gaussian weights along a ray at `angle_deg`, edges clamped.

    Follows the behaviour of ImageMagick's motion blur used by the published sets: kernel width
    2*ceil(radius)+1, weight exp(-i^2 / 2 sigma^2) for the i-th pixel along the ray.
    """
    width = 2 * int(math.ceil(radius)) + 1
    i = np.arange(width, dtype=np.float64)
    w = np.exp(-(i ** 2) / (2.0 * sigma ** 2))
    w /= w.sum()
    theta = math.radians(angle_deg)
    ox = np.ceil(i * math.cos(theta) - 0.5).astype(int)
    oy = np.ceil(i * math.sin(theta) - 0.5).astype(int)
    h, wd = x.shape[:2]
    rows, cols = np.arange(h)[:, None], np.arange(wd)[None, :]
    out = np.zeros_like(x, dtype=np.float64)
    for weight, dx, dy in zip(w, ox, oy):
        out += weight * x[np.clip(rows + dy, 0, h - 1), np.clip(cols + dx, 0, wd - 1)]
    return out


def clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre by `factor` (>= 1, bilinear) and crop back to the input size."""
    h, w = x.shape[:2]
    ch, cw = int(math.ceil(h / factor)), int(math.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[top:top + ch, left:left + cw]
    zoomed = ndimage.zoom(crop, (factor, factor) + (1,) * (x.ndim - 2), order=1)
    t, l = (zoomed.shape[0] - h) // 2, (zoomed.shape[1] - w) // 2
    return zoomed[t:t + h, l:l + w]


def plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height map on a (size x size) torus, size a power of two, scaled to [0, 1].

    The noise amplitude falls by decay**2 per halving of the step, as in the generator behind the
    published fog (its "wibble" both scales and bounds the noise).
    """
    m = np.zeros((size, size))
    step, amp = size, 100.0 ** 2
    while step >= 2:
        half = step // 2
        corners = m[0::step, 0::step]
        right, down = np.roll(corners, -1, axis=1), np.roll(corners, -1, axis=0)
        diag = np.roll(down, -1, axis=1)
        m[half::step, half::step] = (corners + right + down + diag) / 4 + rng.uniform(-amp, amp, corners.shape)
        centres = m[half::step, half::step]
        above = np.roll(centres, 1, axis=0)  # centre of the cell above each top edge
        m[0::step, half::step] = (corners + right + centres + above) / 4 + rng.uniform(-amp, amp, corners.shape)
        before = np.roll(centres, 1, axis=1)  # centre of the cell left of each left edge
        m[half::step, 0::step] = (corners + down + centres + before) / 4 + rng.uniform(-amp, amp, corners.shape)
        step, amp = half, amp / decay ** 2
    m -= m.min()
    top = m.max()
    return m / top if top > 0 else m


def hsv_adjust(x: np.ndarray, channel: int, fn) -> np.ndarray:
    """Apply `fn` to one HSV channel (1: saturation, 2: value) of an RGB image."""
    hsv = rgb_to_hsv(np.clip(x, 0.0, 1.0))
    hsv[..., channel] = np.clip(fn(hsv[..., channel]), 0.0, 1.0)
    return hsv_to_rgb(hsv)


def to_pil(x: np.ndarray) -> Image.Image:
    u8 = to_uint8(x)
    return Image.fromarray(u8[..., 0] if u8.shape[2] == 1 else u8, mode="L" if u8.shape[2] == 1 else "RGB")


def from_pil(img: Image.Image, channels: int) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64) / 255.0
    return a[..., None] if channels == 1 and a.ndim == 2 else a


def jpeg_roundtrip(x: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    to_pil(x).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as img:
        return from_pil(img.convert("L" if x.shape[2] == 1 else "RGB"), x.shape[2])


def box_resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    return from_pil(to_pil(x).resize((width, height), Image.Resampling.BOX), x.shape[2])


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def truncate_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] -> uint8 by truncation, as the published sets were stored; the tiny offset keeps an
    untouched k/255 at k despite float round-off."""
    return np.floor(np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0) * 255.0 + 1e-7).astype(np.uint8)


def equalize_hist(u8: np.ndarray) -> np.ndarray:
    """Histogram equalisation of a uint8 image (the cumulative histogram as a lookup table)."""
    hist = np.bincount(u8.ravel(), minlength=256)
    cdf = np.cumsum(hist)
    first = cdf[np.nonzero(hist)[0][0]]
    if cdf[-1] == first:  # a single grey level: nothing to spread
        return u8.copy()
    lut = np.clip(np.rint((cdf - first) * 255.0 / (cdf[-1] - first)), 0, 255).astype(np.uint8)
    return lut[u8]
