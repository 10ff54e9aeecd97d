"""Training on several processes at once: torchrun's ranks, their process group, and the
few collective operations a training run needs.

``torchrun --nproc-per-node N -m patch_corrections retrain …`` starts N processes and tells
each one its place through the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, and
``MASTER_ADDR`` / ``MASTER_PORT`` for the rendezvous). Without those variables a run is one
process, exactly as before. The ranks talk over NCCL on GPUs (each on ``cuda:LOCAL_RANK``)
and over gloo on CPUs; a small gloo group on the host carries what the host decides
(stopping on Ctrl-C, validation results), so it never waits for a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

ENVIRONMENT = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the processes of one run.

    Attributes
    ----------
    rank
        0 … ``size - 1``; rank 0 alone writes files and reports progress.
    size
        How many processes train together (torchrun's world size); 1 without torchrun.
    local
        The rank among the processes of this machine: the GPU it computes on.
    """

    rank: int = 0
    size: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes checkpoints, metrics and curves."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Ranks:
        """The ranks torchrun gave this process; one process of one without torchrun.

        ``ValueError`` names a variable that is set but not a valid number."""
        if "WORLD_SIZE" not in environ:
            return cls()
        values = {}
        for name in ENVIRONMENT:
            try:
                values[name] = int(environ.get(name, "0"))
            except ValueError:
                raise ValueError(f"{name}={environ[name]!r} is not a number") from None
        size, rank, local = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
        if size < 1 or not 0 <= rank < size or local < 0:
            raise ValueError(f"RANK={rank}, LOCAL_RANK={local} do not fit WORLD_SIZE={size}")
        return cls(rank, size, local)

    def share(self, items: list) -> list:
        """This rank's items of ``items``: every ``size``-th, from the ``rank``-th on."""
        return items[self.rank :: self.size]


SINGLE = Ranks()
_control = None  # the host-side (gloo) group of a joined run; None: the default group


def current() -> Ranks:
    """The ranks of the process group this process has joined; :data:`SINGLE` if none."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return SINGLE
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return Ranks(torch.distributed.get_rank(), torch.distributed.get_world_size(), local)


def join(ranks: Ranks, device: torch.device) -> bool:
    """Join the process group of a torchrun run that computes on ``device`` (NCCL on
    CUDA, gloo on the CPU), unless this process has joined one already.

    Returns whether it joined here (and so should :func:`leave` at the end)."""
    global _control
    if not ranks.distributed or torch.distributed.is_initialized():
        return False
    if not torch.distributed.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl", device_id=device)
        _control = torch.distributed.new_group(backend="gloo")
    else:
        torch.distributed.init_process_group("gloo")
        _control = None
    return True


def leave() -> None:
    """Leave the process group :func:`join` joined."""
    global _control
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _control = None


def barrier(ranks: Ranks) -> None:
    """Wait for every rank (on the host); nothing to wait for in one process."""
    if ranks.distributed:
        torch.distributed.barrier(group=_control)


def any_rank(flag: bool, ranks: Ranks) -> bool:
    """Whether ``flag`` holds on any rank: so that all stop at the same step."""
    if not ranks.distributed:
        return flag
    value = torch.tensor([int(flag)])
    torch.distributed.all_reduce(value, torch.distributed.ReduceOp.MAX, group=_control)
    return bool(value.item())


def gather(values: list, ranks: Ranks) -> list:
    """Every rank's ``values`` (each rank's :meth:`Ranks.share` of one list) put back in
    the order of that list, on every rank."""
    if not ranks.distributed:
        return values
    shares: list = [None] * ranks.size
    torch.distributed.all_gather_object(shares, values, group=_control)
    merged = [None] * sum(len(s) for s in shares)
    for rank, share in enumerate(shares):
        merged[rank :: ranks.size] = share
    return merged


def summed(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The sum of ``values`` over the ranks, on the device that holds them (no gradient
    flows through it)."""
    if not ranks.distributed:
        return values
    values = values.detach().clone()
    torch.distributed.all_reduce(values)
    return values


def average(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The mean of ``values`` over the ranks (on the device that holds them)."""
    if not ranks.distributed:
        return values
    values = values.clone()
    torch.distributed.all_reduce(values)
    return values / ranks.size


class _Heads(nn.Module):
    """A network's ``forward_heads_zyx`` as ``forward``: what DistributedDataParallel
    wraps, since it synchronises gradients only through ``forward``."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.network.forward_heads_zyx(x)


def replicate(network: nn.Module, device: torch.device) -> nn.Module:
    """``network.forward_heads_zyx`` wrapped for a torchrun run: rank 0's weights are
    copied to every rank here, and each backward pass leaves every rank with the gradients
    averaged over all ranks. The weights stay ``network``'s own, so its ``state_dict`` is
    what checkpoints hold, whatever the number of processes."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        _Heads(network), device_ids=[device.index] if device.type == "cuda" else None
    )
