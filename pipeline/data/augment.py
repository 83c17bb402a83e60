"""Batched, vectorised training augmentation: random crop with zero padding, horizontal flip, rotation.

Random parameters are drawn on the CPU from the generator the caller passes, in a fixed order, so a
batch's augmentation depends on that generator alone (not on the device or on earlier batches).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

AUGMENTATIONS = ("none", "crop", "crop_flip", "crop_flip_rotate")
ROTATION_DEGREES = 15.0  # CIFAR-100's RandomRotation(15) in the reference code


def random_crop(x: Tensor, padding: int, gen: torch.Generator) -> Tensor:
    """Crop each image back to its size at a random offset of its zero-padded version."""
    if padding == 0:
        return x
    b, _, h, w = x.shape
    off_y = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    off_x = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = (off_y[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (off_x[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(x: Tensor, gen: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_rotate(x: Tensor, degrees: float, gen: torch.Generator) -> Tensor:
    """Rotate each float image about its centre by an angle uniform in [-degrees, degrees].

    Nearest-neighbour sampling and zero fill, like torchvision's RandomRotation defaults.
    """
    angle = (torch.rand(x.shape[0], generator=gen, dtype=torch.float64) * 2 - 1) * math.radians(degrees)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.zeros(x.shape[0], 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    h, w = x.shape[-2:]
    # affine_grid works in normalised coordinates; rescale so the rotation is in pixel space for H != W.
    theta[:, 0, 1] *= h / w
    theta[:, 1, 0] *= w / h
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def augment_batch(x: Tensor, *, augment: str, crop_padding: int, gen: torch.Generator) -> Tensor:
    """Augment a uint8 NCHW batch and return it as float32 in [0, 1] on the same device."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)} (resolved), got {augment!r}")
    if augment != "none":
        x = random_crop(x, crop_padding, gen)
    if augment in ("crop_flip", "crop_flip_rotate"):
        x = random_flip(x, gen)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    if augment == "crop_flip_rotate":
        x = random_rotate(x, ROTATION_DEGREES, gen)
    return x
