"""The process group of a run: one process, or several under ``accelerate launch`` / ``torchrun``.

On a machine without CUDA, Accelerate forms a multi-process (gloo) group only when asked for the CPU explicitly,
so every part of lmdistill gets its state here. Launch several CPU processes with
``accelerate launch --multi_gpu --num_processes N -m lmdistill ...`` (Accelerate's torchrun launcher; with ``--cpu``
it would need MPI) or ``torchrun --nproc_per_node N -m lmdistill ...``.
"""

from __future__ import annotations

import torch
from accelerate import PartialState

__all__ = ["default_device", "on_cpu", "process_state"]


def on_cpu() -> bool:
    """True when there is no CUDA device, so processes talk over gloo on the CPU."""
    return not torch.cuda.is_available()


def default_device() -> torch.device:
    """Where a stage puts its models outside the training loop: the CUDA device when there is one, else the CPU."""
    return torch.device("cpu" if on_cpu() else "cuda")


def process_state() -> PartialState:
    """Accelerate's process-wide state (rank, world size, barriers), created with the CPU flag when needed."""
    return PartialState(cpu=on_cpu())
