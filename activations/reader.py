"""Read an activation cache without loading it into memory.

Training wants i.i.d.-looking batches of token vectors; reading single
tokens at random from HDF5 would be far too slow, so `iter_batches` does a
block shuffle: random order of context blocks, a bounded buffer of blocks,
tokens shuffled within the buffer. Every buffer's randomness is derived from
(seed, epoch, buffer index) alone, so a resumed run can skip straight to any
batch without replaying the data before it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import torch

from activations.cache_layout import unreadable_cache
from common.errors import UserError

_DEFAULT_BUFFER_BYTES = 256 << 20


def _block_contexts(dataset: h5py.Dataset) -> int:
    """Contexts per shuffle block: the chunk rows, or for a torchrun cache's virtual dataset (no chunks) the chunk
    rows a single-process file would have, recorded at creation, so both draw the same batches."""
    if dataset.chunks:
        return int(dataset.chunks[0])
    return int(dataset.attrs.get("block_contexts", 1))


def _rows(dataset: h5py.Dataset, indices: np.ndarray, first: int = 0) -> np.ndarray:
    """dataset[indices, first:] for sorted unique `indices`, read the fast way for the dataset's kind.

    A plain file reads a run of rows as one slice (a list selection is much
    slower there). A torchrun cache's virtual dataset maps every N-th row to
    one shard, so HDF5 splits any multi-row selection into one piece per row
    and per shard, which measured ~50x slower than reading the rows one by one
    (each row is one contiguous piece of one shard).
    """
    if dataset.is_virtual:
        out = np.empty((len(indices), dataset.shape[1] - first, *dataset.shape[2:]), dtype=dataset.dtype)
        for i, row in enumerate(indices):
            out[i] = dataset[int(row), first:]
        return out
    if len(indices) and indices[-1] - indices[0] == len(indices) - 1:  # one contiguous run
        return dataset[int(indices[0]):int(indices[-1]) + 1, first:]
    return dataset[indices, first:] if first else dataset[indices]


class IncompleteCacheWarning(UserWarning):
    """The cache's writer has not finished (killed, or still running)."""


def damaged_line(path: Path, value: float, what: str, hook: str, where: str) -> str:
    """The one-line error for a NaN or inf `value` read from a cache: which, at which hook, where first, the fix."""
    name = "NaN" if value != value else ("inf" if value > 0 else "-inf")
    return (f"{path} holds {name} {what} at {hook!r} (first in {where}): the cache is damaged or its model "
            "overflowed; re-create it with `cli.py cache ... --overwrite` (--dtype float32 if float16 overflowed)")


class ActivationCache:
    """Read-only view of a cache file; use as a context manager or call close()."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"cache {str(self.path)!r} does not exist: create it with `python cli.py cache ... --out {self.path}`")
        if self.path.is_dir():
            raise UserError(f"cache {str(self.path)!r} is a folder, not a cache file: pass the .h5 file that "
                            "`cli.py cache --out` wrote")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise UserError(unreadable_cache(self.path, err, "check the path, or rerun `cli.py cache` with --overwrite "
                                                            "to write it again")) from err
        try:
            attrs = dict(self._file.attrs)
            self.n_contexts = int(attrs["n_contexts_done"])
        except (OSError, KeyError) as err:
            self._file.close()
            raise UserError(f"{self.path} is not an activation cache written by `cli.py cache`: check the path") from err
        if "pool" in attrs:
            self._file.close()
            raise UserError(f"{self.path} is a document-level cache (--pool {attrs['pool']}): it has one vector per "
                            "document and no token activations; use it with `cli.py describe`, or cache tokens "
                            "without --pool")
        self.attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in attrs.items()}
        self.model_id: str = str(attrs["model_id"])
        self.hooks: list[str] = json.loads(attrs["hooks"])
        self.context_length: int = int(attrs["context_length"])
        self.bos_prepended: bool = bool(attrs["bos_prepended"])
        self.fragments: bool = bool(attrs["fragments"])
        self._widths: dict[str, int] = json.loads(attrs["widths"])
        self.dtype: str = str(attrs.get("dtype", "float32"))
        self._check_shards(attrs)
        if self.n_contexts == 0:
            raise UserError(f"{self.path} has no finished contexts yet: run (or resume) the cache command first")
        total = int(attrs.get("n_contexts", self.n_contexts))
        if self.n_contexts < total:
            # A killed or still-running cache is readable, but silently training or explaining on part
            # of it would change results without a trace; say so once per open.
            warnings.warn(f"{self.path} is incomplete: {self.n_contexts} of {total} contexts are finished and only "
                          "those are read; rerun the cache command (same arguments) to finish it",
                          IncompleteCacheWarning, stacklevel=2)

    def _check_shards(self, attrs: dict) -> None:
        """A torchrun cache reads its activations from shard files: a missing one is an error, not rows of NaN."""
        if "shards" not in attrs:
            return
        for name in json.loads(attrs["shards"]):
            if not (self.path.parent / name).is_file():
                self._file.close()
                raise UserError(f"{self.path} reads its activations from {self.path.parent / name}, which is missing: "
                                f"keep the folder {self.path.name}.shards beside {self.path.name} (move them together)")

    # -- basics ---------------------------------------------------------
    def __enter__(self) -> "ActivationCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @property
    def complete(self) -> bool:
        return self.n_contexts >= int(self.attrs["n_contexts"])

    def width(self, hook: str) -> int:
        self._check_hook(hook)
        return self._widths[hook]

    def _check_hook(self, hook: str) -> None:
        if hook not in self._widths:
            raise UserError(f"hook {hook!r} is not in {self.path} (it has {', '.join(self.hooks)}): pass one of those")

    def _dataset(self, hook: str) -> h5py.Dataset:
        self._check_hook(hook)
        return self._file["acts"][hook]

    def _float32(self, stored: np.ndarray) -> np.ndarray:
        """Stored activations as float32: bfloat16 bit patterns (uint16) are widened exactly."""
        if stored.dtype == np.uint16:
            return (stored.astype(np.uint32) << 16).view(np.float32)
        return stored.astype(np.float32, copy=False)

    def n_tokens(self, skip_bos: bool = True, contexts: tuple[int, int] | None = None,
                 skip_first: bool = False) -> int:
        """Token vectors `iter_batches` draws from with the same arguments."""
        lo, hi = self.context_range(contexts)
        return (hi - lo) * (self.context_length - self._first_position(skip_bos, skip_first))

    def context_range(self, contexts: tuple[int, int] | None = None) -> tuple[int, int]:
        """[lo, hi) of finished contexts; a held-out split is a range of whole contexts at the end."""
        if contexts is None:
            return 0, self.n_contexts
        lo, hi = int(contexts[0]), min(int(contexts[1]), self.n_contexts)
        if not 0 <= lo < hi:
            raise UserError(f"context range {contexts} is empty in {self.path} ({self.n_contexts} contexts): "
                            "lower --eval-fraction or cache more")
        return lo, hi

    def _first_position(self, skip_bos: bool, skip_first: bool) -> int:
        """Position 0 is dropped when it is a BOS (skip_bos) or always (skip_first: the attention sink)."""
        return 1 if (skip_first or (skip_bos and self.bos_prepended)) else 0

    # -- random access to contexts ---------------------------------------
    def _read_rows(self, dataset: h5py.Dataset, indices) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_contexts):
            raise IndexError(f"context index out of range 0..{self.n_contexts - 1}")
        order = np.argsort(idx, kind="stable")
        unique, inverse = np.unique(idx[order], return_inverse=True)
        rows = _rows(dataset, unique) if unique.size else dataset[0:0]
        out = np.empty((idx.size, *rows.shape[1:]), dtype=rows.dtype)
        out[order] = rows[inverse]
        return out

    def tokens(self, indices=None) -> np.ndarray:
        if indices is None:
            return self._file["tokens"][: self.n_contexts]
        return self._read_rows(self._file["tokens"], indices)

    def acts(self, hook: str, indices) -> np.ndarray:
        return self._float32(self._read_rows(self._dataset(hook), indices))

    def iter_contexts(self, hook: str, batch_contexts: int = 64, limit: int | None = None
                      ) -> Iterator[tuple[np.ndarray, np.ndarray, torch.Tensor]]:
        """Sequential (indices, tokens, activations) blocks, for exemplars and evaluation."""
        dataset = self._dataset(hook)
        end = self.n_contexts if limit is None else min(limit, self.n_contexts)
        for start in range(0, end, batch_contexts):
            stop = min(end, start + batch_contexts)
            acts = torch.from_numpy(self._float32(_rows(dataset, np.arange(start, stop))))
            if not bool(torch.isfinite(acts).all()):  # exemplars, feature pages, ...: named here, not NaN scores
                raise UserError(self.non_finite(hook, batch_contexts))
            yield np.arange(start, stop), self._file["tokens"][start:stop], acts

    def non_finite(self, hook: str, batch_contexts: int = 64) -> str:
        """The one-line error for a cache whose `hook` holds NaN or inf: which, where first, and the fix.

        Called once a read finds one (a shuffled batch cannot say where it came
        from), so the scan in context order runs only on the failure path. Said
        here, where the data is read, rather than later as a training divergence
        whose advice (lower --lr) would not help.
        """
        dataset = self._dataset(hook)
        for start in range(0, self.n_contexts, batch_contexts):
            indices = np.arange(start, min(self.n_contexts, start + batch_contexts))
            acts = torch.from_numpy(self._float32(_rows(dataset, indices)))
            bad = ~torch.isfinite(acts)
            if bool(bad.any()):
                row, position = (int(v) for v in bad.any(dim=-1).nonzero()[0])
                value = acts[row, position][bad[row, position]][0].item()
                return damaged_line(self.path, value, "activations", hook,
                                    f"context {int(indices[row])}, position {position}")
        return f"{self.path} holds NaN or inf activations at {hook!r}: re-create it with `cli.py cache ... --overwrite`"

    # -- shuffled token batches for training -------------------------------
    def iter_batches(self, hook: str, batch_size: int, n_tokens: int | None = None, seed: int = 0,
                     start_batch: int = 0, skip_bos: bool = True,
                     buffer_bytes: int = _DEFAULT_BUFFER_BYTES, contexts: tuple[int, int] | None = None,
                     skip_first: bool = False) -> Iterator[torch.Tensor]:
        """Yield `n_tokens // batch_size` float32 batches [batch_size, d] (one epoch if n_tokens is None).

        Each buffer drops its last partial batch rather than carrying it over,
        which keeps buffers independent and so resumable; the loss is at most
        batch_size - 1 tokens per buffer. `contexts` = [lo, hi) restricts the
        draw to those contexts (a train / held-out split); `skip_first` drops
        position 0 of every context (an attention sink whose norm dwarfs the rest).
        """
        dataset = self._dataset(hook)
        d = self._widths[hook]
        first = self._first_position(skip_bos, skip_first)
        per_context = self.context_length - first
        lo, hi = self.context_range(contexts)
        block = _block_contexts(dataset)
        first_block = lo // block
        n_blocks = -(-hi // block) - first_block
        blocks_per_buffer = max(1, buffer_bytes // (block * per_context * d * 4))
        blocks_per_buffer = min(blocks_per_buffer, n_blocks)

        def block_rows(b: int) -> tuple[int, int]:
            """Contexts of the b-th block of the range, clipped to [lo, hi)."""
            start = (first_block + b) * block
            return max(lo, start), min(hi, start + block)

        def block_len(b: int) -> int:
            a, z = block_rows(b)
            return (z - a) * per_context

        epoch_batches = 0
        n_buffers = -(-n_blocks // blocks_per_buffer)
        plan_cache: dict[int, list[np.ndarray]] = {}

        def epoch_plan(epoch: int) -> list[np.ndarray]:
            if epoch not in plan_cache:
                rng = np.random.default_rng([seed, epoch])
                perm = rng.permutation(n_blocks)
                plan_cache.clear()
                plan_cache[epoch] = [perm[i * blocks_per_buffer:(i + 1) * blocks_per_buffer] for i in range(n_buffers)]
            return plan_cache[epoch]

        buffers = epoch_plan(0)
        epoch_batches = sum(sum(block_len(b) for b in buf) // batch_size for buf in buffers)
        if epoch_batches == 0:
            raise UserError(f"{self.path} holds {self.n_tokens(skip_bos, contexts, skip_first)} tokens here, fewer than "
                            f"one batch of {batch_size}: cache more text (train-sae: or lower --batch-size)")
        total = epoch_batches if n_tokens is None else max(1, n_tokens // batch_size)
        produced = 0
        position = 0  # global batch index of the next batch a buffer would produce
        epoch = 0
        while produced + start_batch < total:
            for buf_index, buf in enumerate(epoch_plan(epoch)):
                count = sum(block_len(b) for b in buf) // batch_size
                if position + count <= start_batch:  # skip whole buffers without reading them
                    position += count
                    continue
                data = np.concatenate([_rows(dataset, np.arange(*block_rows(b)), first).reshape(-1, d)
                                       for b in np.sort(buf)])
                rng = np.random.default_rng([seed, epoch, buf_index])
                order = rng.permutation(data.shape[0])
                tensor = torch.from_numpy(self._float32(data[order]))
                if not bool(torch.isfinite(tensor).all()):
                    raise UserError(self.non_finite(hook))
                for i in range(count):
                    if position >= start_batch:
                        yield tensor[i * batch_size:(i + 1) * batch_size]
                        produced += 1
                        if produced + start_batch >= total:
                            return
                    position += 1
            epoch += 1
