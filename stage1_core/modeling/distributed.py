"""Several processes for one training (DDP), launched from inside the caller's process.

Training runs inside a pipeline step: in the step's own process (ZenML's local orchestrator) or in one pod per
step (Kubernetes). Lightning's default launcher for ``strategy="ddp"`` starts its workers by running
``sys.argv`` again, which here is the whole pipeline command: every worker would start the pipeline over. So
several processes are always started with the spawn launcher (``ddp_spawn``, PyTorch's ``multiprocessing``
start method ``spawn``): the workers are fresh interpreters that receive the model and data by pickling, run
the training, and rank 0 sends its results back to the caller, which alone goes on (calibration, export,
tracking, registry: written once). ``fork`` would start faster on a CPU, but a forked child cannot use CUDA
once the parent initialised it, and forking a process that runs threads (ZenML, MLflow, OpenMP) is unsafe.

On a CPU the processes talk over gloo, on CUDA over NCCL (Lightning picks the backend from the accelerator).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from pydantic import Field

from stage1_core.common.config import StrictConfig

SPAWN_STRATEGY = "ddp_spawn"


class DeviceConfig(StrictConfig):
    """Where a training runs: the accelerator, the number of processes (one per device) and how they share work.

    ``devices`` is a number, not Lightning's ``"auto"``: it is also the GPU count the training step's pod asks
    the cluster for (``stacks.remote``), so the two cannot disagree. Without CUDA, ``devices: 2`` runs two CPU
    processes (gloo); the default is one process.
    """

    accelerator: str = Field("auto", description="Lightning accelerator: auto (CUDA when present), cpu, gpu")
    devices: int = Field(
        1, ge=1, description="processes, one per device: GPUs on a CUDA machine (and the pod's GPU request), else CPU"
    )
    strategy: Literal["auto", "ddp", "ddp_spawn"] = Field(
        "auto",
        description="auto or ddp (several processes: data-parallel, gradients all-reduced); always launched as "
        "ddp_spawn from inside the step (see stage1_core.modeling.distributed)",
    )

    def launch_strategy(self) -> str:
        """Lightning's strategy name: ``auto`` for one process, else the spawn launcher (see the module doc)."""
        return "auto" if self.devices == 1 else SPAWN_STRATEGY


def is_distributed() -> bool:
    """A process group is up: this process is one rank of several."""
    return dist.is_available() and dist.is_initialized()


def all_reduce(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """``tensor`` reduced over the ranks in place (a no-op in one process), returned for chaining."""
    if is_distributed():
        dist.all_reduce(tensor, op=op)
    return tensor
