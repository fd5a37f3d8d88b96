"""Multi-process training with torchrun: process group from the environment, device per rank, helpers.

`torchrun --nproc_per_node N [--nnodes M --node_rank R --rdzv_endpoint HOST:PORT] -m Training train ...` sets
RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; with WORLD_SIZE > 1 the group is initialised from
them: NCCL when CUDA is used, gloo on the CPU. Without them the run is a single process.
"""

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from BrainTumorFusionLib.engine.inference import choose_device

# Long enough for rank 0 to prepare a cache of a few thousand cases while the others wait.
TIMEOUT = datetime.timedelta(hours=2)


@dataclass
class Context:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


def setup(requested_device="auto"):
    """Context of this process; initialises the process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(requested_device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT, **({"device_id": device} if backend == "nccl" else {}))
    return Context(rank=rank, local_rank=local_rank, world_size=world, device=device)


def barrier(context):
    if context.distributed:
        dist.barrier()


def all_sum(values, context):
    """Sum a list of floats over ranks (float64)."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if context.distributed:
        if dist.get_backend() == "nccl":
            tensor = tensor.to(context.device)
        dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def broadcast_object(value, context):
    if not context.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def teardown(context):
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()
