"""`train-sae` under torchrun: join the ranks, lock the output once, train, write, leave together.

Kept apart from `sae.commands` so the single-process command stays exactly as
it was; this is the only place a process group is joined for training.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from activations.distributed import (Launch, barrier, destroy_process_group, first_error, init_process_group,
                                     rank_device)
from common.errors import UserError
from sae.settings import TrainSettings


def train_sae_distributed(settings: TrainSettings, launch: Launch,
                          export: Callable[[list[Path]], None]) -> list[Path]:
    """Every rank runs this with the same settings; returns the folders this rank wrote (data mode: rank 0's).

    Only rank 0 takes the output folder's lock (a flock is per process, so a
    second rank would be refused); it holds it until every rank is done, and
    if it cannot get it, every rank stops with one line instead of waiting.
    """
    from common.runstate import check_output_folder, claim_output
    from sae.data import split_cache
    from sae.distributed import resolve_mode
    from sae.train import train_sweep

    mode = resolve_mode(launch, settings.distribute, settings.kind)  # the same verdict on every rank, before joining
    check_output_folder(settings.out)
    device = rank_device(settings.device, launch)
    init_process_group(launch, device)
    try:
        with ExitStack() as held:
            refused: UserError | None = None
            if launch.is_main:
                try:
                    held.enter_context(claim_output(settings.out, None, None, record=None))
                except UserError as err:
                    refused = err
            reason = first_error(launch, str(refused) if refused else "")
            if reason:
                raise refused or UserError(f"--out {settings.out!r} could not be locked by rank 0, so nothing was "
                                           f"trained: {reason}")
            source, held_out = split_cache(settings.cache, settings.hook, settings.eval_fraction,
                                           skip_first=not settings.keep_first_position,
                                           sink_factor=settings.sink_factor)
            folders = train_sweep(source, settings, settings.out, device=device, eval_source=held_out,
                                  launch=launch, distribute=mode)
            if mode == "sweep" or launch.is_main:
                export(folders)
            barrier(launch)  # rank 0 keeps the lock until every rank has written its folders
        return folders if (mode == "sweep" or launch.is_main) else []
    finally:
        destroy_process_group(launch)
