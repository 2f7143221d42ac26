"""Write activations of many hooks, in one corpus pass, to one HDF5 file; resumable.

Crash safety: every dataset is created at its final size with all chunks
allocated up front (ALLOC_TIME_EARLY), so during the run only raw data and one
integer attribute change on disk, never the file's index structures. Each
batch is written, flushed, and only then counted in `n_contexts_done`. A
kill -9 at any moment leaves a readable file whose counted contexts are
complete; rerunning redoes the partial batch with the same batch boundaries
and so ends with the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from activations.corpus import build_contexts, resolve_corpus
from activations.errors import UserError
from activations.hooks import hook_width, run_with_cache, validate_hooks
from activations.devices import check_device
from activations.distributed import launch_from_env
from activations.models import check_context_length, load_model
from activations.reader import unreadable_cache
from activations.runstate import check_output_file, differing_keys, replace_atomically, output_lock
from activations.settings import CacheSettings, record_json

FORMAT_VERSION = 1
_TARGET_CHUNK_BYTES = 1 << 20
# How each --dtype is held in the file. HDF5 has no bfloat16 type, so bfloat16 values are stored exactly as
# their 16-bit patterns in uint16 datasets (the dataset's `encoding` attribute says so); `ActivationCache`
# turns them back into float32 without loss (a bfloat16 is the upper half of a float32).
STORAGE = {"float16": (np.float16, torch.float16), "float32": (np.float32, torch.float32),
           "bfloat16": (np.uint16, torch.bfloat16)}
BFLOAT16_ENCODING = "bfloat16-bits"
_RANGE = {"float16": "65504", "bfloat16": "3.4e38", "float32": "3.4e38"}


@dataclass(frozen=True)
class CacheResult:
    path: Path
    n_contexts: int
    tokens_written: int  # by this call (0 if the file was already complete)
    seconds: float  # the forward-and-write loop only, not model loading

    def __fspath__(self) -> str:  # usable wherever a path is expected
        return str(self.path)


def _early_alloc_dcpl() -> h5py.h5p.PropDCID:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


def _check_existing(out: Path, record: dict, world_size: int = 1) -> int | None:
    """Contexts already done in a file made with the same settings; None if no file.

    An unfinished file begun by another number of processes (`world_size`, torchrun) is refused.
    """
    if not out.exists():
        return None
    fix = "choose another --out or pass --overwrite"
    try:
        f = h5py.File(out, "r")
    except OSError as err:
        raise UserError(unreadable_cache(out, err, fix)) from err
    try:
        with f:
            stored = json.loads(f.attrs["settings"])
            done = int(f.attrs["n_contexts_done"])
            total = int(f.attrs.get("n_contexts", done))
            written_by = int(f.attrs.get("world_size", 1))
        if not isinstance(stored, dict):
            raise TypeError("settings is not a JSON object")
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise UserError(f"{out} exists but is not an activation cache this tool wrote: {fix}") from err
    if written_by != world_size and done < total:  # which contexts go where depends on the number of processes
        how = ("one process (without torchrun)" if written_by == 1 else
               f"`torchrun --nproc_per_node {written_by} cli.py cache ...`")
        raise UserError(f"{out} is an unfinished cache of {written_by} process(es), not {world_size}: resume it with "
                        f"{how} (same arguments), or pass --overwrite")
    diffs = [f"{k}: file has {stored.get(k)!r}, command asks {record.get(k)!r}" for k in differing_keys(stored, record)]
    if diffs:
        raise UserError(
            f"{out} was made with other settings ({'; '.join(diffs)}): rerun with the same settings to resume, "
            "or pass --overwrite, or choose another --out"
        )
    return done


def _chunk_rows(n: int, per_context_bytes: int) -> int:
    """Contexts per HDF5 chunk: about 1 MiB, at least one context, at most all of them."""
    return max(1, min(n, _TARGET_CHUNK_BYTES // per_context_bytes))


def _create_tokens(f: h5py.File, n: int, ctx: int) -> h5py.Dataset:
    return f.create_dataset("tokens", shape=(n, ctx), maxshape=(None, ctx), dtype=np.int32,
                            chunks=(_chunk_rows(n, ctx * np.dtype(np.int32).itemsize), ctx), dcpl=_early_alloc_dcpl())


def _create_file(out: Path, settings: CacheSettings, record: dict, loaded, tokens: np.ndarray, widths: dict[str, int],
                 stats: dict, extra_attrs: dict | None = None) -> None:
    """The empty cache at its final size; `extra_attrs` (a torchrun shard's place) go after the usual ones."""
    n, ctx = tokens.shape
    storage = STORAGE[settings.dtype][0]
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build the empty file under a temporary name and rename it into place, so
    # a kill during creation never leaves a file that a rerun cannot resume.
    partial = out.with_name(out.name + ".creating")
    with h5py.File(partial, "w") as f:
        _create_tokens(f, n, ctx)
        acts = f.create_group("acts")
        for name, d in widths.items():
            rows = _chunk_rows(n, ctx * d * np.dtype(storage).itemsize)
            ds = acts.create_dataset(name, shape=(n, ctx, d), maxshape=(None, ctx, d), dtype=storage,
                                     chunks=(rows, ctx, d), dcpl=_early_alloc_dcpl())
            if settings.dtype == "bfloat16":
                ds.attrs["encoding"] = BFLOAT16_ENCODING
        f.attrs.update({**cache_attrs(settings, record, loaded, n, ctx, widths, stats), **(extra_attrs or {})})
    replace_atomically(partial, out)


def cache_attrs(settings: CacheSettings, record: dict, loaded, n: int, ctx: int, widths: dict[str, int],
                stats: dict) -> dict:
    """Every attribute of a new token-level cache of `n` contexts (none finished yet), in the order written."""
    return {
        **run_attrs(settings, loaded, record, ctx, widths),
        "fragments": settings.fragments,
        "bos_prepended": bool(stats["bos_prepended"]),
        "documents_read": int(stats["documents_read"]),
        "documents_too_short": int(stats["documents_too_short"]),
        "n_contexts": n,
        "n_contexts_done": 0,
    }


def run_attrs(settings: CacheSettings, loaded, record: dict, ctx: int, widths: dict[str, int]) -> dict:
    """The file attributes every cache shares (token-level and pooled): what model, data and layout wrote it.

    The model's fingerprint is what dictionaries trained on this cache copy, so that every command pairing a
    dictionary with a cache or a model can tell another model of the same width (`activations.provenance`).
    """
    from activations.provenance import model_fingerprint

    return {
        "format_version": FORMAT_VERSION,
        "settings": record_json(record),
        "model_id": settings.model,
        "model_source": loaded.source,
        "model_revision": loaded.revision,
        "model_fingerprint": model_fingerprint(loaded.model),
        "model_type": str(loaded.model.config.model_type),
        "tokenizer": str(getattr(loaded.tokenizer, "name_or_path", "")),
        "dtype": settings.dtype,
        "context_length": ctx,
        "hooks": json.dumps(list(settings.hooks)),
        "widths": json.dumps(widths),
        "corpus": record["corpus"],
    }


class _OrderedWriter:
    """Writes finished batches on one background thread, strictly in order.

    The forward pass of batch i+1 (torch releases the GIL) overlaps the HDF5
    write of batch i. Per batch the order is unchanged: data, flush, counter,
    flush. Leaving the block waits for every queued batch, and an error in the
    thread is raised in the caller at the next put or at exit.
    """

    def __init__(self, file: h5py.File, hooks: list[str], depth: int = 2):
        self._file = file
        self._datasets = {name: file["acts"][name] for name in hooks}
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cache-writer", daemon=True)

    def __enter__(self) -> "_OrderedWriter":
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain without writing after a failure
            start, stop, tokens, arrays = item
            try:
                for name, ds in self._datasets.items():
                    ds[start:stop] = arrays[name]
                self._file["tokens"][start:stop] = tokens
                self._file.flush()  # the data is in the file before the counter says so
                self._file.attrs["n_contexts_done"] = stop
                self._file.flush()
            except BaseException as err:  # re-raised in the caller's thread
                self._error = err

    def put(self, start: int, stop: int, tokens: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((start, stop, tokens, arrays))

    def __exit__(self, *exc) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and exc[0] is None:
            raise self._error


def cache_activations(
    model: str = "default",
    corpus: str = "default",
    hooks: list[str] | tuple[str, ...] = (),
    context_length: int = 128,
    max_tokens: int = 1_000_000,
    batch_size: int = 32,
    dtype: str = "float16",
    out: str | Path = "cache.h5",
    overwrite: bool = False,
    fragments: bool = False,
    device: str = "cpu",
    progress: bool = True,
    pool: str | None = None,
    text_column: str | None = None,
    max_documents: int | None = None,
    encoding: str | None = None,
) -> CacheResult:
    """Cache activations of `hooks` over `corpus`; resumes a killed run of the same settings.

    The keyword form of `write_cache` for Python callers (the names are `CacheSettings`' fields).
    """
    settings = CacheSettings(model=model, corpus=corpus, hooks=list(hooks), context_length=context_length,
                             max_tokens=max_tokens, batch_size=batch_size, dtype=dtype, fragments=fragments,
                             device=device, out=str(out), overwrite=overwrite, pool=pool, text_column=text_column,
                             max_documents=max_documents, encoding=encoding)
    return write_cache(settings, progress=progress)


def write_cache(settings: CacheSettings, progress: bool = True) -> CacheResult:
    """Cache activations as `settings` say; resumes a killed run of the same settings.

    Everything that can be checked without the model is checked first, before
    the (slow) model load and before any file is created: the numbers, the
    device, that --out can be written, the corpus, the hook names, and an
    existing file's settings. From the check of --out on, this process holds
    it (`output_lock`): a second `cache` into the same file is refused.
    Under `torchrun` (WORLD_SIZE > 1) each rank caches every N-th context
    into a shard file, joined by the main file (see `activations.shards`).
    """
    settings.validate()
    check_device(settings.device)
    out = check_output_file(settings.out)
    launch = launch_from_env()
    if launch.distributed:  # under torchrun: this rank writes its shard (see activations.shards)
        from activations.shards import write_cache_distributed

        return write_cache_distributed(settings, out, launch, progress)
    with output_lock(out, folder=False):
        return _write_cache_locked(settings, out, progress)


def _write_cache_locked(settings: CacheSettings, out: Path, progress: bool) -> CacheResult:
    """`write_cache` once this process holds --out: no other writer can change the file from here on."""
    resolved = resolve_corpus(settings.corpus, settings.text_column, settings.encoding)
    settings.check_hooks()
    if settings.pool is not None:
        from activations.pooled import write_pooled

        return write_pooled(settings, resolved, out, progress)
    record = settings.record(resolved.describe())
    done = None if settings.overwrite else _check_existing(out, record)
    if done is not None:
        with h5py.File(out, "r") as f:
            total = int(f.attrs["n_contexts"])
        if done >= total:
            print(f"{out} is already complete ({total} contexts); nothing to do.")
            return CacheResult(out, total, 0, 0.0)

    loaded = load_model(settings.model, device=settings.device)
    hook_points = validate_hooks(loaded.model, settings.hooks)
    check_context_length(loaded, settings.context_length)
    # Widths in the user's order: that is the order of /acts in the file.
    widths = {h: hook_width(loaded.model, next(p for p in hook_points if p.name == h)) for h in settings.hooks}
    tokens, stats = build_contexts(resolved.documents(), loaded.tokenizer, settings.context_length,
                                   settings.max_tokens // settings.context_length, fragments=settings.fragments)
    if done is None:
        _create_file(out, settings, record, loaded, tokens, widths, stats)
        done = 0
    return _write_batches(out, settings, loaded.model, tokens, done, progress)


def _write_batches(out: Path, settings: CacheSettings, model, tokens: np.ndarray, done: int,
                   progress: bool) -> CacheResult:
    """The forward-and-write loop from context `done` on (the file exists at its final size).

    A batch with a value that is not finite in the storage dtype is never
    written: the run stops with one line (the batches before it are written
    and counted, so the file stays a valid, resumable cache).
    """
    n, context_length = tokens.shape
    bar = tqdm(total=n * context_length, initial=done * context_length, unit="tok", unit_scale=True,
               desc=f"cache {out.name}", disable=not progress, smoothing=0.1)
    started = time.perf_counter()
    try:
        with h5py.File(out, "r+") as f, _OrderedWriter(f, settings.hooks) as writer:
            for start in range(done, n, settings.batch_size):
                stop = min(n, start + settings.batch_size)
                ids = torch.from_numpy(tokens[start:stop].astype(np.int64)).to(settings.device)
                acts = run_with_cache(model, ids, settings.hooks)
                arrays = {name: _stored(acts[name], settings.dtype, name, (start, stop), out)
                          for name in settings.hooks}
                writer.put(start, stop, tokens[start:stop], arrays)
                bar.update((stop - start) * context_length)
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    if progress:
        print(f"wrote {n} contexts x {context_length} tokens of {len(settings.hooks)} hooks to {out} in {elapsed:.1f}s")
    return CacheResult(out, n, (n - done) * context_length, elapsed)


def _stored(x: torch.Tensor, dtype: str, hook: str, contexts: tuple[int, int], out: Path) -> np.ndarray:
    """`x` as the file stores it; a value that is not finite there is a one-line error, never a silent inf."""
    stored = x.to("cpu", STORAGE[dtype][1])
    if not bool(torch.isfinite(stored).all()):
        raise _non_finite(x, stored, dtype, hook, contexts, out)
    if dtype == "bfloat16":
        return stored.view(torch.int16).numpy().view(np.uint16)
    return stored.numpy()


def _non_finite(x: torch.Tensor, stored: torch.Tensor, dtype: str, hook: str, contexts: tuple[int, int],
                out: Path) -> UserError:
    bad = ~torch.isfinite(stored)
    where = bad.nonzero()[0].tolist()  # first bad (context in batch, position, unit)
    at = f"context {contexts[0] + where[0]}, position {where[1]}"
    kept = (f"the {contexts[0]} contexts before it are written and the file stays resumable"
            if contexts[0] else "nothing was written yet")
    raw = x.detach().float().cpu()
    if not bool(torch.isfinite(raw[bad]).all()):
        return UserError(f"the model itself produced NaN or inf at {hook} ({at}) of {out}; --dtype cannot fix that: "
                         f"check the model and its weights ({kept})")
    largest = float(raw[torch.isfinite(raw)].abs().max())
    return UserError(f"{hook} has values beyond {dtype}'s range ({largest:.3g} > {_RANGE[dtype]}, at {at}), which "
                     f"--dtype {dtype} would store as inf; rerun with --dtype float32 (or bfloat16: float32's range in "
                     f"16 bits) and --overwrite ({kept})")
