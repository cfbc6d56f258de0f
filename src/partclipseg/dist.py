"""Process-group helpers for ``torchrun`` (training, evaluation, sharded segmentation) and the
default device: the one place that decides ``cuda[:local_rank]`` or ``cpu``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class DistInfo:
    """Rank of this process, number of processes and rank on this machine (torchrun's variables)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Rank information from the torchrun environment variables (single process when unset)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(name, option: str = "--device") -> str:
    """A device (a name, a ``torch.device`` or a CUDA index) -> a device string torch accepts and that
    exists here, else a one-line ``PartCLIPSegError`` naming ``option`` (``"--device"`` on the command line,
    ``"device="`` in the API). ``None``: CUDA when available, else the CPU."""
    import torch

    from .errors import PartCLIPSegError

    if isinstance(name, torch.device):
        name = str(name)
    elif isinstance(name, int) and not isinstance(name, bool):  # torch's shorthand for a CUDA index
        name = f"cuda:{name}" if name >= 0 else str(name)
    elif name is not None and not isinstance(name, str):
        raise PartCLIPSegError(f"{option.rstrip('=')} must be a device name (cpu, cuda, cuda:1, mps, ...) or a "
                               f"torch.device, got {type(name).__name__}")

    def given(value: str) -> str:  # "--device cuda" / "device='cuda'"
        return f"{option} {value}" if option.startswith("--") else f"{option}{value!r}"

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise PartCLIPSegError(f"{given(shown)} is not a device (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PartCLIPSegError(f"{given(name)}: CUDA is not available here (no NVIDIA GPU or a CPU-only "
                                   f"PyTorch); use {given('cpu')}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PartCLIPSegError(f"{given(name)}: there are {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise PartCLIPSegError(f"{given(name)}: MPS is not available here; use {given('cpu')}")
    elif device.type != "cpu":
        raise PartCLIPSegError(f"{given(name)}: only cpu, cuda and mps devices are supported")
    return str(device)


def default_device(local_rank: int | None = None) -> str:
    """``"cuda"`` (``"cuda:<local_rank>"`` when given) if CUDA is available, else ``"cpu"``."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return "cuda" if local_rank is None else f"cuda:{local_rank}"


def init_distributed(info: DistInfo, device: str) -> None:
    """Join the process group (NCCL on CUDA, gloo on CPU) when running under torchrun."""
    import torch.distributed as dist

    if info.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")


def leave_distributed() -> None:
    """Leave the process group before the process exits: gloo's threads still running at interpreter exit
    end the process with ``terminate called without an active exception`` (SIGABRT), now and then."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op in a single process)."""
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()
