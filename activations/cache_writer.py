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
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from activations.corpus import build_contexts, resolve_corpus
from activations.errors import UserError
from activations.hooks import hook_width, parse_hook, run_with_cache, validate_hooks
from activations.models import load_model

FORMAT_VERSION = 1
_TARGET_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class CacheResult:
    path: Path
    n_contexts: int
    tokens_written: int  # by this call (0 if the file was already complete)
    seconds: float  # the forward-and-write loop only, not model loading

    def __fspath__(self) -> str:  # usable wherever a path is expected
        return str(self.path)


@dataclass(frozen=True)
class CacheSettings:
    """Everything that decides the bytes of the file; a rerun must match it to resume."""

    model: str
    corpus: str  # description with a content hash
    hooks: tuple[str, ...]
    context_length: int
    max_tokens: int
    batch_size: int
    dtype: str
    fragments: bool

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "hooks": list(self.hooks)}, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "CacheSettings":
        data = json.loads(text)
        data["hooks"] = tuple(data["hooks"])
        return CacheSettings(**data)


def _differences(old: CacheSettings, new: CacheSettings) -> list[str]:
    a, b = asdict(old), asdict(new)
    return [f"{k}: file has {a[k]!r}, command asks {b[k]!r}" for k in a if a[k] != b[k]]


def _early_alloc_dcpl() -> h5py.h5p.PropDCID:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


def _check_existing(out: Path, settings: CacheSettings) -> int | None:
    """Contexts already done in a file made with the same settings; None if no file."""
    if not out.exists():
        return None
    try:
        with h5py.File(out, "r") as f:
            stored = CacheSettings.from_json(f.attrs["settings"])
            done = int(f.attrs["n_contexts_done"])
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise UserError(f"{out} exists but is not an activation cache this tool wrote: choose another --out or pass --overwrite") from err
    diffs = _differences(stored, settings)
    if diffs:
        raise UserError(
            f"{out} was made with other settings ({'; '.join(diffs)}): rerun with the same settings to resume, "
            "or pass --overwrite, or choose another --out"
        )
    return done


def _create_file(out: Path, settings: CacheSettings, loaded, tokens: np.ndarray, widths: dict[str, int], stats: dict) -> None:
    n, ctx = tokens.shape
    storage = np.float16 if settings.dtype == "float16" else np.float32
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build the empty file under a temporary name and rename it into place, so
    # a kill during creation never leaves a file that a rerun cannot resume.
    partial = out.with_name(out.name + ".creating")
    with h5py.File(partial, "w") as f:
        per_context = ctx * np.dtype(np.int32).itemsize
        f.create_dataset("tokens", shape=(n, ctx), maxshape=(None, ctx), dtype=np.int32,
                         chunks=(max(1, min(n, _TARGET_CHUNK_BYTES // per_context)), ctx), dcpl=_early_alloc_dcpl())
        acts = f.create_group("acts")
        for name, d in widths.items():
            per_context = ctx * d * np.dtype(storage).itemsize
            rows = max(1, min(n, _TARGET_CHUNK_BYTES // per_context))
            acts.create_dataset(name, shape=(n, ctx, d), maxshape=(None, ctx, d), dtype=storage,
                                chunks=(rows, ctx, d), dcpl=_early_alloc_dcpl())
        f.attrs.update({
            "format_version": FORMAT_VERSION,
            "settings": settings.to_json(),
            "model_id": settings.model,
            "model_source": loaded.source,
            "model_revision": loaded.revision,
            "model_type": str(loaded.model.config.model_type),
            "tokenizer": str(getattr(loaded.tokenizer, "name_or_path", "")),
            "dtype": settings.dtype,
            "context_length": ctx,
            "hooks": json.dumps(list(settings.hooks)),
            "widths": json.dumps(widths),
            "corpus": settings.corpus,
            "fragments": settings.fragments,
            "bos_prepended": bool(stats["bos_prepended"]),
            "documents_read": int(stats["documents_read"]),
            "documents_too_short": int(stats["documents_too_short"]),
            "n_contexts": n,
            "n_contexts_done": 0,
        })
    os.replace(partial, out)


class _OrderedWriter:
    """Writes finished batches on one background thread, strictly in order.

    The forward pass of batch i+1 (torch releases the GIL) overlaps the HDF5
    write of batch i. Per batch the order is unchanged: data, flush, counter,
    flush. Leaving the block waits for every queued batch, and an error in the
    thread is raised in the caller at the next put or at exit.
    """

    def __init__(self, file: h5py.File, hooks: tuple[str, ...], depth: int = 2):
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


def check_hook_names(hooks: list[str] | tuple[str, ...]) -> None:
    """Syntax, emptiness and duplicates of --hooks: a typo fails at once, not after loading the model.

    Whether the layer exists needs the model; `validate_hooks` checks that after loading.
    """
    if not hooks:
        raise UserError("no hooks given: pass at least one, e.g. --hooks blocks.1.hook_resid_post")
    names = [parse_hook(h).name for h in hooks]
    if len(set(names)) != len(names):
        raise UserError(f"duplicate hook names in {list(hooks)}: list each hook once")


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
) -> CacheResult:
    """Cache activations of `hooks` over `corpus`; resumes a killed run of the same settings."""
    out = Path(out)
    # Everything that can be checked without the model is checked here, before the
    # (slow) model load and before any file is created.
    if dtype not in ("float16", "float32"):
        raise UserError(f"--dtype {dtype!r} is not supported: use float16 or float32")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size} must be at least 1: it is the number of contexts per forward pass")
    if context_length < 2:
        raise UserError(f"--context-length {context_length} is too short: use at least 2 (64 to 256 is typical)")
    if max_tokens < context_length:
        raise UserError(f"--max-tokens {max_tokens} is less than one context of {context_length}: raise --max-tokens")
    resolved = resolve_corpus(corpus)
    check_hook_names(hooks)
    settings = CacheSettings(model=model, corpus=resolved.describe(), hooks=tuple(hooks),
                             context_length=context_length, max_tokens=max_tokens,
                             batch_size=batch_size, dtype=dtype, fragments=fragments)
    done = None if overwrite else _check_existing(out, settings)
    if done is not None:
        with h5py.File(out, "r") as f:
            total = int(f.attrs["n_contexts"])
        if done >= total:
            print(f"{out} is already complete ({total} contexts); nothing to do.")
            return CacheResult(out, total, 0, 0.0)

    loaded = load_model(model, device=device)
    hook_points = validate_hooks(loaded.model, list(hooks))
    # Widths in the user's order: that is the order of /acts in the file.
    widths = {h: hook_width(loaded.model, next(p for p in hook_points if p.name == h)) for h in settings.hooks}
    tokens, stats = build_contexts(resolved.documents(), loaded.tokenizer, context_length,
                                   max_tokens // context_length, fragments=fragments)
    if done is None:
        _create_file(out, settings, loaded, tokens, widths, stats)
        done = 0

    storage = torch.float16 if dtype == "float16" else torch.float32
    n = tokens.shape[0]
    first = done
    bar = tqdm(total=n * context_length, initial=done * context_length, unit="tok", unit_scale=True,
               desc=f"cache {out.name}", disable=not progress, smoothing=0.1)
    started = time.perf_counter()
    with h5py.File(out, "r+") as f, _OrderedWriter(f, settings.hooks) as writer:
        for start in range(done, n, batch_size):
            stop = min(n, start + batch_size)
            ids = torch.from_numpy(tokens[start:stop].astype(np.int64)).to(device)
            acts = run_with_cache(loaded.model, ids, list(settings.hooks))
            arrays = {name: acts[name].to("cpu", storage).numpy() for name in settings.hooks}
            writer.put(start, stop, tokens[start:stop], arrays)
            bar.update((stop - start) * context_length)
    bar.close()
    elapsed = time.perf_counter() - started
    if progress:
        print(f"wrote {n} contexts x {context_length} tokens of {len(widths)} hooks to {out} in {elapsed:.1f}s")
    return CacheResult(out, n, (n - first) * context_length, elapsed)
