"""How `report.feature_stats` gets a dictionary's non-zero codes on a batch without the full dense product.

Split from feature_stats.py (which plans the passes and assembles the
summaries) because the three ways to encode are the part that decides
speed: for 10k features the encode pass is most of the time.
"""

from __future__ import annotations

from typing import Any

import torch


class BatchCodes:
    """One dictionary's codes on one batch of token rows x [N, d_in], cut into chunks' feature ranges [lo, hi).

    Three ways, each giving exactly what `encode` gives on those features:
    a plain TopK dictionary (the affine encode, then top-k) keeps its top-k
    (values, ids) as they are, never scattering them into a dense
    [N, n_features] tensor; a plain affine-ReLU dictionary multiplies by only
    the chunk's rows of W (as `explain.exemplars.encode_features` does, so a
    run of a few features does not pay for all of them); any other kind
    (neuron, threshold SAEs, ...) runs `encode` once per batch.
    """

    def __init__(self, d: Any, x: torch.Tensor):
        from sae.kinds.affine import encodes_as_affine_relu

        self.d, self.x = d, x
        plain = encodes_as_affine_relu(d)
        k = getattr(d, "k", None)
        self.mode = "topk" if plain and k is not None and k < d.n_features else (
            "sliced" if plain and k is None else "encode")
        self._codes: Any = None

    def triplets(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Non-zero codes of features [lo, hi) as (row, feature - lo, value), rows ascending."""
        if self.mode != "topk":
            c = self.dense(lo, hi)
            rows, cols = (c > 0).nonzero(as_tuple=True)
            return rows, cols, c[rows, cols]
        if self._codes is None:
            self._codes = self._topk()
        rows, cols, vals = self._codes
        if lo or hi < self.d.n_features:
            keep = (cols >= lo) & (cols < hi)
            rows, cols, vals = rows[keep], cols[keep], vals[keep]
        return rows, cols - lo, vals

    def dense(self, lo: int, hi: int) -> torch.Tensor:
        """[N, hi - lo] codes of features [lo, hi)."""
        if self.mode == "sliced":
            w, b = self.d.effective()[:2]
            return torch.relu(self.x.to(w.dtype) @ w[lo:hi].T + b[lo:hi])
        if self.mode == "encode":
            if self._codes is None:
                self._codes = self.d.encode(self.x)
            return self._codes[:, lo:hi]
        rows, cols, vals = self.triplets(lo, hi)
        out = torch.zeros(self.x.shape[0], hi - lo)
        out[rows, cols] = vals
        return out

    def _topk(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w, b = self.d.effective()[:2]
        k = int(self.d.k)
        pre = self.x.to(w.dtype) @ w.T  # in place from here: the same values as encode's relu(x Wᵀ + b), one buffer
        pre += b
        values, ids = pre.relu_().topk(k, dim=-1)
        rows = torch.arange(self.x.shape[0]).repeat_interleave(k)
        values, ids = values.reshape(-1), ids.reshape(-1)
        keep = values > 0
        if bool(keep.all()):  # the usual case: every token has k positive pre-activations
            return rows, ids, values
        return rows[keep], ids[keep], values[keep]
