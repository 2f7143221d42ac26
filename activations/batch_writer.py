"""The token-level forward-and-write loop, shared by one process (`activations.cache_writer`) and each torchrun
rank (`activations.shards`): batches written in order on a background thread, each counted only once flushed.

A kill -9 at any moment leaves a readable file whose counted contexts are
complete; rerunning redoes the partial batch with the same batch boundaries
and so ends with the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from activations.cache_layout import CacheResult, stored_array
from activations.hooks import run_with_cache
from activations.settings import CacheSettings

class OrderedWriter:
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

    def __enter__(self) -> "OrderedWriter":
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


def write_batches(out: Path, settings: CacheSettings, model, tokens: np.ndarray, done: int,
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
        with h5py.File(out, "r+") as f, OrderedWriter(f, settings.hooks) as writer:
            for start in range(done, n, settings.batch_size):
                stop = min(n, start + settings.batch_size)
                ids = torch.from_numpy(tokens[start:stop].astype(np.int64)).to(settings.device)
                acts = run_with_cache(model, ids, settings.hooks)
                arrays = {name: stored_array(acts[name], settings.dtype, name, (start, stop), out)
                          for name in settings.hooks}
                writer.put(start, stop, tokens[start:stop], arrays)
                bar.update((stop - start) * context_length)
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    if progress:
        print(f"wrote {n} contexts x {context_length} tokens of {len(settings.hooks)} hooks to {out} in {elapsed:.1f}s")
    return CacheResult(out, n, (n - done) * context_length, elapsed)
