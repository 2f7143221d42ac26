"""Descriptor assignment and its measures, as array operations over all features at once.

Assignment (Mondal et al.): a feature's exemplars are its top k % documents
by activation; a descriptor is assigned when its frequency among them is at
least T. We add a lift condition: the frequency must also be at least
`min_lift` times the descriptor's base rate in the corpus. Without it the
most common descriptor of a corpus (e.g. "neutral" for a third of the
tweets) clears any T below its base rate for *every* feature, which says
nothing about the feature. Only documents where the feature is active (> 0)
count as exemplars, so a feature that is zero almost everywhere is not
described by an arbitrary tie-broken set of zeros.

Everything is matrix algebra: each feature's top documents come from a
streaming `torch.topk` over blocks of documents (all features at once),
exemplar membership is a sparse [F, n] matrix, and descriptor frequencies
are its product with the sparse [n, V] document x descriptor matrix; there
is no Python loop over features and no dense [n, F] matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy import sparse


@dataclass
class Assignment:
    """Per feature: exemplar count [F], descriptor frequency and lift [F, V], and what is assigned [F, V]."""

    n_exemplars: np.ndarray
    frequency: np.ndarray
    lift: np.ndarray
    assigned: np.ndarray

    def ranked(self, feature: int, names: Sequence[str]) -> list[dict]:
        """The assigned descriptors of one feature, most frequent first (then by lift, then name)."""
        idx = np.flatnonzero(self.assigned[feature])
        order = sorted(idx.tolist(), key=lambda v: (-self.frequency[feature, v], -self.lift[feature, v], names[v]))
        return [{"descriptor": names[v], "frequency": round(float(self.frequency[feature, v]), 4),
                 "lift": round(float(self.lift[feature, v]), 3)} for v in order]


def descriptor_matrix(doc_descriptors: Sequence[Sequence[int]], n_descriptors: int) -> sparse.csr_matrix:
    """[n_documents, V] sparse 0/1 (float32): document i carries descriptor v."""
    indptr = np.cumsum([0] + [len(vs) for vs in doc_descriptors])
    indices = np.asarray([v for vs in doc_descriptors for v in vs], dtype=np.int64)
    return sparse.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr),
                             shape=(len(doc_descriptors), n_descriptors))


class TopTracker:
    """The m largest activations of every feature and their document rows, over blocks of documents.

    Streaming keeps memory at O((m + block) x F) whatever the corpus size.
    Held feature-major ([F, m], unsorted) because `torch.topk` along the last
    axis is the fast one. Once m values are held, only block entries above a
    feature's current m-th value can enter, so each block costs one
    comparison plus a top-k of the few entrants (not of m + block rows): the
    merge shrinks as the corpus streams by. All features at once, always.
    """

    def __init__(self, m: int):
        self.m = m
        self._values: torch.Tensor | None = None  # [F, <=m] unsorted
        self._rows: torch.Tensor | None = None  # [F, <=m] document rows (int64)
        self._sorted: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, block: torch.Tensor, rows: torch.Tensor) -> None:
        """Merge activations `block` [b, F] of the documents `rows` [b]."""
        if block.shape[0] == 0:
            return
        self._sorted = None
        by_feature, rows = block.T, rows.to(torch.int64)
        if self._values is not None and self._values.shape[1] == self.m:
            kth = self._values.min(1).values
            k_new = int((by_feature > kth.unsqueeze(1)).sum(1).max())
            if k_new == 0:
                return
        else:
            k_new = min(block.shape[0], self.m)
        values, idx = torch.topk(by_feature, k_new, dim=1, sorted=False)
        found = rows[idx]
        if self._values is not None:
            values, found = torch.cat([self._values, values], 1), torch.cat([self._rows, found], 1)
        if values.shape[1] > self.m:
            values, keep = torch.topk(values, self.m, dim=1, sorted=False)
            found = torch.gather(found, 1, keep)
        self._values, self._rows = values, found

    def _result(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._sorted is None:
            if self._values is None:
                raise ValueError("no documents were tracked")
            values, order = torch.sort(self._values, dim=1, descending=True, stable=True)
            self._sorted = (values.T.contiguous(), torch.gather(self._rows, 1, order).T.contiguous())
        return self._sorted

    @property
    def values(self) -> torch.Tensor:
        """[m, F] the top activations of every feature, largest first."""
        return self._result()[0]

    @property
    def rows(self) -> torch.Tensor:
        """[m, F] the document rows of `values`."""
        return self._result()[1]


def assign_top(values: torch.Tensor, rows: torch.Tensor, docs: sparse.csr_matrix, base: np.ndarray, *,
               threshold: float, min_lift: float, min_exemplars: int) -> Assignment:
    """Assign from each feature's top documents (`TopTracker`); `base` [V] is each descriptor's corpus rate."""
    n_features = values.shape[1]
    valid = (values > 0).numpy()
    feats = np.broadcast_to(np.arange(n_features), valid.shape)[valid]
    member = sparse.csr_matrix((np.ones(int(valid.sum()), dtype=np.float32), (feats, rows.numpy()[valid])),
                               shape=(n_features, docs.shape[0]))
    counts = np.asarray((member @ docs).todense(), dtype=np.float32)  # [F, V] exemplars carrying each descriptor
    n_ex = valid.sum(0)
    freq = counts / np.maximum(n_ex, 1)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.where(base > 0, freq / np.maximum(base, 1e-12), 0.0).astype(np.float32)
    assigned = (freq >= threshold) & (lift >= min_lift) & (n_ex >= min_exemplars)[:, None] & (counts > 0)
    return Assignment(n_ex.astype(np.int64), freq, lift, assigned)


def n_top(n_documents: int, top_percent: float) -> int:
    """Exemplars per feature: the top k % of the documents, at least one."""
    return max(1, math.ceil(n_documents * top_percent / 100.0))


def assign(acts: torch.Tensor, docs: sparse.csr_matrix, *, top_percent: float, threshold: float, min_lift: float,
           min_exemplars: int) -> Assignment:
    """Assign descriptors to every feature: `acts` [n, F] feature activations, `docs` [n, V] from `descriptor_matrix`."""
    tracker = TopTracker(n_top(acts.shape[0], top_percent))
    tracker.update(acts, torch.arange(acts.shape[0]))
    base = np.asarray(docs.mean(0)).ravel()
    return assign_top(tracker.values, tracker.rows, docs, base, threshold=threshold, min_lift=min_lift,
                      min_exemplars=min_exemplars)


def balanced_halves(doc_descriptors: Sequence[Sequence[int]], counts: Sequence[int], seed: int) -> np.ndarray:
    """A seeded 50/50 split of the documents, balanced over descriptors; True = the first half.

    Documents are grouped by their most frequent descriptor (those without
    any form one group), and each group is shuffled and dealt alternately, so
    every descriptor's documents fall about half in each half (the paper's
    calibration / validation split).
    """
    rng = np.random.default_rng(seed)
    key = [max(vs, key=lambda v: (counts[v], -v)) if len(vs) else -1 for vs in doc_descriptors]
    first = np.zeros(len(key), dtype=bool)
    groups: dict[int, list[int]] = {}
    for i, k in enumerate(key):
        groups.setdefault(k, []).append(i)
    flip = 0
    for k in sorted(groups):
        members = np.asarray(groups[k])[rng.permutation(len(groups[k]))]
        first[members[flip::2]] = True
        flip ^= len(members) % 2  # an odd group's extra document goes to the other half next time
    return first


def jaccard_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Jaccard of two [F, V] boolean sets; NaN where both rows are empty (nothing to compare)."""
    inter = (a & b).sum(1).astype(np.float64)
    union = (a | b).sum(1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def jaccard(a: set, b: set) -> float | None:
    """|a ∩ b| / |a ∪ b|; None when both are empty."""
    union = a | b
    return len(a & b) / len(union) if union else None


def majority_labels(doc_descriptors: Sequence[Sequence[int]], labels: Sequence[str | None],
                    n_descriptors: int) -> list[str | None]:
    """Each descriptor's most common gold label among the documents that carry it (None: no labelled document)."""
    tallies: list[dict[str, int]] = [dict() for _ in range(n_descriptors)]
    for vs, label in zip(doc_descriptors, labels):
        if label is None:
            continue
        for v in vs:
            tallies[v][label] = tallies[v].get(label, 0) + 1
    return [min(t, key=lambda lab: (-t[lab], lab)) if t else None for t in tallies]


def precision_recall_at_k(ranked: Sequence[Sequence[str]], truth: Sequence[str], gold_of: dict[str, str | None],
                          k: int) -> dict:
    """Precision@K over features with >= 1 descriptor, recall@K over all features (truth among the top K).

    A descriptor is correct for a feature when its gold label (`gold_of`,
    its majority label in the corpus) is the feature's true label.
    """
    precisions, hits = [], 0
    for names, label in zip(ranked, truth):
        top = list(names)[:k]
        correct = [gold_of.get(d) == label for d in top]
        if top:
            precisions.append(sum(correct) / len(top))
        hits += any(correct)
    return {"k": k, "precision": float(np.mean(precisions)) if precisions else None,
            "recall": hits / len(truth) if len(truth) else None, "features_with_descriptors": len(precisions),
            "features": len(truth)}


def mean_ci(values: Sequence[float], lo: float = 0.0, hi: float = 1.0) -> dict:
    """Mean with a normal-approximation 95 % interval (NaNs dropped), clipped to the values' range [lo, hi]."""
    x = np.asarray([v for v in values if v is not None and not np.isnan(v)], dtype=np.float64)
    if x.size == 0:
        return {"mean": None, "ci95": None, "n": 0}
    half = 1.96 * x.std(ddof=1) / math.sqrt(x.size) if x.size > 1 else 0.0
    return {"mean": float(x.mean()), "ci95": [max(lo, float(x.mean() - half)), min(hi, float(x.mean() + half))],
            "n": int(x.size)}
