"""Data augmentation on the training device, batched.

Images are ``(batch, 1, z, y, x)`` float tensors, labels ``(batch, 1, z, y, x)`` integer
tensors with values {0, 1, 2}. Every transform keeps labels exactly in {0, 1, 2}: spatial
ones move labels by index or nearest-neighbour sampling, and voxels brought in from outside
the crop are ignore. Random numbers come from one ``torch.Generator`` so a run can be
resumed exactly.

The choices that shape the work (which samples are flipped, turned, warped or blurred,
and how wide a blur is) are drawn on the host, from a Python generator seeded from that
generator's state: reading them back from a GPU would make the host wait for the device
several times a step. The values the device computes with (angles, scales, intensities,
noise) come from the torch generator on the device.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..constants import IGNORE


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


def _choices(generator: torch.Generator) -> random.Random:
    """The host generator of one call, seeded from a hash of ``generator``'s current state
    (kept on the host, for a CUDA generator too: no wait for the device), so each call
    draws new choices and a generator seeded alike draws the same ones."""
    state = generator.get_state().numpy().tobytes()
    return random.Random(hashlib.blake2b(state, digest_size=8, person=b"augment").digest())


def augment(
    image: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    config: AugmentConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly transform a batch; returns new tensors, inputs untouched."""
    config = config or AugmentConfig()
    choices = _choices(generator)
    image, labels = _spatial(image, labels, generator, choices, config)
    return _intensity(image, generator, choices, config), labels


def _spatial(image, labels, generator, choices: random.Random, config):
    n, device = image.shape[0], image.device
    images, label_list = [], []
    for i in range(n):
        img, lab = image[i], labels[i]
        axes = [a + 1 for a in range(3) if choices.random() < config.flip]
        if axes:
            img, lab = img.flip(axes), lab.flip(axes)
        turn = choices.random() < config.rotate90
        plane, quarter = [(1, 2), (1, 3), (2, 3)][choices.randrange(3)], choices.randint(1, 3)
        if turn and _cube(img):
            img, lab = torch.rot90(img, quarter, plane), torch.rot90(lab, quarter, plane)
        images.append(img)
        label_list.append(lab)
    image, labels = torch.stack(images), torch.stack(label_list)
    chosen = [choices.random() < config.affine for _ in range(n)]
    if any(chosen):
        chosen_on_device = torch.tensor(chosen, device=device)
        image, labels = _affine(image, labels, chosen_on_device, generator, config)
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


def _intensity(image, generator, choices: random.Random, config):
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
    blurs = [
        choices.uniform(*config.blur_sigma) if choices.random() < config.blur else None
        for _ in range(n)
    ]
    if any(sigma is not None for sigma in blurs):
        image = torch.stack(
            [
                image[i] if sigma is None else _blur(image[i], sigma)
                for i, sigma in enumerate(blurs)
            ]
        )
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
