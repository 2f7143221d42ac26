"""Shared helpers for the sae tests: synthetic sparse data with a known dictionary, a real tiny cache, and an
autouse fixture that keeps the tests of each module importing it on one torch thread.

(Named test_sae_* so it sits with the tests it serves; it defines no tests.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

HOOK = "blocks.1.hook_resid_post"


def sparse_data(d: int = 16, n_true: int = 24, n: int = 20_000, p: float = 0.05, seed: int = 0):
    """x = Σ_j c_j g_j with each c_j active with probability p, magnitude U(0,1); returns (X, G)."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.randn(n_true, d, generator=g)
    truth = truth / truth.norm(dim=1, keepdim=True)
    codes = (torch.rand(n, n_true, generator=g) < p) * torch.rand(n, n_true, generator=g)
    return codes @ truth, truth


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny; on a shared 2-core machine a second thread only adds waiting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_cache(tiny_model_dirs, tmp_path_factory) -> Path:
    """A real cache written by the real writer from the tiny GPT-NeoX model (width 32)."""
    import json

    from activations.cache_writer import cache_activations

    root = tmp_path_factory.mktemp("sae_cache")
    corpus = root / "corpus.jsonl"
    docs = [f"Document {i}: the quick brown fox {i} jumps over the lazy dog near Paris and Berlin. " * 4
            for i in range(12)]
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in docs) + "\n", encoding="utf-8")
    cache_activations(model=str(tiny_model_dirs["gpt_neox"]), corpus=str(corpus),
                      hooks=[HOOK, "blocks.0.mlp.hook_post"], context_length=16, max_tokens=16 * 64,
                      batch_size=16, dtype="float32", out=root / "tiny.h5", progress=False)
    return root / "tiny.h5"
