"""Data-parallel distillation over processes on one machine (or several), with the gloo backend.

`torchrun --nproc_per_node 2 -m edgekit.cli compress --recipe distill:...` starts two processes; each sees
`WORLD_SIZE`/`RANK` and joins a gloo process group here. Every rank builds the same student, trains on
every `world`-th batch of the same seeded epoch order, and DistributedDataParallel averages the gradients,
so the update equals one step on the union of their batches. Rank 0 alone writes checkpoints and outputs.
On a single process nothing here does anything.
"""

from __future__ import annotations

import os

import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size), joining the gloo group when launched by torchrun; (0, 1) otherwise."""
    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return 0, 1
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    return world()[0] == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
