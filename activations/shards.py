"""`cli.py cache` under torchrun: N processes, one shard file each, joined by an HDF5 virtual dataset.

Why this shape: the forward passes are independent per context, so N
processes can share a corpus pass without talking to each other, and each
can keep the single-process crash safety (its own file, its own
`n_contexts_done`) if it writes its own file. Rank r of N takes contexts
r, r+N, r+2N, ... of the same deterministic token stream (`build_contexts`
runs identically in every rank), so the union is exactly the single-process
stream. Rank r writes `OUT.shards/rank{r}-of-{N}.h5`, a normal cache file of
its own contexts. Rank 0 writes OUT itself: the full /tokens (small) and,
for every hook, /acts/<hook> as a virtual dataset whose rows r::N are the
rows of shard r (no copy), with the attributes a single-process cache has.
Readers (`ActivationCache`, so train-sae, explain, evaluate) open OUT as
they open any cache. OUT's `n_contexts_done` stays 0 until every shard is
complete; then rank 0 sets it to `n_contexts`.

Resume: a rerun with the same N resumes every shard from its own counter. An
unfinished run is refused with one line to another N (one process included):
the shards' contexts depend on N. A finished OUT is finished for any N. Every
rank checks its part before anything is written and the ranks exchange their
verdicts
(`activations.distributed.first_error`), so all ranks fail together with the same line instead of
some of them waiting forever for the others.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from activations.batch_writer import write_batches
from activations.cache_layout import (BFLOAT16_ENCODING, STORAGE, CacheResult, cache_attrs, check_existing, chunk_rows,
                                      contexts_done, create_token_file, create_tokens, recorded_settings)
from activations.corpus import build_contexts, resolve_corpus
from activations.distributed import (Launch, barrier, destroy_process_group, first_error, gather_texts,
                                     init_process_group, rank_device)
from common.errors import UserError
from activations.hooks import hook_width, validate_hooks
from activations.models import check_context_length, load_model
from common.runstate import claim_output, replace_atomically, staging_file
from activations.settings import CacheSettings

_SHARD_NAME = re.compile(r"rank(\d+)-of-(\d+)\.h5")
# What a virtual dataset returns where its shard is missing: NaN (bfloat16: a NaN bit pattern), never a plausible 0.
_FILL = {"float16": np.float16("nan"), "float32": np.float32("nan"), "bfloat16": np.uint16(0x7FC0)}


def shard_folder(out: Path) -> Path:
    return out.with_name(out.name + ".shards")


def shard_path(out: Path, rank: int, world_size: int) -> Path:
    """Where rank `rank` of `world_size` writes its contexts (rank::world_size of the stream)."""
    return shard_folder(out) / f"rank{rank}-of-{world_size}.h5"


def other_shards(out: Path, world_size: int) -> list[Path]:
    """Shard files of OUT written by a launch with another number of processes."""
    folder = shard_folder(out)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        match = _SHARD_NAME.fullmatch(path.name)
        if match and int(match.group(2)) != world_size:
            found.append(path)
    return found


def _agree(launch: Launch, error: str) -> None:
    """Raise the first rank's error (the same line) in every rank, or return if no rank has one."""
    first = first_error(launch, error)
    if first:
        raise UserError(first)


def write_cache_distributed(settings: CacheSettings, out: Path, launch: Launch, progress: bool = True) -> CacheResult:
    """This rank's part of a torchrun `cache`; rank 0 also writes and finishes OUT (see the module docstring).

    What depends only on the files and the arguments (the same in every rank) is
    checked before the ranks join, so a refused run costs no process group.
    """
    if settings.pool is not None:
        raise UserError("--pool under torchrun is not supported (a pooled cache is one small vector per document): "
                        "run it as one process, without torchrun")
    resolved = resolve_corpus(settings.corpus, settings.text_column, settings.encoding)
    settings.check_hooks()
    record = settings.record(resolved.describe())
    complete = None if settings.overwrite else _check_launch(out, record, launch.world_size)
    if complete is not None:
        if launch.is_main:
            print(f"{out} is already complete ({complete} contexts); nothing to do.")
        return CacheResult(out, complete, 0, 0.0)
    device = rank_device(settings.device, launch)
    init_process_group(launch, device)
    try:
        with ExitStack() as locks:
            shard = shard_path(out, launch.rank, launch.world_size)
            error, shard_done = "", None
            try:
                if launch.is_main:
                    locks.enter_context(claim_output(out, None, settings.overwrite, folder=False, what="cache"))
                claim = locks.enter_context(claim_output(
                    shard, record, settings.overwrite, folder=False, what="cache shard",
                    read=lambda path: recorded_settings(path, launch.world_size)))
                shard_done = contexts_done(shard)[0] if claim.resumes else None
            except UserError as err:
                error = str(err)
            _agree(launch, error)
            prepared, error = None, ""
            try:  # the model, the hooks and the corpus are checked before --overwrite removes anything
                prepared = _prepare(settings, launch, device, resolved)
            except UserError as err:
                error = str(err)
            _agree(launch, error)
            if settings.overwrite and launch.is_main:
                _remove_old(out, launch.world_size)
            barrier(launch)
            return _run(settings, out, shard, launch, prepared, record, shard_done, progress)
    finally:
        destroy_process_group(launch)


def _check_launch(out: Path, record: dict, world_size: int) -> int | None:
    """OUT's contexts if it is already complete; None if absent or resumable by this launch; else one-line refusal.

    Refused: an unfinished run of another number of processes (its shards, or
    an unfinished OUT begun by one process), an OUT made with other settings.
    A complete OUT is complete whatever N wrote it: there is nothing to redo.
    """
    if check_existing(out, record, world_size) is not None:
        done, total = contexts_done(out)
        if done >= total:
            return total
    stale = other_shards(out, world_size)
    if stale:
        m = int(_SHARD_NAME.fullmatch(stale[0].name).group(2))
        raise UserError(f"{out} is an unfinished cache of {m} processes ({stale[0]} exists), not {world_size}: "
                        f"resume it with torchrun --nproc_per_node {m} (same arguments), or pass --overwrite to "
                        f"start again with {world_size}")
    return None


def _remove_old(out: Path, world_size: int) -> None:
    """--overwrite: OUT and other launches' shards go before any rank writes (this launch's own are replaced)."""
    for path in [out, *other_shards(out, world_size)]:
        if path.exists():
            path.unlink()


@dataclass
class _Prepared:
    """What every rank loads and checks before anything is written or removed."""

    loaded: Any
    device: str
    widths: dict[str, int]
    tokens: np.ndarray
    stats: dict


def _prepare(settings: CacheSettings, launch: Launch, device: str, resolved) -> _Prepared:
    loaded = load_model(settings.model, device=device)
    hook_points = validate_hooks(loaded.model, settings.hooks)
    check_context_length(loaded, settings.context_length)
    widths = {h: hook_width(loaded.model, next(p for p in hook_points if p.name == h)) for h in settings.hooks}
    tokens, stats = build_contexts(resolved.documents(), loaded.tokenizer, settings.context_length,
                                   settings.max_tokens // settings.context_length, fragments=settings.fragments)
    if len(tokens) < launch.world_size:
        raise UserError(f"the corpus gives {len(tokens)} contexts, fewer than the {launch.world_size} processes: use "
                        "fewer processes (--nproc_per_node) or a larger --max-tokens / corpus")
    return _Prepared(loaded, device, widths, tokens, stats)


def _run(settings: CacheSettings, out: Path, shard: Path, launch: Launch, prepared: _Prepared, record: dict,
         shard_done: int | None, progress: bool) -> CacheResult:
    loaded, device, widths, tokens, stats = (prepared.loaded, prepared.device, prepared.widths, prepared.tokens,
                                             prepared.stats)
    n, world = len(tokens), launch.world_size
    mine = np.ascontiguousarray(tokens[launch.rank::world])
    if shard_done is None:
        create_token_file(shard, settings, record, loaded, mine, widths, stats,
                     extra_attrs={"world_size": world, "shard_rank": launch.rank, "shard_of": out.name})
    if launch.is_main and not out.exists():
        _create_main(out, settings, record, loaded, tokens, widths, stats, world)
    barrier(launch)  # OUT exists before any shard counts a context: a killed run always leaves it to check
    local = replace(settings, device=device)  # this rank's GPU under --device cuda
    result = write_batches(shard, local, loaded.model, mine, shard_done or 0, progress and launch.is_main)
    counts = gather_texts(launch, f"{result.tokens_written} {result.seconds!r}")
    written = sum(int(c.split()[0]) for c in counts)
    seconds = max(float(c.split()[1]) for c in counts)  # the slowest rank's forward-and-write loop
    barrier(launch)  # every shard is complete (or its rank failed, and torchrun stops this one too)
    if launch.is_main:
        _finish_main(out, world)
        if progress:
            print(f"joined {world} shards into {out} ({n} contexts; slowest rank's loop {seconds:.1f}s)")
    return CacheResult(out, n, written, seconds)


def _create_main(out: Path, settings: CacheSettings, record: dict, loaded, tokens: np.ndarray,
                 widths: dict[str, int], stats: dict, world: int) -> None:
    """OUT: the whole /tokens, and /acts/<hook> as virtual datasets over the shards (rows r::world = shard r).

    Source files are named relative to OUT's folder (HDF5 resolves them there),
    so OUT and OUT.shards/ can move together. A virtual dataset has no chunks;
    each records the chunk rows a single-process file would have
    (`block_contexts`), so `ActivationCache.iter_batches` draws the same blocks.
    """
    n, ctx = tokens.shape
    storage = STORAGE[settings.dtype][0]
    sources = [os.path.relpath(shard_path(out, r, world), out.parent) for r in range(world)]
    with staging_file(out) as partial:
        with h5py.File(partial, "w") as f:
            create_tokens(f, n, ctx)[:] = tokens
            acts = f.create_group("acts")
            for name, d in widths.items():
                ds = _virtual_dataset(acts, name, (n, ctx, d), storage, sources, _FILL[settings.dtype])
                ds.attrs["block_contexts"] = chunk_rows(n, ctx * d * np.dtype(storage).itemsize)
                if settings.dtype == "bfloat16":
                    ds.attrs["encoding"] = BFLOAT16_ENCODING
            f.attrs.update({**cache_attrs(settings, record, loaded, n, ctx, widths, stats),
                            "world_size": world, "shards": json.dumps(sources)})
        replace_atomically(partial, out)


def _virtual_dataset(group: h5py.Group, name: str, shape: tuple[int, int, int], dtype, sources: list[str],
                     fill) -> h5py.Dataset:
    """/acts/<name> whose rows r::len(sources) are the rows of `sources[r]`'s dataset of the same path.

    Built with the low-level API rather than `h5py.VirtualLayout` so that, as for
    every dataset this tool writes, no modification times are stored: the same
    run gives the same bytes, and a resumed run the bytes of an uninterrupted one.
    """
    n, world = shape[0], len(sources)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_obj_track_times(False)
    dcpl.set_fill_value(np.array([fill], dtype=dtype))
    virtual = h5py.h5s.create_simple(shape)
    for r, source in enumerate(sources):
        rows = len(range(r, n, world))
        virtual.select_hyperslab((r, 0, 0), (rows, 1, 1), stride=(world, 1, 1), block=(1, *shape[1:]))
        source_space = h5py.h5s.create_simple((rows, *shape[1:]))
        dcpl.set_virtual(virtual, source.encode(), f"{group.name}/{name}".encode(), source_space)
    dsid = h5py.h5d.create(group.id, name.encode(), h5py.h5t.py_create(np.dtype(dtype), logical=1), virtual, dcpl=dcpl)
    return h5py.Dataset(dsid)


def _finish_main(out: Path, world: int) -> None:
    """Count OUT's contexts as done, once every shard says it is complete."""
    for r in range(world):
        path = shard_path(out, r, world)
        with h5py.File(path, "r") as f:
            done, total = int(f.attrs["n_contexts_done"]), int(f.attrs["n_contexts"])
        if done < total:
            raise UserError(f"{path} holds {done} of {total} contexts after every rank finished: rerun the same "
                            "torchrun command to resume it")
    with h5py.File(out, "r+") as f:
        f.attrs["n_contexts_done"] = int(f.attrs["n_contexts"])
        f.flush()
