"""The inputs of the `explain` pipeline tests: a tiny Llama's fragment cache and three saved dictionaries.

Built once per session by the `setup` fixture (tests/conftest.py). Dictionaries are built with the sae package's
own classes and saved with its save function. Feature 0 of `single` is a tied-SAE row along the embedding of " dog"
with a bias that lets only that token through, so it is a real single-token feature of the cache; feature 3 is dead.
`pca` and `neuron` are bases of the residual stream after block 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from activations.cache_writer import cache_activations
from activations.reader import ActivationCache
from sae.baselines import StreamingMoments, neuron_basis, pca_from_moments
from sae.dictionaries import TiedSAE

EMBED = "blocks.0.hook_resid_pre"
RESID = "blocks.1.hook_resid_post"
WORDS = [" the", " dog", " fox", " capital", " jumps", " over", " lazy", " store", " Mary", " John",
         " went", " to", " and", " of", " features", " models", " 42", ",", "."]


def build_explain_inputs(tmp: Path, model_dir: Path) -> dict:
    """Write corpus, cache and dictionaries under `tmp`; `model_dir` is the tiny Llama (its tokenizer adds BOS)."""
    rng = np.random.default_rng(0)
    docs = ["Once" + "".join(rng.choice(WORDS, size=40)) for _ in range(150)]
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cache = cache_activations(model=str(model_dir), corpus=str(corpus), hooks=[EMBED, RESID], context_length=16,
                              max_tokens=16 * 150, batch_size=64, dtype="float32", out=tmp / "frags.h5",
                              fragments=True, progress=False).path
    from transformers import AutoTokenizer

    dog = AutoTokenizer.from_pretrained(model_dir).encode(" dog", add_special_tokens=False)
    assert len(dog) == 1
    with ActivationCache(cache) as c:
        assert c.bos_prepended and c.fragments and c.n_contexts == 150
        tokens = c.tokens()[:, 1:].reshape(-1)
        emb = torch.from_numpy(c.acts(EMBED, range(c.n_contexts)))[:, 1:].reshape(-1, c.width(EMBED))
        resid = torch.from_numpy(c.acts(RESID, range(c.n_contexts)))[:, 1:].reshape(-1, c.width(RESID))
    is_dog = torch.from_numpy(tokens == dog[0])
    direction = emb[is_dog][0] / emb[is_dog][0].norm()
    proj = emb @ direction
    lo, hi = float(proj[is_dog].min()), float(proj[~is_dog].max())
    assert lo > hi  # the embedding separates " dog" from every other token
    g = torch.Generator().manual_seed(0)
    m = torch.cat([direction[None], torch.randn(3, direction.numel(), generator=g)])
    single = TiedSAE({"M": m, "b": torch.tensor([-(lo + hi) / 2, 0.0, 0.0, -1e6])},  # feature 3 is dead
                     {"hook": EMBED, "d_in": direction.numel(), "n_features": 4}).save(tmp / "dicts" / "single")
    moments = StreamingMoments(resid.shape[1])
    moments.update(resid)
    pca = pca_from_moments(moments, resid, {"hook": RESID}).save(tmp / "dicts" / "pca")
    neuron = neuron_basis(resid.shape[1], {"hook": RESID}).save(tmp / "dicts" / "neuron")
    return {"tmp": tmp, "cache": cache, "single": single, "pca": pca, "neuron": neuron}
