"""Where this process stands in a `torchrun` launch: rank, world size, and the process group.

Why one small module: caching (activations/) and training (sae/) both run
under `torchrun --nproc_per_node N cli.py ...` with the same flags as a
single process, so both read the launch the same way. Nothing here starts
processes or schedules work: torchrun does that, torch.distributed joins the
ranks (gloo on CPU, NCCL on CUDA). Outside torchrun (no WORLD_SIZE, or 1)
every function is a no-op, so single-process behaviour stays exactly as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch


# How long a collective may wait. Ranks legitimately wait for each other for a whole stage: a rank with a
# lighter --distribute sweep share, or ranks 1..N-1 while rank 0 evaluates and writes, sit in the final barrier
# for as long as the slowest rank trains (torch's default, 30 min for gloo and 10 for NCCL, would kill a long
# sweep there). A rank that dies does not leave the others waiting this long: torchrun stops every worker of a
# launch as soon as one exits with an error.
GROUP_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class Launch:
    """This process's place in the launch; `world_size == 1` is a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_from_env() -> Launch:
    """The launch torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK (a single process without them)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Launch()
    return Launch(rank=int(os.environ["RANK"]), world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init_process_group(launch: Launch, device: str = "cpu") -> None:
    """Join the ranks (gloo on CPU, NCCL on CUDA) once per process; a single process does nothing."""
    import torch.distributed as dist

    if not launch.distributed or dist.is_initialized():
        return
    # torch._dynamo (imported by torch.optim, DDP and AOTAutograd on first use) keeps a reference to the process
    # group when it is first imported after the group exists (torch 2.13), so destroy_process_group no longer
    # joins gloo's worker threads; one of them still freeing the last collective's tensors while Python exits
    # aborts the process ("terminate called without an active exception", ~1 run in 50 on 2 busy cores).
    # Imported first, it holds nothing, and leaving the group ends its threads.
    import torch._dynamo  # noqa: F401
    backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend, rank=launch.rank, world_size=launch.world_size, timeout=GROUP_TIMEOUT)


def barrier(launch: Launch) -> None:
    """Wait for every rank (no-op for a single process)."""
    import torch.distributed as dist

    if launch.distributed and dist.is_initialized():
        dist.barrier()


def destroy_process_group(launch: Launch) -> None:
    import torch.distributed as dist

    if launch.distributed and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: str, launch: Launch) -> str:
    """`--device cuda` under torchrun means each rank's own GPU (cuda:LOCAL_RANK); one line if it has none."""
    if device != "cuda" or not launch.distributed:
        return device
    from activations.devices import check_device
    from common.errors import UserError

    try:
        check_device(f"cuda:{launch.local_rank}")
    except UserError as err:
        raise UserError(f"under torchrun --device cuda gives each process the GPU of its LOCAL_RANK, and local rank "
                        f"{launch.local_rank} has none ({err}): use --nproc_per_node up to the number of GPUs") from err
    torch.cuda.set_device(launch.local_rank)
    return f"cuda:{launch.local_rank}"


def gather_texts(launch: Launch, text: str) -> list[str]:
    """Every rank's `text`, in rank order, on every rank (a collective: all ranks must call it).

    Sent as UTF-8 bytes in tensors, so nothing is pickled.
    """
    import torch.distributed as dist

    if not launch.distributed:
        return [text]
    device = f"cuda:{launch.local_rank}" if dist.get_backend() == "nccl" else "cpu"
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8, device=device)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(launch.world_size)]
    dist.all_gather(sizes, size)
    longest = max(1, max(int(s) for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: data.numel()] = data
    received = [torch.zeros_like(padded) for _ in range(launch.world_size)]
    dist.all_gather(received, padded)
    return [bytes(r[: int(s)].cpu().tolist()).decode("utf-8") for r, s in zip(received, sizes)]


def first_error(launch: Launch, error: str) -> str:
    """The first rank's error text ("" if no rank has one), on every rank: a collective, all ranks must call it.

    So that every rank stops together with a line, instead of some of them waiting forever for the others.
    """
    return next((e for e in gather_texts(launch, error) if e), "")

