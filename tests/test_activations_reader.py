"""Reader API: shuffled batches cover the data, resume skipping is exact, memory stays bounded."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from activations.cache_writer import cache_activations
from common.errors import UserError
from activations.reader import ActivationCache

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def small_cache(tiny_model_dirs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reader")
    corpus = tmp / "corpus.txt"
    rng = np.random.default_rng(1)
    corpus.write_text(" ".join(rng.choice(["alpha", "Paris", "dog", "42", "the", "quick"], size=6000)))
    # llama's tokenizer prepends BOS, so skip_bos matters here.
    return cache_activations(model=str(tiny_model_dirs["llama"]), corpus=str(corpus), hooks=[HOOK],
                             context_length=16, max_tokens=16 * 300, batch_size=16, dtype="float32",
                             out=tmp / "c.h5", progress=False).path


def _rows(x: torch.Tensor) -> Counter:
    """Multiset of rows: identical prefixes give identical activations, so rows repeat legitimately."""
    return Counter(row.numpy().tobytes() for row in x)


def test_one_epoch_yields_every_non_bos_token_once(small_cache):
    with ActivationCache(small_cache) as cache:
        assert cache.bos_prepended
        everything = torch.from_numpy(cache.acts(HOOK, range(cache.n_contexts)))
        expected = _rows(everything[:, 1:].reshape(-1, cache.width(HOOK)))
        # A small buffer forces many buffers, each dropping < batch_size tokens.
        batches = list(cache.iter_batches(HOOK, batch_size=32, seed=3, buffer_bytes=16 * 15 * 32 * 4 * 8))
        got = torch.cat(batches)
        got_rows = _rows(got)
        assert not (got_rows - expected)  # no token more often than it occurs in the cache
        n_buffers = -(-cache.n_contexts // 8)
        assert got.shape[0] > expected.total() - 32 * n_buffers  # each buffer drops < one batch
        assert not (got_rows & _rows(everything[:, 0]))  # BOS positions are skipped


def test_batches_are_shuffled_and_deterministic(small_cache):
    with ActivationCache(small_cache) as cache:
        a = torch.cat(list(cache.iter_batches(HOOK, 64, n_tokens=640, seed=0)))
        b = torch.cat(list(cache.iter_batches(HOOK, 64, n_tokens=640, seed=0)))
        c = torch.cat(list(cache.iter_batches(HOOK, 64, n_tokens=640, seed=1)))
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert not torch.equal(a, c)
        sequential = torch.from_numpy(cache.acts(HOOK, range(cache.n_contexts)))[:, 1:].reshape(-1, cache.width(HOOK))
        assert not torch.equal(a, sequential[:640])


def test_start_batch_resumes_exactly_across_epochs(small_cache):
    with ActivationCache(small_cache) as cache:
        per_epoch = cache.n_tokens() // 64
        total = int(per_epoch * 2.5) * 64  # spans three epochs
        full = list(cache.iter_batches(HOOK, 64, n_tokens=total, seed=5, buffer_bytes=50_000))
        assert len(full) == total // 64
        for start in (0, 7, per_epoch - 1, per_epoch + 3, len(full) - 1):
            tail = list(cache.iter_batches(HOOK, 64, n_tokens=total, seed=5, start_batch=start, buffer_bytes=50_000))
            assert len(tail) == len(full) - start
            torch.testing.assert_close(torch.cat(tail), torch.cat(full[start:]), rtol=0, atol=0)


def test_random_access_in_any_order(small_cache):
    with ActivationCache(small_cache) as cache:
        idx = [17, 3, 17, 250, 0]
        got = cache.acts(HOOK, idx)
        for i, j in enumerate(idx):
            np.testing.assert_array_equal(got[i], cache.acts(HOOK, [j])[0])
        np.testing.assert_array_equal(cache.tokens(idx)[1], cache.tokens()[3])
        blocks = list(cache.iter_contexts(HOOK, batch_contexts=64, limit=100))
        assert [len(b[0]) for b in blocks] == [64, 36]
        np.testing.assert_array_equal(blocks[1][2][5].numpy(), cache.acts(HOOK, [69])[0])
        with pytest.raises(IndexError):
            cache.acts(HOOK, [cache.n_contexts])


def test_reader_errors_are_clear(small_cache, tmp_path):
    with pytest.raises(UserError, match="does not exist.*cli.py cache"):
        ActivationCache(tmp_path / "none.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="not an activation cache"):
        ActivationCache(tmp_path / "junk.h5")
    with ActivationCache(small_cache) as cache:
        with pytest.raises(UserError, match=r"not in .*\(it has blocks.0.hook_resid_post\)"):
            cache.width("blocks.1.hook_resid_post")
        with pytest.raises(UserError, match="fewer than one batch"):
            next(cache.iter_batches(HOOK, batch_size=10**7))
