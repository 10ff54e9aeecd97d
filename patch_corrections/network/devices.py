"""Where a run computes and how: the device a user names, the autocast precision used on
it, waiting for its queued work, and bringing tensors back to the CPU for checkpoints."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..io.memory import available_memory


def pick_device(name: str, local_rank: int | None = None) -> torch.device:
    """``auto`` is the first GPU when there is one, else the CPU; ``cpu``, ``cuda`` and
    ``cuda:N`` are checked against what this machine has.

    With ``local_rank`` (one of several processes on this machine, started by torchrun),
    ``auto`` and ``cuda`` are GPU ``local_rank``, and ``cuda:N`` is refused: each process
    takes its own GPU."""
    if local_rank is not None and name in ("auto", "cuda"):
        if not torch.cuda.is_available():
            if name == "cuda":
                raise ValueError("no CUDA device is available")
            return torch.device("cpu")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"process {local_rank} of this machine has no GPU of its own: this machine "
                f"has {torch.cuda.device_count()}; start at most that many per node"
            )
        return torch.device("cuda", local_rank)
    if local_rank is not None and name.startswith("cuda:"):
        raise ValueError(
            "under torchrun each process uses the GPU of its LOCAL_RANK; give --device cuda "
            "(or auto), and CUDA_VISIBLE_DEVICES to choose the GPUs"
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError("expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError("expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


@dataclass
class Precision:
    """Autocast settings: bf16 on CUDA (fp16 with a grad scaler without bf16), fp32 on CPU.

    ``scaler`` is always there, disabled (every call a no-op) unless fp16 needs it, so a
    training step reads the same whatever the precision.
    """

    device: torch.device
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    def __post_init__(self) -> None:
        if self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)

    @classmethod
    def for_device(cls, device: torch.device) -> Precision:
        """The precision a run on ``device`` uses."""
        if device.type != "cuda":
            return cls(device)
        # Native bf16 from Ampere (compute capability 8.0) on; older cards only emulate it.
        if torch.cuda.get_device_capability(device) >= (8, 0):
            return cls(device, torch.bfloat16)
        return cls(device, torch.float16, torch.amp.GradScaler("cuda"))

    def autocast(self):
        """Context manager for forward passes; a no-op at fp32."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)


def free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device``: the GPU's, or the host memory available; ``None`` where
    unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        return available_memory()
    return None


def sync(device: torch.device) -> None:
    """Wait until ``device`` has finished its queued work (CUDA runs asynchronously), so a
    clock read afterwards measures it; nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_cpu(value):
    """A copy of a (nested) optimiser state with every tensor on the CPU, so checkpoints
    from a GPU load on any machine."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_cpu(v) for v in value)
    return value
