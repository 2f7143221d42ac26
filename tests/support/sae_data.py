"""Synthetic sparse data with a known dictionary, for the sae tests; the hook of the `tiny_cache` fixture."""

from __future__ import annotations

import torch

HOOK = "blocks.1.hook_resid_post"  # a hook of the `tiny_cache` fixture (tests/conftest.py)


def sparse_data(d: int = 16, n_true: int = 24, n: int = 20_000, p: float = 0.05, seed: int = 0,
                exponential: bool = False):
    """x = Σ_j c_j g_j with each c_j active with probability p, magnitude U(0,1); returns (X, G).

    `exponential`: magnitudes Exp(1) instead (many small activations and a long tail, as in
    benchmarks/bench_recovery.py's superposition sets).
    """
    g = torch.Generator().manual_seed(seed)
    truth = torch.randn(n_true, d, generator=g)
    truth = truth / truth.norm(dim=1, keepdim=True)
    on = torch.rand(n, n_true, generator=g) < p
    mags = torch.empty(n, n_true).exponential_(1.0, generator=g) if exponential else torch.rand(n, n_true, generator=g)
    return on * mags @ truth, truth
