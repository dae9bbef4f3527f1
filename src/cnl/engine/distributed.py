"""torchrun support: one process per device, gloo on CPU, NCCL on GPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.rendezvous import rendezvous
from torch.utils.data import Sampler

from cnl.errors import InvalidValue


@dataclass(frozen=True)
class Context:
    """This process's rank, the number of processes and its device."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False  # joined the process group itself, so it leaves it at teardown

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def world_size() -> int:
    """The processes a run started here takes part with: the caller's group, torchrun's, or 1."""
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 of the caller's or torchrun's group, or a process on its own: the one that prints."""
    return (dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))) == 0


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise InvalidValue("device 'cuda' was asked for but no CUDA GPU is available")
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise InvalidValue(f"unknown device {name!r}; valid devices: auto, cpu, cuda")
    return torch.device("cpu")


def setup(device: str = "auto") -> Context:
    """Join the process group when started by torchrun (WORLD_SIZE > 1), else run alone; in a
    process group the caller already made, take part in it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = pick_device(device, local_rank)
    if dist.is_initialized():  # a caller's group: use it, leave it as found
        return Context(dist.get_rank(), dist.get_world_size(), chosen)
    if world_size > 1:
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if attempt is None:
            dist.init_process_group(backend)
        else:
            # torchrun keeps one store for every restart of a group, and the process group's
            # keys do not name the attempt: a restarted process could read the address of the
            # one it replaced and wait on it. One prefix per attempt keeps the rounds apart.
            store, rank, world_size = next(rendezvous("env://"))
            store = dist.PrefixStore(f"cnl/attempt_{attempt}", store)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world_size)
    return Context(rank, world_size, chosen, owns_group=world_size > 1)


def teardown(ctx: Context) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def restarted() -> bool:
    """Whether torchrun restarted this process's group after a failure (``--max-restarts``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics).

    DDP broadcasts them before each training forward, after which each process updates
    them from its own batch: without this, each rank would evaluate its own statistics.
    """
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def gather_objects(value: object) -> list[object]:
    """``value`` of every process, in rank order."""
    if not dist.is_initialized():
        return [value]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def replicas_identical(model: torch.nn.Module) -> bool:
    """Whether every process holds the same parameters and buffers (per-tensor checksums)."""
    if not dist.is_initialized():
        return True
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    with torch.no_grad():
        local = torch.stack([t.detach().double().sum() for t in model.state_dict().values()]).to(device)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return all(torch.equal(g, local) for g in gathered)


class ShardSampler(Sampler[int]):
    """Every sample exactly once across processes: rank r takes r, r + W, r + 2W, ...

    Unlike DistributedSampler it never pads, so sums over the shards are exact.
    """

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
