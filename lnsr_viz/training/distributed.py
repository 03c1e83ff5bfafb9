"""Multi-process training helpers: process-group set-up from the launcher's environment, batch sharding, reductions.

:class:`~lnsr_viz.training.loop.FineTuner` uses these so that the *same script* runs on one process or on several::

    python train.py                                               # one process
    torchrun --nproc_per_node 2 train.py                          # two processes (gloo on CPU, NCCL on GPUs)
    accelerate launch --multi_gpu --num_processes 2 train.py      # the same through Accelerate (GPUs)

Both launchers set ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them (``env://``) and creates the default process group if none exists yet (an
existing one, e.g. created by Accelerate or by the user, is used as it is). Accelerate's multi-CPU mode launches
through ``mpirun`` without these variables; on CPUs use torchrun.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DistInfo", "init_distributed", "dist_info", "shard_indices", "all_reduce_mean", "cleanup_distributed"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def dist_info() -> DistInfo:
    """The current process group's rank and size (``DistInfo()`` when there is none)."""
    if not _initialized():
        return DistInfo()
    import torch.distributed as dist

    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def init_distributed(backend: str | None = None) -> DistInfo:
    """Create the default process group from the launcher's environment when ``WORLD_SIZE > 1``.

    Parameters
    ----------
    backend : str, optional
        ``'gloo'`` or ``'nccl'``; default NCCL when CUDA is available, gloo otherwise.

    Returns
    -------
    DistInfo
        ``DistInfo()`` (rank 0 of 1) when not launched with several processes.
    """
    if _initialized():
        return dist_info()
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return DistInfo()
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed support.")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return dist_info()


def cleanup_distributed() -> None:
    """Destroy the default process group if there is one (call once at the end of a multi-process script)."""
    if _initialized():
        import torch.distributed as dist

        dist.destroy_process_group()


def shard_indices(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This process's share of one global batch, in the manner of ``DistributedSampler``.

    Process ``r`` takes positions ``r, r + W, r + 2W, ...`` of the global batch, so the shards are disjoint, their
    union is the global batch and their sizes differ by at most one. A global batch with fewer than ``W`` examples
    (a small last batch) is padded by repeating its examples from the start, as ``DistributedSampler`` pads, so that
    every process has something to run (DistributedDataParallel needs every process in every step).

    Examples
    --------
    >>> shard_indices(np.arange(5), 1, 2)
    array([1, 3])
    """
    indices = np.asarray(indices)
    if world_size <= 1:
        return indices
    if len(indices) < world_size:
        indices = np.resize(indices, world_size)
    return indices[rank::world_size]


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over processes (a copy; ``values`` itself when not distributed)."""
    if not _initialized():
        return values
    import torch.distributed as dist

    out = values.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()
