"""The real offline default model: loads without network, caches sensible activations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from activations.cache_writer import cache_activations
from activations.reader import ActivationCache

pytestmark = pytest.mark.slow  # the real SmolLM2

ROOT = Path(__file__).resolve().parents[1]


def test_default_model_is_real_smollm2(default_model):
    model, tokenizer = default_model.model, default_model.tokenizer
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        probs = model(ids).logits[0, -1].softmax(-1)
    assert tokenizer.decode(int(probs.argmax())) == " Paris" and probs.max() > 0.5


def test_default_model_and_corpus_cache_real_activations(default_model, tmp_path):
    out = cache_activations(model="default", corpus="default", hooks=["blocks.1.hook_resid_post", "blocks.2.mlp.hook_post"],
                            context_length=32, max_tokens=32 * 8, batch_size=4, out=tmp_path / "d.h5", progress=False).path
    with ActivationCache(out) as cache:
        assert cache.n_contexts == 8 and cache.width("blocks.2.mlp.hook_post") == 1536
        text = default_model.tokenizer.decode(cache.tokens([0])[0])
        assert len(text.split()) > 10  # real words from the Wikipedia leads
        for hook in cache.hooks:
            acts = cache.acts(hook, range(8))
            assert np.isfinite(acts).all()
            assert acts.std(axis=(0, 1)).min() > 0  # no constant dimension
            assert acts.std() > 1e-2


def test_hooks_command_lists_every_hook_with_width():
    result = subprocess.run([sys.executable, str(ROOT / "cli.py"), "hooks", "--model", "default"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    rows = [line.split("\t") for line in result.stdout.splitlines() if line.startswith("blocks.")]
    assert len(rows) == 30 * 4
    widths = dict(rows)
    assert widths["blocks.0.hook_resid_pre"] == "576" and widths["blocks.29.mlp.hook_post"] == "1536"
