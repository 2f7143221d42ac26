"""benchmarks/pool_once.py (issue 25): several poolings from one forward pass over documents batched by length.

The script sorts documents by token count and pads each batch only to its own longest document. What must hold:
every document's pooled vector is the one `cache --pool` gives it with no padding at all (batch size 1), rows
stay in corpus order, and the files carry the settings record `cache --pool` writes (so `cache` with the same
settings finds them complete and leaves them alone).
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pool_once.py"
HOOK = "blocks.1.hook_resid_post"
# lengths far apart and out of order, so sorting by length changes which documents share a batch and padding
# reaches every batch but the last
TEXTS = ["word " * 30, "a b", "one two three four five six seven eight", "x", "the " * 12 + "end",
         "many words here " * 5, "short one", "q r s t u v w"]


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"doc{i}", "text": t}) for i, t in enumerate(TEXTS)) + "\n")
    return path


def _run(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *args])
    runpy.run_path(str(SCRIPT), run_name="__main__")


def test_pool_once_gives_each_document_its_unpadded_vector_in_corpus_order(tiny_model_dirs, corpus, tmp_path,
                                                                          monkeypatch):
    from activations.cache_writer import cache_activations
    from activations.pooled_reader import PooledCache

    model = str(tiny_model_dirs["llama"])
    prefix = tmp_path / "once"
    _run(monkeypatch, "--model", model, "--corpus", str(corpus), "--hook", HOOK, "--pools", "mean,last,cls",
         "--context-length", "16", "--batch-size", "3", "--out-prefix", str(prefix))
    for pool in ("mean", "last", "cls"):
        alone = tmp_path / f"alone_{pool}.h5"  # the toolkit's own pooled cache, one document per batch: no padding
        cache_activations(model=model, corpus=str(corpus), hooks=[HOOK], context_length=16, batch_size=1,
                          dtype="float32", out=alone, pool=pool, progress=False)
        with PooledCache(Path(f"{prefix}_{pool}.h5")) as once, PooledCache(alone) as ref:
            assert once.doc_ids() == [f"doc{i}" for i in range(len(TEXTS))] == ref.doc_ids()
            assert once.pool == pool
            np.testing.assert_array_equal(once.lengths(), ref.lengths())
            assert len(set(once.lengths().tolist())) > 3 and int(once.lengths().max()) == 16  # truncation too
            np.testing.assert_allclose(once.pooled(HOOK), ref.pooled(HOOK), rtol=1e-4, atol=1e-5)


def test_cache_with_the_same_settings_finds_the_files_complete(tiny_model_dirs, corpus, tmp_path, monkeypatch):
    from activations.cache_writer import cache_activations

    model = str(tiny_model_dirs["gpt2"])
    prefix = tmp_path / "once"
    _run(monkeypatch, "--model", model, "--corpus", str(corpus), "--hook", HOOK, "--pools", "mean",
         "--context-length", "16", "--batch-size", "4", "--out-prefix", str(prefix))
    out = Path(f"{prefix}_mean.h5")
    before = out.read_bytes()
    result = cache_activations(model=model, corpus=str(corpus), hooks=[HOOK], context_length=16, batch_size=4,
                               dtype="float32", out=out, pool="mean", progress=False)
    assert result.n_contexts == len(TEXTS)
    assert out.read_bytes() == before  # nothing recomputed or rewritten
