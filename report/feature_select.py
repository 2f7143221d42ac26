"""Which contexts a feature page shows, and the histogram of its activations: the selection rules, as pure numpy.

Kept apart from the pass over the cache (`report.feature_stats`, whose
docstring states the rules) so the rules can be read and tested on arrays:
given a feature's per-context maxima, `select` picks the top contexts, the
quantile-bin draws and the histogram edges; `histograms` bins many features'
non-zero values at once; `example_rows` cuts the examples' per-token
activations out of sorted (token, feature, value) triplets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass
class Selection:
    """One feature's shown contexts: top (ranked), per quantile bin (lo, hi, contexts), and its histogram edges."""

    top: np.ndarray
    quantiles: list[tuple[float, float, np.ndarray]]
    edges: np.ndarray  # histogram edges (empty when never active)


def select(maxima: np.ndarray, feature: int, config: Any) -> Selection:
    """Top and quantile contexts of one feature from its per-context maxima (`config`: a SummaryConfig; the rules
    are in `report.feature_stats`'s docstring)."""
    active = np.flatnonzero(maxima > 0)
    if active.size == 0:
        return Selection(np.empty(0, np.int64), [], np.empty(0))
    values = maxima[active]
    top_max = float(values.max())
    cand = active
    if active.size > config.n_top > 0:
        cand = active[values >= np.partition(values, -config.n_top)[-config.n_top]]  # ties at the cut all compete
    top = cand[np.lexsort((cand, -maxima[cand]))][:config.n_top]
    quantiles = []
    if config.n_quantiles:
        edges = edges_of(top_max, config.n_quantiles)
        bins = bin_of(values.astype(np.float64), edges)
        rest = ~np.isin(active, top)
        rng = np.random.default_rng([int(config.seed), int(feature)])
        for q in range(config.n_quantiles):
            pool = active[(bins == q) & rest]
            take = min(config.per_quantile, pool.size)
            chosen = rng.choice(pool, size=take, replace=False) if take else pool[:0]
            quantiles.append((float(edges[q]), float(edges[q + 1]), chosen[np.lexsort((chosen, -maxima[chosen]))]))
    return Selection(top, quantiles, edges_of(top_max, config.hist_bins))


def edges_of(top: float, bins: int) -> np.ndarray:
    """Equal-width edges of (0, top]: edge i = i·(top/bins), the last exactly top (so the maximum is in the last bin)."""
    edges = np.arange(bins + 1, dtype=np.float64) * (top / bins)
    edges[-1] = top
    return edges


def bin_of(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin i of values in (edges[i], edges[i+1]] (values > 0, <= edges[-1])."""
    return np.clip(np.searchsorted(edges, values, side="left") - 1, 0, len(edges) - 2)


def histograms(cols: np.ndarray, vals: np.ndarray, tops: np.ndarray, bins: int) -> np.ndarray:
    """[n, bins] counts of the non-zero values per (chunk-local) feature, bins as `edges_of(tops[j], bins)` makes them.

    Vectorised over features: the bin is found arithmetically, then moved by
    one where rounding put a value on the wrong side of an edge, so the
    result equals `bin_of` with each feature's own edges.
    """
    n = tops.shape[0]
    out = np.zeros(n * bins, np.int64)
    if cols.size:
        v, top = vals.astype(np.float64), tops[cols]
        step = top / bins
        b = np.clip(np.ceil(v / step).astype(np.int64) - 1, 0, bins - 1)
        down = (b > 0) & (v <= b * step)
        b[down] -= 1
        upper = np.where(b + 1 == bins, top, (b + 1) * step)
        b[(b < bins - 1) & (v > upper)] += 1
        out += np.bincount(cols.astype(np.int64) * bins + b, minlength=n * bins)
    return out.reshape(n, bins)


def example_pairs(selections: Sequence[Selection]) -> tuple[np.ndarray, np.ndarray]:
    """(context, feature position) of every example, feature by feature, top then quantiles: row r of an
    example array is pair r, and `n_shown` says how many rows each feature takes."""
    ctx, feat = [], []
    for j, sel in enumerate(selections):
        shown = np.concatenate([sel.top] + [q[2] for q in sel.quantiles]).astype(np.int64)
        ctx.append(shown)
        feat.append(np.full(shown.size, j, np.int64))
    return (np.concatenate(ctx), np.concatenate(feat)) if ctx else (np.zeros(0, np.int64), np.zeros(0, np.int64))




def n_shown(sel: Selection) -> int:
    """How many examples (rows) a feature takes: its top, then each quantile's draws."""
    return int(sel.top.size + sum(q[2].size for q in sel.quantiles))


def example_rows(toks: np.ndarray, cols: np.ndarray, vals: np.ndarray, ctx: np.ndarray, feat: np.ndarray,
                 n_contexts: int, length: int) -> np.ndarray:
    """[pairs, length] activations of feature feat[r] at each token of context ctx[r], from non-zero triplets.

    `toks` are global token indices (context · length + position). Triplets
    are sorted by (feature, context), so each example is one run of them,
    found by binary search, and filled in without a Python loop.
    """
    keys = cols.astype(np.int64) * n_contexts + toks // length
    order = np.argsort(keys, kind="stable")
    keys, pos, vals = keys[order], (toks[order] % length).astype(np.int64), vals[order]
    wanted = feat * n_contexts + ctx
    start, stop = np.searchsorted(keys, wanted, "left"), np.searchsorted(keys, wanted, "right")
    runs = stop - start
    pair = np.repeat(np.arange(wanted.size), runs)
    at = np.arange(runs.sum()) - np.repeat(np.cumsum(runs) - runs, runs) + np.repeat(start, runs)
    acts = np.zeros((wanted.size, length), np.float32)
    acts[pair, pos[at]] = vals[at]
    return acts
