"""Several processes under torchrun: PyTorch's own torch.distributed, nothing home-made.

``filterlens train`` and ``filterlens analyze`` run unchanged under
``torchrun --nproc-per-node N`` (and multi-node torchrun). torchrun sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`setup` reads them and joins the process group
(nccl when the processes use CUDA GPUs, gloo on CPU). Then:

* training wraps the model in ``DistributedDataParallel``; every rank loads a shard of
  each global mini-batch (``batch_size / N`` samples; the shards of a step together are
  exactly the single-process batch), so the global batch, and with it the checkpoint,
  do not depend on N: a run can be resumed with another N;
* the probes: every rank captures its shard of the data; the probes' gradients are
  averaged over the ranks before each step (one all-reduce of one flat buffer, what DDP
  does for a module), the per-label sums and counts, the correct counts and the votes are
  summed over the ranks;
* rank 0 alone writes files and prints; a write from another rank is a bug and raises.

Every collective goes through this module. nccl takes CUDA tensors only, so
:func:`all_reduce_` and :func:`broadcast_` move a tensor that lives elsewhere (counts and
votes kept on the host) to the group's device (:func:`collective_device`) and back.

A single process (no torchrun) never touches torch.distributed.
"""
from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Sequence

from .errors import FilterlensError

if TYPE_CHECKING:  # torch is imported only where needed: a cached `filterlens run` never loads it
    import torch


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 without torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise FilterlensError(f"WORLD_SIZE='{os.environ['WORLD_SIZE']}' is not a whole number") from None


def _dist():
    """torch.distributed if this process already joined a group (torch already imported), else None."""
    if "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def active() -> bool:
    """True inside an initialised process group of more than one process."""
    d = _dist()
    return d is not None and d.get_world_size() > 1


def rank() -> int:
    """This process' rank in the process group (0 outside one)."""
    d = _dist()
    return d.get_rank() if d is not None else 0


def world_size() -> int:
    """The number of processes in the group (1 outside one)."""
    d = _dist()
    return d.get_world_size() if d is not None else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints."""
    return rank() == 0


def local_rank() -> int:
    """torchrun's ``LOCAL_RANK``: this process' GPU index on its machine (0 when unset)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def setup(device: str = "auto") -> torch.device | None:
    """Join torchrun's process group when WORLD_SIZE > 1 (idempotent); returns this rank's device, or None.

    ``device``: auto/cuda picks ``cuda:LOCAL_RANK`` (nccl) when GPUs are present, else the CPU (gloo).
    """
    if env_world_size() <= 1:
        return None
    import torch
    import torch.distributed as dist

    if not dist.is_available():  # pragma: no cover - every official build has it
        raise FilterlensError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    use_cuda = device != "cpu" and torch.cuda.is_available()  # auto, cuda or cuda:N (each rank: LOCAL_RANK)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FilterlensError(f"device '{device}' asked for but no CUDA GPU is available; use --device cpu")
    dev = torch.device("cuda", local_rank()) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get("FILTERLENS_DIST_TIMEOUT", "1800")))
        if use_cuda:  # device_id: nccl binds this rank's communicator to its GPU at once
            dist.init_process_group("nccl", timeout=timeout, device_id=dev)
        else:
            dist.init_process_group("gloo", timeout=timeout)
    return dev


def collective_device() -> torch.device:
    """Where the process group's collectives take their tensors: this rank's GPU under nccl, else the CPU."""
    import torch

    d = _dist()
    if d is not None and d.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def cleanup() -> None:
    """Leave the process group; every rank first waits for the others (gloo aborts a process whose
    peers are still talking to it when its group is destroyed)."""
    d = _dist()
    if d is not None:
        import gc

        gc.collect()  # a DistributedDataParallel left in a reference cycle must go while its group exists
        try:
            d.barrier()
        finally:
            d.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (a no-op outside a process group of more than one process)."""
    if active():
        import torch.distributed as dist

        dist.barrier()


def _on_collective_device(t: torch.Tensor, op) -> torch.Tensor:
    """Run ``op`` on ``t`` where the backend takes it (a copy there and back when ``t`` lives elsewhere)."""
    dev = collective_device()
    buf = t if t.device == dev else t.to(dev)
    op(buf)
    if buf is not t:
        t.copy_(buf)
    return t


def all_reduce_(t: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Sum (or average) ``t`` over the ranks in place; nothing to do in a single process."""
    if active():
        import torch.distributed as dist

        def op(buf):
            dist.all_reduce(buf)
            if average:
                buf.div_(dist.get_world_size())

        _on_collective_device(t, op)
    return t


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s ``t`` on every rank, in place."""
    if active():
        import torch.distributed as dist

        _on_collective_device(t, lambda buf: dist.broadcast(buf, src))
    return t


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank: DDP syncs them before each
    training forward, and each rank then updates its own copy; evaluation must see rank 0's."""
    for b in module.buffers():
        broadcast_(b, 0)


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Sums of plain numbers over the ranks (float64)."""
    if not active():
        return list(values)
    import torch

    t = torch.tensor(values, dtype=torch.float64, device=collective_device())
    all_reduce_(t)
    return t.tolist()


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """The ranks' tensors (any first-dimension sizes) concatenated in rank order, on every rank."""
    if not active():
        return t
    import torch
    import torch.distributed as dist

    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, t.cpu())
    return torch.cat(parts)


def shard_size(n: int, pad: bool, rank_: int | None = None, world: int | None = None) -> int:
    """How many of ``n`` samples one rank sees: ceil(n / N) when padded (DistributedSampler), else its share."""
    r, w = (rank() if rank_ is None else rank_), (world_size() if world is None else world)
    if w <= 1:
        return n
    return -(-n // w) if pad else len(range(r, n, w))


def per_rank_batch(batch_size: int, what: str) -> int:
    """``batch_size`` split over the ranks; it must divide evenly so the global batch is the same for any N."""
    w = world_size()
    if batch_size % w:
        raise FilterlensError(f"{what} = {batch_size} does not divide over {w} processes; use a multiple of {w}")
    return batch_size // w


def check_write(path) -> None:
    """Only rank 0 writes: a write from any other rank is a bug, stopped here before it lands.

    With ``FILTERLENS_WRITE_LOG=FILE`` every write is also recorded as a line ``RANK PATH``
    appended to FILE (to see which process wrote what; the tests use it).
    """
    log = os.environ.get("FILTERLENS_WRITE_LOG")
    if log:
        with open(log, "a") as fh:  # one short append per line: lines of several processes do not mix
            fh.write(f"{rank()} {path}\n")
    if active() and rank() != 0:
        raise RuntimeError(f"rank {rank()} tried to write {path}; only rank 0 writes files")
