"""Caches whose true features are known: planted and synthetic activations, and how the truth is stored.

A cache of a real model cannot say which features produced a token; a cache
written from a generator can (a planted set of directions, SynthSAEBench's
synthetic model). Such a cache carries, per hook, a `/truth/<hook>` group:

- `directions` [n_true, d] float32: the true feature vectors;
- `indptr` [n_contexts · context_length + 1] int64 and `indices` [nnz] int32:
  which true features are active at each token, in compressed sparse rows
  (token t = context · context_length + position; its active features are
  `indices[indptr[t]:indptr[t + 1]]`). Only whether a feature fires is kept,
  not its magnitude: that is all recovery metrics (F1) need, and it keeps a
  16k-feature truth at ~4 bytes per active feature.

`evaluate` and the report then show recovery (MMCS, F1, MCC; `sae.ground_truth`)
beside FVU and L0. `write_synthetic_cache` writes the whole file in the format
`cli.py cache` writes (tokens are placeholders), so `train-sae` and `evaluate`
read it through exactly the code path real caches take.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

TRUTH_GROUP = "truth"


@dataclass
class TrueFiring:
    """Which true features fire at each token of a range of contexts, and the true directions."""

    directions: torch.Tensor  # [n_true, d]
    indptr: np.ndarray  # [n_tokens + 1], offsets into `indices`, tokens of the range in (context, position) order
    indices: np.ndarray  # [nnz]
    first_context: int
    context_length: int

    @property
    def n_true(self) -> int:
        return int(self.directions.shape[0])

    def dense(self, tokens: np.ndarray) -> torch.Tensor:
        """[len(tokens), n_true] bool: the features firing at each token (global token numbers)."""
        local = np.asarray(tokens, dtype=np.int64) - self.first_context * self.context_length
        starts, ends = self.indptr[local], self.indptr[local + 1]
        rows = np.repeat(np.arange(local.size), ends - starts)
        cols = np.concatenate([self.indices[s:e] for s, e in zip(starts, ends)]) if local.size else np.zeros(0, int)
        out = torch.zeros(local.size, self.n_true, dtype=torch.bool)
        out[torch.from_numpy(rows), torch.from_numpy(cols.astype(np.int64))] = True
        return out


def has_truth(path: str | Path, hook: str) -> bool:
    """Whether the cache at `path` records the true features of `hook`."""
    with h5py.File(path, "r") as f:
        return TRUTH_GROUP in f and hook in f[TRUTH_GROUP]


def write_truth(f: h5py.File, hook: str, directions: torch.Tensor, indptr: np.ndarray, indices: np.ndarray) -> None:
    """Store the truth of `hook` in an open cache file (see the module docstring for the layout)."""
    group = f.require_group(TRUTH_GROUP).create_group(hook)
    group.create_dataset("directions", data=directions.detach().cpu().to(torch.float32).numpy())
    group.create_dataset("indptr", data=np.asarray(indptr, dtype=np.int64))
    group.create_dataset("indices", data=np.asarray(indices, dtype=np.int32), chunks=True)


def read_truth(path: str | Path, hook: str, contexts: tuple[int, int]) -> TrueFiring | None:
    """The truth of `hook` for contexts [lo, hi) of the cache, or None when the cache records none."""
    lo, hi = contexts
    with h5py.File(path, "r") as f:
        if TRUTH_GROUP not in f or hook not in f[TRUTH_GROUP]:
            return None
        group = f[TRUTH_GROUP][hook]
        ctx = int(f.attrs["context_length"])
        indptr = group["indptr"][lo * ctx:hi * ctx + 1]
        indices = group["indices"][int(indptr[0]):int(indptr[-1])]
        directions = torch.from_numpy(group["directions"][:])
    return TrueFiring(directions, indptr - indptr[0], indices, lo, ctx)


def sparse_rows(active: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) of a [n_tokens, n_true] activation or firing matrix (non-zero = fires)."""
    nz = (active != 0).nonzero()
    counts = torch.bincount(nz[:, 0], minlength=active.shape[0]) if nz.numel() else torch.zeros(active.shape[0],
                                                                                                dtype=torch.long)
    indptr = np.concatenate([[0], np.cumsum(counts.numpy())]).astype(np.int64)
    return indptr, nz[:, 1].numpy().astype(np.int32)


def write_synthetic_cache(path: str | Path, acts: np.ndarray, hook: str, corpus: str,
                          directions: torch.Tensor | None = None, indptr: np.ndarray | None = None,
                          indices: np.ndarray | None = None) -> Path:
    """A cache in the format `cli.py cache` writes from `acts` [n_contexts, context_length, d] (one hook; the
    tokens are placeholders), with the true features when given; the model id is "synthetic"."""
    path = Path(path)
    n_ctx, ctx, d = acts.shape
    settings = {"model": "synthetic", "corpus": corpus, "hooks": [hook]}
    rows = max(1, min(n_ctx, (1 << 20) // max(1, ctx * d * 4)))
    with h5py.File(path, "w") as f:
        f.create_dataset("tokens", data=np.zeros((n_ctx, ctx), np.int32), chunks=(min(n_ctx, 64), ctx))
        f.create_group("acts").create_dataset(hook, data=np.asarray(acts, dtype=np.float32), chunks=(rows, ctx, d))
        f.attrs.update({"format_version": 1, "settings": json.dumps(settings), "model_id": "synthetic",
                        "model_source": "synthetic", "model_revision": "", "model_type": "synthetic",
                        "tokenizer": "", "dtype": "float32", "context_length": ctx,
                        "hooks": json.dumps([hook]), "widths": json.dumps({hook: d}), "corpus": corpus,
                        "fragments": False, "bos_prepended": False, "documents_read": n_ctx,
                        "documents_too_short": 0, "n_contexts": n_ctx, "n_contexts_done": n_ctx})
        if directions is not None:
            if indptr is None or indices is None or len(indptr) != n_ctx * ctx + 1:
                raise ValueError("the truth needs indptr of n_contexts * context_length + 1 offsets and indices")
            write_truth(f, hook, directions, indptr, indices)
    return path
