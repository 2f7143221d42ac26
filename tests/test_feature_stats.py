"""Feature-page numbers (report.feature_stats, sae.logit_effects) against brute force on tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from activations.cache_writer import cache_activations
from common.errors import UserError
from activations.reader import ActivationCache
from report.feature_stats import SummaryConfig, summarize_dictionaries
from report.feature_summary import DictionarySummaries
from sae.logit_effects import batched_topk, decoder_neighbours, logit_effects, unembedding
from tests.support.tiny_models import make_tiny_model, make_tokenizer

HOOK = "blocks.1.hook_resid_post"
MLP = "blocks.0.mlp.hook_post"
WORDS = ("Paris river city bridge <script>alert(1)</script> onerror= 42 3.14 numbers fox dog lazy quick "
         "brown Sparse autoencoders features model layer שלום עולם 東京 emoji 🙂 & < > \" '").split()
CONFIG = SummaryConfig(n_top=4, n_quantiles=3, per_quantile=2, n_logits=5, n_neighbours=3, hist_bins=6, seed=1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A tiny Llama (BOS prepended, random final-norm scale), a fragments cache, and three dictionaries."""
    root = tmp_path_factory.mktemp("feature_stats")
    tokenizer = make_tokenizer(add_bos=True)
    model = make_tiny_model("llama", len(tokenizer))
    with torch.no_grad():  # a non-trivial gamma, so folding it into W_U is actually tested
        model.model.norm.weight.copy_(torch.rand(model.config.hidden_size) * 2 + 0.1)
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(WORDS, size=40)) for _ in range(60)]
    corpus = root / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n", encoding="utf-8")
    cache = cache_activations(model=str(model_dir), corpus=str(corpus), hooks=[HOOK, MLP], context_length=12,
                              max_tokens=12 * 60, batch_size=8, dtype="float32", out=root / "frags.h5",
                              fragments=True, progress=False).path
    from sae.kinds.neuron import NeuronBasis
    from sae.kinds.topk import TopKSAE
    from sae.kinds.untied import UntiedSAE

    g = torch.Generator().manual_seed(0)
    n, d = 40, model.config.hidden_size
    tensors = {"W_e": torch.randn(n, d, generator=g), "b_e": torch.randn(n, generator=g) * 0.1 - 0.2,
               "W_d": torch.randn(n, d, generator=g), "b_d": torch.randn(d, generator=g) * 0.1}
    base = {"hook": HOOK, "model_id": str(model_dir), "d_in": d, "n_features": n}
    folders = {"topk": TopKSAE(tensors, {**base, "k": 5}).save(root / "topk"),
               "untied": UntiedSAE(tensors, base).save(root / "untied"),
               "neuron": NeuronBasis({}, {"hook": MLP, "model_id": str(model_dir), "d_in": 48,
                                          "n_features": 48}).save(root / "neuron"),
               "elsewhere": UntiedSAE(tensors, {**base, "hook": "blocks.2.hook_resid_post"}).save(root / "elsewhere"),
               "other_model": UntiedSAE(tensors, {**base, "model_id": "EleutherAI/pythia-70m"}).save(root / "other")}
    summaries, skipped = summarize_dictionaries(cache, [folders[k] for k in ("topk", "untied", "neuron", "elsewhere")],
                                                config=CONFIG, progress=False)
    return {"root": root, "cache": cache, "model": model, "model_dir": model_dir, "folders": folders,
            "summaries": {s.name: s for s in summaries}, "skipped": skipped}


def brute_codes(cache_path: Path, folder: Path) -> np.ndarray:
    """[contexts, tokens, features] codes of the whole cache by the dictionary's own encode (BOS dropped)."""
    import sae

    d = sae.load(folder)
    with ActivationCache(cache_path) as cache:
        first = 1 if cache.bos_prepended else 0
        assert first == 1  # the tiny Llama prepends BOS: the exclusion is exercised
        x = torch.from_numpy(cache.acts(d.hook, range(cache.n_contexts)))[:, first:]
    with torch.no_grad():
        return d.encode(x).numpy()


@pytest.mark.parametrize("name", ["topk", "untied", "neuron"])
def test_density_max_histogram_and_examples_equal_brute_force(setup, name):
    s = setup["summaries"][name]
    codes = brute_codes(setup["cache"], setup["folders"][name])
    n_ctx, n_tok, n_feat = codes.shape
    assert s.n_tokens == n_ctx * n_tok and len(s.features) == n_feat
    per_ctx = codes.max(axis=1)
    checked_quantiles = 0
    for f in s.features:
        col = codes[..., f.index]
        assert f.density == pytest.approx((col > 0).sum() / (n_ctx * n_tok))
        assert f.max_act == pytest.approx(col.max())
        nonzero = col[col > 0]
        if nonzero.size == 0:
            assert f.hist_counts == [] and f.top == [] and f.quantiles == []
            continue
        assert sum(f.hist_counts) == nonzero.size and len(f.hist_counts) == CONFIG.hist_bins
        assert f.hist_edges[0] == 0 and f.hist_edges[-1] == pytest.approx(col.max())
        edges = np.asarray(f.hist_edges)  # bin i holds (edges[i], edges[i+1]] (np.histogram's are [lo, hi))
        bins = np.clip(np.searchsorted(edges, nonzero.astype(np.float64), side="left") - 1, 0, len(edges) - 2)
        assert f.hist_counts == np.bincount(bins, minlength=len(edges) - 1).tolist()
        m = per_ctx[:, f.index]
        active = np.flatnonzero(m > 0)
        want_top = sorted(active, key=lambda i: (-m[i], i))[:CONFIG.n_top]
        assert [e.fragment for e in f.top] == want_top
        top = set(want_top)
        assert len(f.quantiles) == CONFIG.n_quantiles
        for q in f.quantiles:
            eligible = [i for i in active if q.lo < m[i] <= q.hi and i not in top]
            assert len(q.examples) == min(CONFIG.per_quantile, len(eligible))
            assert all(q.lo < m[e.fragment] <= q.hi and e.fragment not in top for e in q.examples)
            checked_quantiles += len(q.examples)
        for e in f.top + [e for q in f.quantiles for e in q.examples]:
            assert len(e.acts) == len(s.fragments[e.fragment]) == n_tok
            np.testing.assert_allclose(e.acts, col[e.fragment], atol=6e-4)
    assert checked_quantiles > 0  # the quantile checks ran on real draws
    assert set(s.fragments) == {e.fragment for f in s.features for e in f.top + [x for q in f.quantiles
                                                                                for x in q.examples]}


def test_fragments_are_the_decoded_tokens_without_bos(setup):
    from explain.exemplars import TokenDecoder

    s = setup["summaries"]["untied"]
    with ActivationCache(setup["cache"]) as cache:
        decoder = TokenDecoder.for_cache(cache)
        for i, strings in s.fragments.items():
            assert strings == decoder(cache.tokens([i])[0][1:])
    joined = "".join("".join(t) for t in s.fragments.values())
    assert "<script>" in joined or "onerror=" in joined  # raw corpus strings arrive unescaped: escaping is the page's


def test_logit_effects_equal_folded_unembedding_brute_force(setup):
    import sae

    model = setup["model"]
    w_u = model.lm_head.weight.detach() * model.model.norm.weight.detach()  # fold_ln: W_U * gamma
    tokenizer = make_tokenizer(add_bos=True)
    for name in ("topk", "untied"):
        d = sae.load(setup["folders"][name])
        effects = d.directions @ w_u.T
        for f in setup["summaries"][name].features:
            top = torch.topk(effects[f.index], CONFIG.n_logits)
            bottom = torch.topk(effects[f.index], CONFIG.n_logits, largest=False)
            assert [v for _, v in f.promoted] == pytest.approx(top.values.tolist(), abs=1e-5)
            assert [v for _, v in f.suppressed] == pytest.approx(bottom.values.tolist(), abs=1e-5)
            assert [t for t, _ in f.promoted] == [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in top.indices.tolist()]
    assert all(f.promoted == [] and f.suppressed == [] for f in setup["summaries"]["neuron"].features)


def test_logit_effects_follow_a_finite_difference_through_the_real_final_norm_and_head(arch):
    """The effect of adding f to the residual, measured through the model's own final norm and LM head
    (float64, averaged over random residuals x: the per-token 1/sigma then only rescales), has the ranking
    of logit_effects' values: LayerNorm families (gpt2, gpt_neox) centre f, RMSNorm (llama) does not."""
    model = make_tiny_model(arch, vocab_size=80, n_layers=1).double()
    norm = {"gpt_neox": lambda: model.gpt_neox.final_layer_norm, "gpt2": lambda: model.transformer.ln_f,
            "llama": lambda: model.model.norm}[arch]()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a random gamma (and beta) so that folding them is tested
        norm.weight.copy_(torch.rand(norm.weight.shape, generator=g, dtype=torch.float64) * 2 + 0.1)
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=g, dtype=torch.float64))
    head, d, vocab = model.get_output_embeddings(), norm.weight.numel(), model.config.vocab_size
    f = torch.randn(4, d, generator=g, dtype=torch.float64) + 1.0
    f = f / f.norm(dim=1, keepdim=True)
    assert bool((f.mean(dim=1).abs() > 0.05).all())  # a random unit row's mean is ~0.03: here centring matters
    x, eps = torch.randn(4000, d, generator=g, dtype=torch.float64), 1e-5
    with torch.no_grad():
        base = head(norm(x))
        measured = torch.stack([((head(norm(x + eps * row)) - base) / eps).mean(dim=0) for row in f])
    found = logit_effects(f.float(), unembedding(model), k=vocab, batch=3)
    values = torch.empty(len(f), vocab).scatter_(1, found.top_ids, found.top_values).double()
    for got, want in zip(values, measured):
        assert torch.corrcoef(torch.stack([got, want]))[0, 1] > 0.999
        scale = (got @ want) / (got @ got)  # ~1 here (a standard-normal x has sigma ~1); any positive one is right
        tol = 0.01 * want.abs().max()  # the average over 4000 x leaves ~0.4% noise; near-ties are ranked up to it
        assert scale > 0 and (want - scale * got).abs().max() < tol
        for largest in (True, False):  # logit_effects' top / bottom 5 are the measured top / bottom 5 up to tol
            sign = 1 if largest else -1
            fifth = (sign * want).topk(5).values[-1]
            assert bool(((sign * want)[got.topk(5, largest=largest).indices] > fifth - tol).all())


def test_histogram_bins_are_lo_exclusive_hi_inclusive_even_on_edges():
    from report.feature_select import bin_of, edges_of, histograms

    rng = np.random.default_rng(2)
    tops, bins = np.array([1.0, 0.7, 3.3, 1e-3]), 7
    cols, vals, want = [], [], np.zeros((tops.size, bins), np.int64)
    for j, top in enumerate(tops):
        e = edges_of(top, bins)
        v = np.concatenate([e[1:], np.nextafter(e[1:], 0), np.nextafter(e[1:-1], np.inf), rng.uniform(0, top, 50)])
        v = v[v > 0]
        for x in v:  # the definition, one value at a time
            b = next(i for i in range(bins) if e[i] < x <= e[i + 1])
            want[j, b] += 1
            assert bin_of(np.array([x]), e)[0] == b
        cols.append(np.full(v.size, j))
        vals.append(v)
    assert np.array_equal(histograms(np.concatenate(cols), np.concatenate(vals), tops, bins), want)


def test_batched_topk_equals_one_product():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(37, 8, generator=g), torch.randn(101, 8, generator=g)
    found = logit_effects(a, b, k=6, batch=5)
    full = a @ b.T
    torch.testing.assert_close(found.top_values, full.topk(6, dim=1).values)
    assert torch.equal(found.top_ids, full.topk(6, dim=1).indices)
    torch.testing.assert_close(found.bottom_values, full.topk(6, dim=1, largest=False).values)
    assert batched_topk(a, b, k=500).top_ids.shape == (37, 101)  # k beyond the columns: all of them


def test_neighbours_equal_brute_force_cosine(setup):
    import sae

    d = sae.load(setup["folders"]["untied"])
    unit = d.directions / d.directions.norm(dim=1, keepdim=True)
    cos = unit @ unit.T
    cos.fill_diagonal_(-2.0)
    for f in setup["summaries"]["untied"].features:
        want = torch.topk(cos[f.index], CONFIG.n_neighbours)
        assert bool((want.values > 1e-4).all())  # so every one of them is kept
        assert [i for i, _ in f.neighbours] == want.indices.tolist()
        assert [c for _, c in f.neighbours] == pytest.approx(want.values.tolist(), abs=1e-5)
    assert all(f.neighbours == [] for f in setup["summaries"]["neuron"].features)  # orthogonal: none, not ties at 0
    values, ids = decoder_neighbours(unit, rows=5, k=2, batch=2)
    assert ids.shape == (5, 2) and not any(i in row for i, row in enumerate(ids.tolist()))


def test_json_round_trip(setup):
    for s in setup["summaries"].values():
        text = json.dumps(s.to_json())
        assert DictionarySummaries.from_json(json.loads(text)) == s


def assert_same_features(got: list, want: list) -> None:
    """Equal up to float32 rounding: a product over another slice of W, or of another shape, may round differently
    in the last bit (BLAS picks kernels by shape), so floats are compared approximately and the rest exactly."""
    assert len(got) == len(want)
    near = dict(rel=1e-5, abs=1e-6)
    for a, b in zip(got, want):
        assert (a.index, a.density, a.hist_counts) == (b.index, b.density, b.hist_counts)
        assert a.max_act == pytest.approx(b.max_act, **near) and a.hist_edges == pytest.approx(b.hist_edges, **near)
        assert [e.fragment for e in a.top] == [e.fragment for e in b.top]
        assert [x for q in a.quantiles for x in (q.lo, q.hi)] == pytest.approx(
            [x for q in b.quantiles for x in (q.lo, q.hi)], **near)
        assert [[e.fragment for e in q.examples] for q in a.quantiles] == \
            [[e.fragment for e in q.examples] for q in b.quantiles]
        for x, y in zip(a.top + [e for q in a.quantiles for e in q.examples],
                        b.top + [e for q in b.quantiles for e in q.examples]):
            assert x.acts == pytest.approx(y.acts, abs=1.01e-3)  # rounded to 3 decimals: one step at most
        for field in ("promoted", "suppressed", "neighbours"):
            assert [x for x, _ in getattr(a, field)] == [x for x, _ in getattr(b, field)]
            assert [v for _, v in getattr(a, field)] == pytest.approx([v for _, v in getattr(b, field)], **near)


def test_second_pass_and_feature_subsets_give_the_same_summaries(setup):
    cache, folders = setup["cache"], setup["folders"]
    tight = SummaryConfig(**{**CONFIG.to_json(), "memory_bytes": 3000, "batch_contexts": 7})  # several passes
    again, _ = summarize_dictionaries(cache, [folders["untied"], folders["topk"], folders["neuron"]], config=tight,
                                      progress=False)
    for got in again:
        want = setup["summaries"][got.name]
        assert_same_features(got.features, want.features)
        assert got.fragments == want.fragments and got.n_tokens == want.n_tokens
    for name in ("topk", "untied"):
        first, _ = summarize_dictionaries(cache, [folders[name]], features=7, config=CONFIG, progress=False)
        full = setup["summaries"][name]
        assert_same_features(first[0].features, full.features[:7])
        assert set(first[0].fragments) <= set(full.fragments)


def test_dictionary_of_another_hook_is_listed_as_skipped(setup):
    assert [name for name, _ in setup["skipped"]] == ["elsewhere"]
    assert "blocks.2.hook_resid_post is not in frags.h5" in setup["skipped"][0][1]
    assert "elsewhere" not in setup["summaries"]
    alone = summarize_dictionaries(setup["cache"], [setup["folders"]["elsewhere"]], progress=False)
    assert alone == ([], setup["skipped"])


def test_bad_inputs_are_one_line_user_errors(setup, tmp_path):
    folders = setup["folders"]
    cases = [
        lambda: summarize_dictionaries(tmp_path / "missing.h5", [folders["topk"]], progress=False),
        lambda: summarize_dictionaries(setup["cache"], [folders["other_model"]], progress=False),
        lambda: summarize_dictionaries(setup["cache"], [tmp_path / "nodict"], progress=False),
        lambda: summarize_dictionaries(setup["cache"], [folders["topk"]], features=0, progress=False),
        lambda: summarize_dictionaries(setup["cache"], [folders["topk"]], config=SummaryConfig(hist_bins=0),
                                       progress=False),
    ]
    (tmp_path / "junk.h5").write_text("not hdf5")
    cases.append(lambda: summarize_dictionaries(tmp_path / "junk.h5", [folders["topk"]], progress=False))
    for case in cases:
        with pytest.raises(UserError) as err:
            case()
        assert "\n" not in str(err.value) and len(str(err.value)) > 20
