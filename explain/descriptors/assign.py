"""Descriptor assignment and its measures, as array operations over all features at once.

The paper's rule (Mondal et al., the default): a feature's exemplars are its
top k % documents by activation; a descriptor c is assigned when its
frequency f(c) among them is at least T. f(c) is, as in the paper, c's
share of all descriptor occurrences in the exemplar set
(`frequency="occurrences"`); `frequency="documents"` (an option) is the
share of exemplar documents that carry c, the same number when every
document has one descriptor. A document at activation <= 0 is not an
exemplar: zeros carry no ranking (a ReLU'd feature active on fewer than
k % of the documents would otherwise be described by tie-broken zeros);
for a feature active on at least k % of the documents (every dense BERT
neuron of the paper) this is exactly the paper's set.

Our additions, options only: `min_lift` (the frequency must also be at
least that many times the descriptor's rate in the corpus, so that the
corpus's most common descriptor, e.g. "neutral" for a third of the tweets,
is not assigned to every feature) and `min_exemplars` > 1 (a feature
active on fewer documents gets no descriptor).

Everything is matrix algebra: each feature's top documents come from a
streaming `torch.topk` over blocks of documents (all features at once),
exemplar membership is a sparse [F, n] matrix, and descriptor counts are its
product with the sparse [n, V] document x descriptor matrix; there is no
Python loop over features and no dense [n, F] matrix. Consistency uses
repeated calibration / validation splits by iterative stratification over
the document x descriptor matrix (`stratified_halves`), and every half's top
documents are read from one oversampled top list of the whole corpus
(`half_tops`), so N splits cost no extra pass over the corpus.
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
    Held feature-major ([F, 2m], unsorted) because `torch.topk` along the
    last axis is the fast one. Once m values are held, only block entries
    above a feature's m-th value at the last merge can enter (a conservative
    filter, since held values only grow): each block costs one comparison
    plus a top-k of its entrants, appended to the m spare columns, and one
    top-k back to m runs only when the spare columns are full. All features
    at once, always.

    Every array is allocated once and written with `out=`: [4096 x 10,000]
    blocks otherwise allocate and free several arrays of hundreds of MB per
    block, each mapped and unmapped by the C allocator (a third of the CPU
    went to page faults). Rows are held as int32 and returned as int64.
    """

    def __init__(self, m: int):
        self.m = m
        self._values: torch.Tensor | None = None  # [F, 2m]: columns [:_used] held, unsorted
        self._rows: torch.Tensor | None = None  # [F, 2m] int32: the document rows of `_values`
        self._used = 0
        self._kth: torch.Tensor | None = None  # [F] the m-th value at the last merge: the entry filter
        self._scratch: dict[str, torch.Tensor] = {}  # flat arrays kept between blocks (`_array`)
        self._sorted: tuple[torch.Tensor, torch.Tensor] | None = None

    def _array(self, name: str, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """A contiguous [shape] view of the flat scratch array `name`, allocated again only for a larger block."""
        numel = shape[0] * shape[1]
        flat = self._scratch.get(name)
        if flat is None or flat.numel() < numel or flat.dtype != dtype:
            flat = self._scratch[name] = torch.empty(numel, dtype=dtype)
        return flat[:numel].view(shape)

    def update(self, block: torch.Tensor, rows: torch.Tensor) -> None:
        """Merge activations `block` [b, F] of the documents `rows` [b]."""
        (b, n_features), m = block.shape, self.m
        if b == 0:
            return
        if int(rows.max()) >= 2 ** 31:
            raise ValueError(f"document row {int(rows.max())} does not fit the tracker's int32 rows")
        self._sorted = None
        if self._values is None:
            self._values = torch.empty(n_features, 2 * m, dtype=block.dtype)
            self._rows = torch.empty(n_features, 2 * m, dtype=torch.int32)
        dtype = self._values.dtype
        by_feature = self._array("by_feature", (n_features, b), dtype).copy_(block.T)  # top-k 2x faster contiguous
        k_new = min(b, m)
        if self._kth is not None:
            above = torch.gt(by_feature, self._kth[:, None], out=self._array("above", (n_features, b), dtype))
            k_new = min(k_new, int(above.sum(1).max()))  # counted in float: exact, and no int64 copy of the block
            if k_new == 0:
                return
        if self._used + k_new > 2 * m:
            self._merge()
        new = slice(self._used, self._used + k_new)
        index = self._array("index", (n_features, k_new), torch.int64)
        torch.topk(by_feature, k_new, dim=1, sorted=False, out=(self._values[:, new], index))
        torch.gather(rows.to(torch.int32).expand(n_features, b), 1, index, out=self._rows[:, new])
        self._used += k_new
        if self._kth is None and self._used >= m:
            self._merge()

    def _merge(self) -> None:
        """Keep each feature's m largest held values in columns [:m]; once m are held, the m-th is the filter."""
        m, held = self.m, slice(0, self._used)
        shape = (self._values.shape[0], m)
        if self._used > m:
            top, index = self._array("top", shape, self._values.dtype), self._array("index", shape, torch.int64)
            torch.topk(self._values[:, held], m, dim=1, sorted=False, out=(top, index))
            self._values[:, :m] = top
            self._rows[:, :m] = torch.gather(self._rows[:, held], 1, index, out=self._array("top_rows", shape,
                                                                                               torch.int32))
            self._used = m
        if self._used == m:
            self._kth = torch.amin(self._values[:, :m], 1)

    def _result(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._sorted is None:
            if self._values is None:
                raise ValueError("no documents were tracked")
            self._merge()
            held = slice(0, self._used)
            values, order = torch.sort(self._values[:, held], dim=1, descending=True, stable=True)
            self._sorted = (values.T.contiguous(), torch.gather(self._rows[:, held], 1, order).long().T.contiguous())
            self._scratch.clear()  # streaming is usually over: a later block allocates them again
        return self._sorted

    @property
    def values(self) -> torch.Tensor:
        """[m, F] the top activations of every feature, largest first."""
        return self._result()[0]

    @property
    def rows(self) -> torch.Tensor:
        """[m, F] the document rows of `values`."""
        return self._result()[1]


FREQUENCIES = ("occurrences", "documents")


def base_rate(docs: sparse.csr_matrix, frequency: str, rows: np.ndarray | None = None) -> np.ndarray:
    """[V] each descriptor's frequency in the corpus (or its `rows`), in the same definition as among exemplars."""
    sub = docs if rows is None else docs[rows]
    counts = np.asarray(sub.sum(0), dtype=np.float64).ravel()
    denom = counts.sum() if frequency == "occurrences" else sub.shape[0]
    return counts / max(denom, 1)


def assign_top(values: torch.Tensor, rows: torch.Tensor, docs: sparse.csr_matrix, base: np.ndarray | None = None, *,
               threshold: float, min_lift: float | None = None, min_exemplars: int = 1,
               frequency: str = "occurrences") -> Assignment:
    """Assign from each feature's top documents (`TopTracker`, largest first); `base` [V]: `base_rate` (lift only).

    `min_lift` None is the paper's rule (frequency >= `threshold` only).
    """
    if frequency not in FREQUENCIES:
        raise ValueError(f"frequency {frequency!r} is not one of {FREQUENCIES}")
    n_features = values.shape[1]
    valid = (values > 0).numpy()
    feats = np.broadcast_to(np.arange(n_features), valid.shape)[valid]
    member = sparse.csr_matrix((np.ones(int(valid.sum()), dtype=np.float32), (feats, rows.numpy()[valid])),
                               shape=(n_features, docs.shape[0]))
    counts = np.asarray((member @ docs).todense(), dtype=np.float32)  # [F, V] exemplars carrying each descriptor
    n_ex = valid.sum(0)
    denom = counts.sum(1) if frequency == "occurrences" else n_ex
    freq = counts / np.maximum(denom, 1)[:, None]
    if base is None:
        base = base_rate(docs, frequency)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.where(base > 0, freq / np.maximum(base, 1e-12), 0.0).astype(np.float32)
    assigned = (freq >= threshold) & (n_ex >= min_exemplars)[:, None] & (counts > 0)
    if min_lift is not None:
        assigned &= lift >= min_lift
    return Assignment(n_ex.astype(np.int64), freq, lift, assigned)


def n_top(n_documents: int, top_percent: float) -> int:
    """Exemplars per feature: the top k % of the documents, at least one."""
    return max(1, math.ceil(n_documents * top_percent / 100.0))


def stratified_halves(doc_descriptors: Sequence[Sequence[int]], n_descriptors: int, seed: int) -> np.ndarray:
    """A seeded 50/50 split balanced on every descriptor (iterative stratification); True = the first half.

    Sechidis, Tsoumakas & Vlahavas (2011), two folds of equal size: take the
    descriptor with the fewest documents still unplaced (ties: at random);
    deal each of its unplaced documents (in random order) to the half that
    still wants the most documents of that descriptor, ties to the half that
    wants the most documents overall, then at random; every descriptor of the
    document lowers that half's wants. Documents without descriptors go last,
    to the half that wants more. So rare descriptors are balanced first,
    while there is room, and every descriptor, not just each document's most
    frequent one, ends about half in each half.
    """
    rng = np.random.default_rng(seed)
    n = len(doc_descriptors)
    docs_of: list[list[int]] = [[] for _ in range(n_descriptors)]
    for i, vs in enumerate(doc_descriptors):
        for v in vs:
            docs_of[v].append(i)
    left = [len(d) for d in docs_of]  # unplaced documents per descriptor (plain lists: the loop is per document)
    want = [[c / 2.0 for c in left], [c / 2.0 for c in left]]  # per half, per descriptor
    want_total = [n / 2.0, n / 2.0]
    half = [-1] * n

    def choose(a: float, b: float) -> int:
        return (0 if a > b else 1) if a != b else int(rng.integers(2))

    while True:
        counts = np.asarray(left)
        open_ = np.flatnonzero(counts > 0)
        if open_.size == 0:
            break
        fewest = counts[open_].min()
        label = int(rng.choice(open_[counts[open_] == fewest]))
        pending = [i for i in docs_of[label] if half[i] < 0]
        for j in rng.permutation(len(pending)).tolist():
            i = pending[j]
            a, b = want[0][label], want[1][label]
            h = choose(want_total[0], want_total[1]) if a == b else (0 if a > b else 1)
            half[i] = h
            want_total[h] -= 1
            wanted = want[h]
            for v in doc_descriptors[i]:
                wanted[v] -= 1
                left[v] -= 1
    for i in rng.permutation([i for i in range(n) if half[i] < 0]).tolist():
        h = choose(want_total[0], want_total[1])
        half[i] = h
        want_total[h] -= 1
    return np.asarray(half) == 0


def repeated_halves(doc_descriptors: Sequence[Sequence[int]], n_descriptors: int, n_splits: int,
                    seed: int) -> list[np.ndarray]:
    """`n_splits` independent stratified halves (`stratified_halves`), seeded from `seed`."""
    seeds = np.random.SeedSequence(seed).generate_state(n_splits)
    return [stratified_halves(doc_descriptors, n_descriptors, int(s)) for s in seeds]


def half_tops(values: torch.Tensor, rows: torch.Tensor, first: np.ndarray, m_first: int, m_second: int,
              n_documents: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], np.ndarray]:
    """Each half's top documents, read from the whole corpus's top M ([M, F] `values`/`rows`, largest first).

    The top m documents of a half are its first m among the whole corpus's
    top M whenever at least m of them belong to it, or the M-th value is
    <= 0 (every document above 0 is then in the list, and the others are
    not exemplars), or M is the whole corpus. Returns the two halves'
    ([m, F] values, rows), slots past the documents found at value 0 (not
    exemplars), and the [F] boolean of the features for which none of that
    holds in some half: those need their exact top documents, another pass.
    """
    member = torch.from_numpy(first)[rows]  # [M, F]: the document belongs to the first half
    complete = values.shape[0] >= n_documents
    tops, short = [], np.zeros(values.shape[1], dtype=bool)
    for in_half, m in ((member, m_first), (~member, m_second)):
        position = torch.cumsum(in_half.to(torch.int32), 0)  # 1-based rank of the document within its half
        take = in_half & (position <= m)
        r, c = take.nonzero(as_tuple=True)
        slot = position[r, c].long() - 1
        vals = torch.zeros(m, values.shape[1], dtype=values.dtype)
        found = torch.zeros(m, values.shape[1], dtype=rows.dtype)
        vals[slot, c] = values[r, c]
        found[slot, c] = rows[r, c]
        if not complete:
            short |= ((position[-1] < m) & (values[-1] > 0)).numpy()
        tops.append((vals, found))
    return tops, short


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
