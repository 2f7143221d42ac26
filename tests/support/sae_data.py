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


def hierarchical_data(d: int = 32, parents: int = 4, children: int = 3, n: int = 20_000, p_parent: float = 0.15,
                      p_child: float = 0.8, seed: int = 0):
    """Parents with mutually exclusive children that fire only with their parent (the setting of feature absorption).

    Each parent fires with probability `p_parent`; when it does, one of its children (uniformly) fires with it
    with probability `p_child`, else none. Directions are orthonormal (parents first), magnitudes U(0.8, 1.2).
    Returns (X, directions [parents + parents·children, d], parent_active [n, parents] bool).
    """
    g = torch.Generator().manual_seed(seed)
    n_features = parents * (1 + children)
    directions = torch.linalg.qr(torch.randn(d, n_features, generator=g))[0].T.contiguous()
    parent_on = torch.rand(n, parents, generator=g) < p_parent
    with_child = parent_on & (torch.rand(n, parents, generator=g) < p_child)
    which = torch.randint(0, children, (n, parents), generator=g)
    child_on = torch.zeros(n, parents, children, dtype=torch.bool)
    child_on.scatter_(2, which.unsqueeze(-1), with_child.unsqueeze(-1))
    active = torch.cat([parent_on, child_on.reshape(n, -1)], dim=1)
    codes = active * (0.8 + 0.4 * torch.rand(n, n_features, generator=g))
    return codes @ directions, directions, parent_on


def parents_f1(dictionary, x: torch.Tensor, parent_on: torch.Tensor) -> float:
    """Mean over parents of the best F1 of any latent's firing (code > 0) against the parent's firing."""
    fires = dictionary.encode(x) > 0
    scores = []
    for truth in parent_on.T:
        tp = (fires & truth[:, None]).sum(0).float()
        fp = (fires & ~truth[:, None]).sum(0).float()
        fn = (~fires & truth[:, None]).sum(0).float()
        scores.append(float((2 * tp / (2 * tp + fp + fn).clamp_min(1)).max()))
    return sum(scores) / len(scores)
