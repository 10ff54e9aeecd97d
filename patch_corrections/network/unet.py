"""The residual 3D U-Net MemBrain-seg trains, in plain PyTorch.

Structure and parameter names follow MONAI's ``DynUNet`` as MemBrain-seg configures it
(kernel 3; strides 1, 2, 2, 2, 2, 2; residual encoder blocks; InstanceNorm with affine;
LeakyReLU 0.01; one output logit; two deep-supervision heads), so MemBrain-seg checkpoints
load without conversion beyond dropping prefixes. MONAI is not needed at run time.

The network sees its input in the axis order of its config: ``xyz`` for MemBrain-seg's
weights and for networks made here (``membrain segment`` feeds ``(x, y, z)``, so the
missing wedge lies along the last axis), ``zyx`` for checkpoints saved before the order was
recorded. ``forward_zyx`` and ``forward_heads_zyx`` take and return ``(batch, channel, z,
y, x)`` tensors, as every array here is ordered, and are the one place where they are
transposed into the network's order and back; ``forward`` and ``forward_heads`` work in
the network's own order, as DynUNet's do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..constants import PRESET_NAMES
from ..errors import InputError

AXIS_ORDERS = ("xyz", "zyx")
"""Spatial axis orders a network may see its input in."""


@dataclass(frozen=True)
class UNetConfig:
    """Shape of the network; saved in every checkpoint.

    Attributes
    ----------
    filters
        Channels per level, top to bottom (the last one is the bottleneck).
    strides
        Downsampling stride entering each level; the first is 1.
    kernel_size
        Convolution kernel edge.
    heads
        Deep-supervision heads, on the levels just below the top.
    axis_order
        The order in which the network sees the spatial axes: ``xyz`` (MemBrain-seg's) or
        ``zyx`` (arrays as stored).
    """

    filters: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)
    strides: tuple[int, ...] = (1, 2, 2, 2, 2, 2)
    kernel_size: int = 3
    in_channels: int = 1
    out_channels: int = 1
    heads: int = 2
    negative_slope: float = 0.01
    axis_order: str = "xyz"

    def __post_init__(self) -> None:
        if self.axis_order not in AXIS_ORDERS:
            raise ValueError(f"axis_order must be one of {AXIS_ORDERS}, got {self.axis_order!r}")
        if len(self.filters) != len(self.strides) or len(self.filters) < 2:
            raise ValueError("filters and strides need one entry per level, at least two")
        if self.strides[0] != 1:
            raise ValueError("the first level is not downsampled (stride 1)")
        if not 0 <= self.heads <= len(self.filters) - 2:
            raise ValueError(f"at most {len(self.filters) - 2} deep-supervision heads")

    @property
    def divisor(self) -> int:
        """Input edges must be multiples of this."""
        product = 1
        for stride in self.strides:
            product *= stride
        return product

    def check_edge(self, edge: int, option: str) -> None:
        """``InputError`` naming ``option`` unless ``edge`` is a multiple of
        :attr:`divisor` and at least two of it (the deepest level needs more than one
        voxel): the rule for segment's windows and retrain's crops alike."""
        if edge % self.divisor:
            raise InputError(
                f"{option} {edge}: must be a multiple of {self.divisor} for this network"
            )
        if edge < 2 * self.divisor:
            raise InputError(
                f"{option} {edge}: at least {2 * self.divisor} for this network (its deepest "
                "level needs more than one voxel)"
            )

    def feature_values(self, voxels: int) -> int:
        """Values of the feature maps, one of each level, for an input of ``voxels``:
        what a pass's memory grows with."""
        total, scale = 0.0, 1
        for width, stride in zip(self.filters, self.strides):
            scale *= stride
            total += width / scale**3
        return int(total * voxels)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> UNetConfig:
        """The config a checkpoint saved; one saved before the axis order was recorded
        was trained on arrays as stored, ``zyx``."""
        values = {"axis_order": "zyx", **values}
        for key in ("filters", "strides"):
            values[key] = tuple(values[key])
        return cls(**values)


PRESETS = dict(
    zip(
        PRESET_NAMES,
        (
            UNetConfig(),
            UNetConfig(filters=(16, 32, 64, 128, 256), strides=(1, 2, 2, 2, 2)),
            UNetConfig(filters=(4, 8, 16, 32), strides=(1, 2, 2, 2)),
        ),
    )
)
"""Widths by name: ``full`` is MemBrain-seg's network (for a GPU); ``tiny`` runs tests on a
CPU."""


class _Wrapped(nn.Module):
    """Holds a layer as ``.conv``: MONAI's ``Convolution`` naming (``conv1.conv.weight``)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.conv = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _conv(channels_in: int, channels_out: int, kernel: int, stride: int) -> _Wrapped:
    padding = (kernel - stride + 1) // 2
    return _Wrapped(nn.Conv3d(channels_in, channels_out, kernel, stride, padding, bias=False))


def _norm(channels: int) -> InstanceNorm:
    return InstanceNorm(channels, affine=True)


class InstanceNorm(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` (same parameters, same results) with a faster path on CUDA.

    PyTorch runs instance norm as a batch norm over ``batch x channels`` "channels", with
    one thread block per volume and a copy into channels-first layout: on a GPU that was
    the costliest part of ``segment`` (about twice the convolutions' time on an H200).
    On CUDA this computes the statistics with ordinary reductions, which keep the
    channels-last layout and the whole GPU busy; see :func:`instance_norm`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda or self.weight is None or self.track_running_stats:
            return super().forward(x)
        return instance_norm(x, self.weight, self.bias, self.eps)


def instance_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Instance norm of ``(batch, channels, *spatial)`` with an affine per channel.

    Mean and variance are accumulated and applied in float32 whatever the input's type
    (bf16 under autocast), as PyTorch's own kernel does, and the result has the input's
    type: ``x * scale + shift`` with ``scale = weight / sqrt(var + eps)`` and ``shift =
    bias - mean * scale``, a single pass over ``x``. Autocast is off inside: on CUDA it
    would cast ``x`` to float32 for the multiply-add and keep that copy for the backward
    pass (twice the memory of ``x``, for every norm in the network).
    """
    with torch.autocast(x.device.type, enabled=False):
        return _instance_norm(x, weight, bias, eps)


def _instance_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    scale, shift = _scale_and_shift(x, weight, bias, eps)
    if torch.is_grad_enabled():  # a result written through out= has no backward
        return torch.addcmul(shift, x, scale).to(x.dtype)
    # Inference: the float32 multiply-add written straight in x's type (bf16 under
    # autocast), one pass over x, where a float32 result would take a second to convert.
    return torch.addcmul(shift, x, scale, out=torch.empty_like(x))


def _scale_and_shift(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The instance norm of ``x`` as ``x * scale + shift``, each ``(batch, channels, 1,
    …)`` in float32 (or wider)."""
    dims = tuple(range(2, x.dim()))
    count = x[0, 0].numel()
    view = (1, -1) + (1,) * len(dims)
    wide = torch.promote_types(x.dtype, torch.float32)
    mean = x.mean(dims, keepdim=True, dtype=wide)
    squares = torch.linalg.vector_norm(x, 2, dims, keepdim=True, dtype=wide)
    variance = (squares.square() / count - mean.square()).clamp_min(0)
    scale = weight.to(wide).view(view) * torch.rsqrt(variance + eps)
    shift = bias.to(wide).view(view) - mean * scale
    return scale, shift


class ResBlock(nn.Module):
    """Two convolutions with a residual connection (1x1x1 projection when shapes change)."""

    def __init__(
        self, channels_in: int, channels_out: int, kernel: int, stride: int, slope: float
    ):
        super().__init__()
        self.conv1 = _conv(channels_in, channels_out, kernel, stride)
        self.conv2 = _conv(channels_out, channels_out, kernel, 1)
        self.norm1 = _norm(channels_out)
        self.norm2 = _norm(channels_out)
        self.act = nn.LeakyReLU(slope, inplace=True)
        self.project = channels_in != channels_out or stride != 1
        if self.project:
            self.conv3 = _conv(channels_in, channels_out, 1, stride)
            self.norm3 = _norm(channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        residual = self.norm3(self.conv3(x)) if self.project else x
        return self.act(out + residual)


class BasicBlock(nn.Module):
    """Two convolutions, each followed by instance norm and LeakyReLU."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, slope: float):
        super().__init__()
        self.conv1 = _conv(channels_in, channels_out, kernel, 1)
        self.conv2 = _conv(channels_out, channels_out, kernel, 1)
        self.norm1 = _norm(channels_out)
        self.norm2 = _norm(channels_out)
        self.act = nn.LeakyReLU(slope, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(out)))


class UpBlock(nn.Module):
    """Transposed convolution up, concatenation with the skip, then a basic block."""

    def __init__(
        self, channels_in: int, channels_out: int, kernel: int, stride: int, slope: float
    ):
        super().__init__()
        self.transp_conv = _Wrapped(
            nn.ConvTranspose3d(channels_in, channels_out, stride, stride, bias=False)
        )
        self.conv_block = BasicBlock(2 * channels_out, channels_out, kernel, slope)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat((self.transp_conv(x), skip), dim=1))


class OutBlock(nn.Module):
    """A 1x1x1 convolution to logits."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv = _Wrapped(nn.Conv3d(channels_in, channels_out, 1, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """Residual 3D U-Net with deep supervision.

    ``forward`` returns the full-resolution logits ``(batch, 1, z, y, x)``;
    ``forward_heads`` also returns each deep-supervision head at its own resolution, for a
    loss against downsampled targets.
    """

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = config = config or UNetConfig()
        k, slope, f, s = config.kernel_size, config.negative_slope, config.filters, config.strides
        self.input_block = ResBlock(config.in_channels, f[0], k, s[0], slope)
        self.downsamples = nn.ModuleList(
            ResBlock(f[i - 1], f[i], k, s[i], slope) for i in range(1, len(f) - 1)
        )
        self.bottleneck = ResBlock(f[-2], f[-1], k, s[-1], slope)
        self.upsamples = nn.ModuleList(
            UpBlock(f[i], f[i - 1], k, s[i], slope) for i in range(len(f) - 1, 0, -1)
        )
        self.output_block = OutBlock(f[0], config.out_channels)
        self.deep_supervision_heads = nn.ModuleList(
            OutBlock(f[i], config.out_channels) for i in range(1, config.heads + 1)
        )
        self.apply(_initialise)

    def _levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Decoder outputs, top (full resolution) first."""
        skips = [self.input_block(x)]
        for block in self.downsamples:
            skips.append(block(skips[-1]))
        out = self.bottleneck(skips[-1])
        levels = []
        for block, skip in zip(self.upsamples, reversed(skips)):
            out = block(out, skip)
            levels.append(out)
        return levels[::-1]

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits at full resolution, then each head's, coarser and coarser."""
        levels = self._levels(x)
        heads = [head(levels[i + 1]) for i, head in enumerate(self.deep_supervision_heads)]
        return [self.output_block(levels[0]), *heads]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_block(self._levels(x)[0])

    def forward_zyx(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` for ``(batch, channel, z, y, x)`` input: logits in the same order."""
        return self._from_network(self(self._to_network(x)))

    def forward_heads_zyx(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``forward_heads`` for ``(batch, channel, z, y, x)`` input, every head in that
        order."""
        return [self._from_network(o) for o in self.forward_heads(self._to_network(x))]

    def _to_network(self, x: torch.Tensor) -> torch.Tensor:
        # One input channel: contiguous is also channels-last, so no layout is lost here.
        return x.transpose(2, 4).contiguous() if self.config.axis_order == "xyz" else x

    def _from_network(self, y: torch.Tensor) -> torch.Tensor:
        return y.transpose(2, 4) if self.config.axis_order == "xyz" else y


def _initialise(module: nn.Module) -> None:
    # Kaiming-normal convolutions and zero biases, as DynUNet initialises them.
    if isinstance(module, nn.Conv3d | nn.ConvTranspose3d):
        nn.init.kaiming_normal_(module.weight, a=0.01)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def upsample_heads(outputs: list[torch.Tensor]) -> torch.Tensor:
    """Stack heads upsampled (nearest) to full size, as DynUNet returns them in training.

    Returns ``(batch, 1 + heads, channel, z, y, x)``.
    """
    size = outputs[0].shape[2:]
    return torch.stack([outputs[0]] + [F.interpolate(o, size) for o in outputs[1:]], dim=1)
