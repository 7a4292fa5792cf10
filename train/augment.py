"""Training-time distortions that match what the field set shows a model must tolerate.

Photos and scans of handwriting differ from MNIST's own digits by small rotations, scale,
shear, wobbly strokes and stroke thickness (marker against pen); one random affine map plus a
smooth elastic field, and an occasional dilation or erosion, cover them. Batched on the
tensor (one grid_sample per batch), so augmentation costs little of the training budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random distortions; zero turns each one off."""

    rotate_deg: float = 12.0
    scale: float = 0.12  # factor in [1 - scale, 1 + scale]
    shear: float = 0.2  # x-shear coefficient in [-shear, shear]
    shift_px: float = 2.0
    elastic_px: float = 1.2  # largest displacement of the smooth elastic field
    thickness_p: float = 0.3  # share of images made thicker (half of it) or thinner (half)


def distort(images: torch.Tensor, aug: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """uint8-valued float images [N,28,28] → distorted images of the same shape and range."""
    n, height, width = images.shape
    x = _thickness(images, aug.thickness_p, generator)

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (high - low) + low

    angle = uniform(-aug.rotate_deg, aug.rotate_deg) * math.pi / 180
    scale = uniform(1 - aug.scale, 1 + aug.scale)
    shear = uniform(-aug.shear, aug.shear)
    tx = uniform(-aug.shift_px, aug.shift_px) * 2 / width  # grid units: [-1, 1] across the image
    ty = uniform(-aug.shift_px, aug.shift_px) * 2 / height
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    matrix = torch.stack(
        [torch.stack([cos, -sin + shear * cos], 1), torch.stack([sin, cos + shear * sin], 1)], 1
    )
    base = _base_grid(height, width)  # [H,W,2] (x, y)
    grid = torch.einsum("hwj,nij->nhwi", base, matrix) + torch.stack([tx, ty], 1)[:, None, None, :]
    if aug.elastic_px > 0:
        coarse = torch.rand(n, 2, 4, 4, generator=generator) * 2 - 1
        up_h, up_w = _upsampler(height, 4), _upsampler(width, 4)
        field = torch.einsum("hk,nckl,wl->nhwc", up_h, coarse, up_w)  # smooth, bilinear
        grid = grid + field * (aug.elastic_px * 2 / width)
    out = F.grid_sample(
        x.unsqueeze(1), grid.contiguous(), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out.squeeze(1).clamp(0, 255)


def _base_grid(height: int, width: int) -> torch.Tensor:
    ys = (torch.arange(height, dtype=torch.float32) * 2 + 1) / height - 1
    xs = (torch.arange(width, dtype=torch.float32) * 2 + 1) / width - 1
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)


def _upsampler(size: int, points: int) -> torch.Tensor:
    """[size, points] linear interpolation weights from ``points`` control values."""
    position = torch.linspace(0, points - 1, size)
    lower = position.floor().clamp(max=points - 2).long()
    frac = position - lower
    weights = torch.zeros(size, points)
    weights[torch.arange(size), lower] = 1 - frac
    weights[torch.arange(size), lower + 1] = frac
    return weights


def _max3(x: torch.Tensor) -> torch.Tensor:
    """3×3 maximum filter by two separable passes; outside the image counts as 0 (background)."""
    padded = F.pad(x, (1, 1, 1, 1))
    rows = torch.maximum(torch.maximum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])
    return torch.maximum(torch.maximum(rows[:, :, :-2], rows[:, :, 1:-1]), rows[:, :, 2:])


def _thickness(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    if p <= 0:
        return x
    pick = torch.rand(x.shape[0], generator=generator)
    thicker = torch.nonzero(pick < p / 2).flatten()
    thinner = torch.nonzero((pick >= p / 2) & (pick < p)).flatten()
    x = x.clone()
    # Half a pixel each way: a full 3×3 step would be thicker or thinner than MNIST ever is.
    x[thicker] = 0.5 * (x[thicker] + _max3(x[thicker]))
    x[thinner] = 0.5 * (x[thinner] - _max3(-x[thinner]))
    return x
