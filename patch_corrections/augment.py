"""Data augmentation on the training device, batched.

Images are ``(batch, 1, z, y, x)`` float tensors, labels ``(batch, 1, z, y, x)`` integer
tensors with values {0, 1, 2}. Every transform keeps labels exactly in {0, 1, 2}: spatial
ones move labels by index or nearest-neighbour sampling, and voxels brought in from outside
the crop are ignore. Random numbers come from one ``torch.Generator`` so a run can be
resumed exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .constants import IGNORE


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each transform (nnU-Net-like defaults)."""

    flip: float = 0.5
    rotate90: float = 0.5
    affine: float = 0.2
    max_rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    brightness: float = 0.15
    brightness_range: float = 0.1
    contrast: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    gamma: float = 0.15
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise: float = 0.15
    noise_std: float = 0.1
    blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)


def _uniform(generator: torch.Generator, low: float, high: float, n: int, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def _chance(generator: torch.Generator, p: float, n: int, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < p


def augment(
    image: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    config: AugmentConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly transform a batch; returns new tensors, inputs untouched."""
    config = config or AugmentConfig()
    image, labels = _spatial(image, labels, generator, config)
    return _intensity(image, generator, config), labels


def _spatial(image, labels, generator, config):
    n, device = image.shape[0], image.device
    images, label_list = [], []
    flips = _chance(generator, config.flip, 3 * n, device).view(n, 3).tolist()
    turns = _chance(generator, config.rotate90, n, device).tolist()
    planes = torch.randint(0, 3, (n,), generator=generator, device=device).tolist()
    quarter = torch.randint(1, 4, (n,), generator=generator, device=device).tolist()
    for i in range(n):
        img, lab = image[i], labels[i]
        axes = [a + 1 for a in range(3) if flips[i][a]]
        if axes:
            img, lab = img.flip(axes), lab.flip(axes)
        if turns[i] and _cube(img):
            plane = [(1, 2), (1, 3), (2, 3)][planes[i]]
            img, lab = torch.rot90(img, quarter[i], plane), torch.rot90(lab, quarter[i], plane)
        images.append(img)
        label_list.append(lab)
    image, labels = torch.stack(images), torch.stack(label_list)
    chosen = _chance(generator, config.affine, n, device)
    if chosen.any():
        image, labels = _affine(image, labels, chosen, generator, config)
    return image, labels


def _cube(volume: torch.Tensor) -> bool:
    return volume.shape[1] == volume.shape[2] == volume.shape[3]


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(n, 3, 3)`` from angles ``(n, 3)`` about the three axes."""
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], 1)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], 1)
    rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], 1)
    return rx.view(-1, 3, 3) @ ry.view(-1, 3, 3) @ rz.view(-1, 3, 3)


def _affine(image, labels, chosen, generator, config):
    """Small rotations and scaling of the chosen samples (identity for the others)."""
    n, device, dtype = image.shape[0], image.device, labels.dtype
    limit = math.radians(config.max_rotation_deg)
    angles = _uniform(generator, -limit, limit, 3 * n, device).view(n, 3)
    scale = _uniform(generator, *config.scale_range, n, device)
    matrix = _rotation(angles) / scale.view(n, 1, 1)
    eye = torch.eye(3, device=device).expand(n, 3, 3)
    matrix = torch.where(chosen.view(n, 1, 1), matrix, eye)
    theta = torch.cat([matrix, torch.zeros(n, 3, 1, device=device)], dim=2)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    image = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # Shift labels by one so that 0 marks "outside the crop", which becomes ignore.
    shifted = F.grid_sample(
        labels.float() + 1, grid, mode="nearest", padding_mode="zeros", align_corners=False
    ).round()
    labels = torch.where(shifted == 0, torch.full_like(shifted, IGNORE), shifted - 1)
    return image, labels.to(dtype)


def _intensity(image, generator, config):
    n, device = image.shape[0], image.device
    view = (n, 1, 1, 1, 1)
    pick = _chance(generator, config.brightness, n, device).view(view)
    shift = _uniform(generator, -config.brightness_range, config.brightness_range, n, device)
    image = image + pick * shift.view(view)
    pick = _chance(generator, config.contrast, n, device).view(view)
    factor = _uniform(generator, *config.contrast_range, n, device).view(view)
    mean = image.mean(dim=(1, 2, 3, 4), keepdim=True)
    image = torch.where(pick, (image - mean) * factor + mean, image)
    pick = _chance(generator, config.gamma, n, device).view(view)
    gamma = _uniform(generator, *config.gamma_range, n, device).view(view)
    low = image.amin(dim=(1, 2, 3, 4), keepdim=True)
    span = (image.amax(dim=(1, 2, 3, 4), keepdim=True) - low).clamp_min(1e-6)
    image = torch.where(pick, ((image - low) / span).pow(gamma) * span + low, image)
    pick = _chance(generator, config.noise, n, device).view(view)
    sigma = _uniform(generator, 0, config.noise_std, n, device).view(view)
    noise = torch.randn(image.shape, generator=generator, device=device, dtype=image.dtype)
    image = image + pick * sigma * noise
    pick = _chance(generator, config.blur, n, device)
    sigmas = _uniform(generator, *config.blur_sigma, n, device)
    if pick.any():
        blurred = torch.stack([_blur(image[i], float(sigmas[i])) for i in range(n)])
        image = torch.where(pick.view(view), blurred, image)
    return image


def _blur(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of one ``(1, z, y, x)`` volume."""
    radius = max(1, math.ceil(2 * sigma))
    x = torch.arange(-radius, radius + 1, device=volume.device, dtype=volume.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    out = volume.unsqueeze(0)
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        padding = [0, 0, 0]
        padding[axis] = radius
        out = F.conv3d(out, kernel.view(shape), padding=tuple(padding))
    return out[0]
