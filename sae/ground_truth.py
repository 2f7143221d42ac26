"""Recovery of known features: MMCS, F1 and MCC of dictionaries measured on a cache that records its truth.

Defined as SynthSAEBench defines them (Chanin & Garriga-Alonso 2026,
`sae_lens.synthetic.evals`), so the numbers mean the same here and there:

- MCC: the optimal one-to-one matching (Hungarian) between the dictionary's
  directions and the true ones on |cosine similarity|, then the mean matched
  |cosine|, over min(n_features, n_true) pairs;
- F1: each latent is matched to the true feature whose direction has the
  highest |cosine| with its own, and treated as a binary classifier of that
  feature firing (latent ≠ 0 against true feature active) over the measured
  tokens; F1 per latent (0 where undefined), averaged over all latents (dead
  ones count as 0, as theirs do); precision and recall likewise;
- MMCS: mean over the true directions of the best cosine with any of the
  dictionary's (the recovery measure of `benchmarks/bench_recovery.py`).

The truth itself lives in the cache (`activations.truth`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from activations.truth import read_truth
from sae.metrics import mmcs


def abs_cosines(a: Tensor, b: Tensor) -> Tensor:
    """[len(a), len(b)] |cosine similarity| of the rows of a and b."""
    a = a.to(torch.float32)
    b = b.to(torch.float32)
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return (a @ b.T).abs()


def mean_correlation_coefficient(directions: Tensor, truth: Tensor) -> float:
    """Mean |cosine| of the optimal one-to-one matching of `directions` to `truth` (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    cos = abs_cosines(directions, truth).numpy()
    rows, cols = linear_sum_assignment(1.0 - cos)
    return float(cos[rows, cols].mean())


class Classification:
    """Per-latent TP/FP/FN counts of each latent as a detector of its best-matching true feature."""

    def __init__(self, directions: Tensor, truth: Tensor):
        self.best = abs_cosines(directions, truth).argmax(dim=1)  # [n_features]
        n = self.best.numel()
        self.tp = torch.zeros(n, dtype=torch.float64)
        self.fp = torch.zeros(n, dtype=torch.float64)
        self.fn = torch.zeros(n, dtype=torch.float64)

    def add(self, codes: Tensor, true_firing: Tensor) -> None:
        fires = codes != 0
        truth = true_firing[:, self.best]
        self.tp += (fires & truth).sum(0).to(torch.float64)
        self.fp += (fires & ~truth).sum(0).to(torch.float64)
        self.fn += (~fires & truth).sum(0).to(torch.float64)

    def scores(self) -> dict[str, float]:
        zero = torch.zeros_like(self.tp)
        precision = torch.where(self.tp + self.fp > 0, self.tp / (self.tp + self.fp).clamp_min(1), zero)
        recall = torch.where(self.tp + self.fn > 0, self.tp / (self.tp + self.fn).clamp_min(1), zero)
        total = precision + recall
        f1 = torch.where(total > 0, 2 * precision * recall / total.clamp_min(1e-12), zero)
        return {"truth_f1": float(f1.mean()), "truth_precision": float(precision.mean()),
                "truth_recall": float(recall.mean())}


@torch.no_grad()
def ground_truth_metrics(dictionaries: Sequence, cache, hook: str, contexts: tuple[int, int], tokens: int,
                         skip_first: bool, max_norm: float | None = None, device: str = "cpu",
                         batch_contexts: int = 16) -> list[dict] | None:
    """MMCS, F1, MCC (and precision, recall, the number of true features) of each dictionary on the first
    `tokens` tokens of contexts [lo, hi) of `cache`, or None when the cache records no truth for `hook`.

    The tokens are the ones the other metrics see (position 0 left out when `skip_first`, tokens above
    `max_norm` left out), read in order, since each needs its row of the truth.
    """
    from activations.reader import ActivationCache

    truth = read_truth(cache, hook, contexts)
    if truth is None:
        return None
    counts = [Classification(d.directions.detach().cpu(), truth.directions) for d in dictionaries]
    lo, hi = contexts
    first = 1 if skip_first else 0
    seen = 0
    with ActivationCache(cache) as c:
        ctx = c.context_length
        for start in range(lo, hi, batch_contexts):
            if seen >= tokens:
                break
            stop = min(hi, start + batch_contexts)
            acts = torch.from_numpy(c.acts(hook, np.arange(start, stop)))[:, first:]
            ids = (np.arange(start, stop)[:, None] * ctx + np.arange(first, ctx)[None, :]).reshape(-1)
            x = acts.reshape(-1, acts.shape[-1])
            keep = torch.ones(x.shape[0], dtype=torch.bool)
            if max_norm is not None:
                keep &= x.norm(dim=1) <= max_norm
            keep[int(torch.searchsorted(keep.cumsum(0), torch.tensor(tokens - seen))) + 1:] = False  # stop at `tokens`
            x, ids = x[keep], ids[keep.numpy()]
            firing = truth.dense(ids)
            for d, count in zip(dictionaries, counts):
                count.add(d.encode(x.to(device)).cpu(), firing)
            seen += x.shape[0]
    out = []
    for d, count in zip(dictionaries, counts):
        directions = d.directions.detach().cpu()
        out.append({**count.scores(), "truth_mmcs": mmcs(truth.directions, directions),
                    "truth_mcc": mean_correlation_coefficient(directions, truth.directions),
                    "truth_features": truth.n_true, "truth_tokens": seen})
    return out
