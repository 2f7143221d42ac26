"""Pure parts of the explain pipeline: token-list scorer, fragment selection and splits, scores and CIs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats
import torch

from explain.exemplars import ExemplarConfig, FeatureExemplars, Fragment, encode_features, select_fragments
from explain.pipeline import read_records
from explain.records import ActivationRecord
from explain.scorers.simulation import score_simulation
from explain.scorers.stats import mean_ci, pearson
from explain.scorers.tokens import TokenListScorer, TokenListSimulator
from explain.token_list import TokenListError, TokenListExplainer, format_token_list, parse_token_list

VOCAB = [" the", " Paris", " Berlin", " of", ",", " dog", "\n", ' "q"', " 42", " cat", " and", " a"]


def _corpus(n: int, length: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [[VOCAB[i] for i in rng.integers(0, len(VOCAB), size=length)] for _ in range(n)]


def _score_tokens_backend(frags: list[list[str]], acts: list[np.ndarray], config: ExemplarConfig):
    """Select, split, explain and score exactly as the pipeline does, from in-memory fragments."""
    maxima = np.array([a.max() for a in acts])
    sel = select_fragments(maxima, feature=0, config=config)
    assert sel.skipped is None
    ex = FeatureExemplars(feature=0, n_fragments=len(frags), n_active=sel.n_active, max_activation=maxima.max(),
                          top=[Fragment(int(i), frags[i], acts[i].tolist()) for i in sel.top],
                          random=[Fragment(int(i), frags[i], acts[i].tolist()) for i in sel.random])
    splits = ex.splits(config.random_scored)
    cand = TokenListExplainer().candidates(splits.train)[0]
    top, rnd = splits.scored("test")
    sim = TokenListSimulator().simulate(cand.explanation, top + rnd)
    return cand.explanation, score_simulation(sim.expected_values, top, rnd)


def test_tokens_backend_scores_one_on_a_single_token_feature():
    frags = _corpus(200, 32, seed=0)
    acts = [np.array([3.5 if t == " Paris" else 0.0 for t in f]) for f in frags]
    explanation, scores = _score_tokens_backend(frags, acts, ExemplarConfig())
    assert parse_token_list(explanation) == {" Paris": 10.0}
    for kind in ("top_and_random", "top", "random"):
        assert getattr(scores, kind) == pytest.approx(1.0, abs=1e-9), kind


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tokens_backend_scores_about_zero_on_noise(seed):
    frags = _corpus(300, 64, seed=seed)
    rng = np.random.default_rng(100 + seed)
    acts = [np.maximum(rng.normal(size=64), 0.0) for _ in frags]
    _, scores = _score_tokens_backend(frags, acts, ExemplarConfig(seed=seed))
    assert scores.top_and_random is not None and abs(scores.top_and_random) < 0.2


def test_token_list_round_trips_awkward_tokens():
    weights = [(' "q"', 10), ("\n", 7), ("\\", 3), ("a, b (2)", 1)]
    text = format_token_list(weights)
    assert parse_token_list(text) == {t: float(w) for t, w in weights}
    with pytest.raises(TokenListError, match="--explainer tokens"):
        parse_token_list("years written as four-digit numbers")
    recs = [ActivationRecord([" a", " b", " a", " c"], [4.0, 1.0, 2.0, 0.0])]  # mean(a)=3, mean(b)=1
    assert TokenListExplainer().candidates(recs)[0].explanation == '" a" (10), " b" (3)'


# -- selection and splits -----------------------------------------------------------------------------

def test_top_fragments_are_the_largest_maxima_and_random_nonzero_is_nonzero():
    rng = np.random.default_rng(0)
    maxima = np.where(rng.random(500) < 0.3, rng.exponential(size=500), 0.0)
    cfg = ExemplarConfig(random="nonzero", seed=4)
    sel = select_fragments(maxima, feature=7, config=cfg)
    assert len(sel.top) == 20 and len(sel.random) == 20
    # the top 20 are the 20 largest, in descending order
    assert set(sel.top) == set(np.argsort(-maxima)[:20])
    assert np.all(np.diff(maxima[sel.top]) <= 0)
    assert np.all(maxima[sel.random] > 0)
    assert not set(sel.top) & set(sel.random) and len(set(sel.random)) == 20
    assert sel.n_active == int((maxima > 0).sum())
    again = select_fragments(maxima, feature=7, config=cfg)
    other = select_fragments(maxima, feature=8, config=cfg)
    assert np.array_equal(again.random, sel.random) and not np.array_equal(other.random, sel.random)
    anyr = select_fragments(maxima, feature=7, config=ExemplarConfig(random="any", seed=4))
    assert np.any(maxima[anyr.random] == 0)  # 70% of fragments are zero: 20 draws hit one


def test_inactive_features_are_skipped_with_a_reason():
    cfg = ExemplarConfig(min_active=10)
    assert "never active" in select_fragments(np.zeros(100), 0, cfg).skipped
    few = np.zeros(100)
    few[:9] = 1.0
    assert "only 9 of 100" in select_fragments(few, 0, cfg).skipped
    few[9] = 1.0
    assert select_fragments(few, 0, cfg).skipped is None


def test_splits_are_disjoint_and_follow_the_protocol():
    frags = [Fragment(i, [f"t{i}"], [float(100 - i)]) for i in range(40)]
    ex = FeatureExemplars(0, 40, 40, 100.0, top=frags[:20], random=frags[20:])
    s = ex.splits(random_scored=5)
    ids = {name: [int(r.tokens[0][1:]) for r in getattr(s, name)]
           for name in ("train", "valid_top", "valid_random", "test_top", "test_random")}
    assert ids["train"] == [0, 4, 8, 12, 16]
    assert ids["valid_top"] == [2, 6, 10, 14, 18] and ids["test_top"] == [3, 7, 11, 15, 19]
    assert ids["valid_random"] == [20, 22, 24, 26, 28] and ids["test_random"] == [21, 23, 25, 27, 29]
    flat = sum(ids.values(), [])
    assert len(flat) == len(set(flat))
    labels = ex.to_json(5)
    assert [f["split"] for f in labels["top"][:4]] == ["train", "calibration", "valid", "test"]
    assert sum(f["split"] == "shown-only" for f in labels["random"]) == 10


def test_encode_features_matches_encode_for_every_kind():
    from sae.baselines import StreamingMoments, neuron_basis, pca_from_moments, random_basis, topk_control
    from sae.dictionaries import BatchTopKSAE, JumpReLUSAE, TopKSAE, UntiedSAE

    torch.manual_seed(0)
    x = torch.randn(300, 8) * torch.linspace(0.5, 2, 8)
    m = StreamingMoments(8)
    m.update(x)
    pca = pca_from_moments(m, x, {"hook": "h"})
    ids = torch.tensor([5, 0, 3])  # features 0..5 exist in every dictionary below
    g = torch.Generator().manual_seed(1)
    untied = {"W_e": torch.randn(6, 8, generator=g), "b_e": torch.randn(6, generator=g),
              "W_d": torch.randn(6, 8, generator=g), "b_d": torch.randn(8, generator=g)}
    cfg = {"hook": "h", "d_in": 8, "n_features": 6}
    # thresholds well inside the pre-activations' range, so a ReLU without them would keep codes encode zeroes
    batchtopk = BatchTopKSAE({**untied, "threshold": torch.full((6,), 1.0)}, {**cfg, "k": 2})
    jumprelu = JumpReLUSAE({**untied, "threshold": torch.rand(6, generator=g) + 0.5}, cfg)
    assert int((torch.relu(x @ untied["W_e"].T) > 0).sum()) > int((batchtopk.encode(x) > 0).sum())
    for d in (pca, neuron_basis(8, {"hook": "h"}), random_basis(8, {"hook": "h"}), topk_control(pca, 2, {}),
              UntiedSAE(untied, cfg), batchtopk, jumprelu, TopKSAE(untied, {**cfg, "k": 2})):
        torch.testing.assert_close(encode_features(d, x, ids), d.encode(x)[:, ids], rtol=1e-5, atol=1e-5)


# -- scores ---------------------------------------------------------------------------------------------

def test_pearson_matches_scipy_and_constant_is_null():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=300), rng.normal(size=300)
    b = b + 0.5 * a
    r, why = pearson(a, b)
    assert why is None and r == pytest.approx(scipy.stats.pearsonr(a, b).statistic, abs=1e-12)
    r, why = pearson(np.zeros(10), b[:10])
    assert r is None and "constant" in why


def test_score_simulation_concatenates_tokens_and_splits_top_and_random():
    rng = np.random.default_rng(1)
    top = [ActivationRecord(["x"] * 8, rng.random(8).tolist()) for _ in range(3)]
    rnd = [ActivationRecord(["x"] * 8, rng.random(8).tolist()) for _ in range(2)]
    sim = [rng.random(8).tolist() for _ in range(5)]
    s = score_simulation(sim, top, rnd)
    true = [r.activations for r in top + rnd]
    assert s.top_and_random == pytest.approx(np.corrcoef(np.concatenate(sim), np.concatenate(true))[0, 1])
    assert s.top == pytest.approx(np.corrcoef(np.concatenate(sim[:3]), np.concatenate(true[:3]))[0, 1])
    assert s.random == pytest.approx(np.corrcoef(np.concatenate(sim[3:]), np.concatenate(true[3:]))[0, 1])
    flat = score_simulation([[1.0] * 8] * 5, top, rnd)
    assert flat.top_and_random is None and flat.top is None and "constant" in flat.notes["top_and_random"]


def test_mean_ci_by_hand():
    values = [0.1, 0.3, 0.2, 0.6]
    mean = sum(values) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    got = mean_ci(values)
    assert got["n"] == 4 and got["mean"] == pytest.approx(0.3)
    assert got["ci"] == pytest.approx(1.96 * sd / 2)
    assert mean_ci([0.5])["ci"] is None and mean_ci([])["mean"] is None


def test_read_records_ignores_and_repairs_a_torn_last_line(tmp_path):
    path = tmp_path / "explanations.jsonl"
    good = [{"feature": 1}, {"feature": 2}]
    text = "".join(json.dumps(r) + "\n" for r in good)
    path.write_text(text + '{"feature": 3, "expl')
    assert read_records(path) == good
    read_records(path, repair=True)
    assert path.read_text() == text
    path.write_text(text + json.dumps({"feature": 3}))  # complete JSON but no newline: still torn
    assert read_records(path, repair=True) == good and path.read_text() == text
    path.write_text('{"feature": 1}\nnot json\n{"feature": 2}\n')
    with pytest.raises(Exception, match="line 2"):
        read_records(path)


# -- best-of-k and failures (the LLM explainer is replaced by a stub: it is the external boundary) ---------

class _StubExplainer:
    """Returns fixed candidate explanations (or raises LLMError) instead of asking an LLM."""

    def __init__(self, texts=None, error=None):
        self.texts, self.error = texts, error

    def candidates(self, train_records, *, feature_seed=0):
        from explain.explainer import Candidate
        from explain.llm.errors import LLMError

        if self.error:
            raise LLMError(self.error)
        return [Candidate(explanation=t, raw=t, fewshot="stub", shown=[0]) for t in self.texts]


def _single_token_exemplars() -> FeatureExemplars:
    frags = _corpus(120, 32, seed=5)
    acts = [np.array([2.0 if t == " dog" else 0.0 for t in f]) for f in frags]
    sel = select_fragments(np.array([a.max() for a in acts]), 0, ExemplarConfig())
    return FeatureExemplars(0, 120, sel.n_active, 2.0,
                            top=[Fragment(int(i), frags[i], acts[i].tolist()) for i in sel.top],
                            random=[Fragment(int(i), frags[i], acts[i].tolist()) for i in sel.random])


def test_best_of_k_picks_the_best_valid_candidate_and_reports_test():
    from explain.pipeline import explain_feature

    cands = ['" the" (10)', '" cat" (10), " dog" (3)', '" dog" (10)', '" zebra" (10)']
    rec = explain_feature(_single_token_exemplars(), _StubExplainer(cands), TokenListScorer(), ExemplarConfig(),
                          {"dictionary": "d"})
    assert rec["status"] == "ok" and rec["explanation"] == '" dog" (10)' and rec["best"] == 2
    valid = [c["valid_scores"] for c in rec["candidates"]]
    assert valid[2]["top_and_random"] == pytest.approx(1.0)
    assert max(v["top_and_random"] for v in valid[:2]) < 1.0
    assert valid[3]["top_and_random"] is None and "constant" in rec["candidates"][3]["valid_notes"]["top_and_random"]
    assert rec["scores"]["top_and_random"] == pytest.approx(1.0) and rec["split"] == "test"


def test_an_llm_failure_is_a_failed_record_not_a_zero():
    from explain.pipeline import explain_feature

    rec = explain_feature(_single_token_exemplars(), _StubExplainer(error="HTTP 503 after 5 retries"),
                          TokenListScorer(), ExemplarConfig(), {"dictionary": "d"})
    assert rec["status"] == "failed" and "503" in rec["error"]
    assert rec["scores"] == {"top_and_random": None, "top": None, "random": None}
    assert rec["exemplars"]["top"]  # the report can still show what the feature does


class _EchoBackend:
    """An LLM backend that records every prompt and answers with a fixed phrase (the external boundary)."""

    def __new__(cls):
        from explain.llm.base import LLMBackend

        class Echo(LLMBackend):
            name = "echo"

            def identity(self):
                return {"backend": "echo"}

            def _generate_uncached(self, messages, *, n, temperature, max_tokens, seed):
                self.prompts.append(messages[-1]["content"])
                return ["capital cities"] * n

        backend = Echo()
        backend.prompts = []
        return backend


def test_best_of_k_varies_the_exemplars_shown_when_there_are_few():
    from explain.explainer import ExplainerConfig, LLMExplainer

    explainer = LLMExplainer(_EchoBackend(), ExplainerConfig(format="highlight", k=4, seed=3))
    plan = explainer.plan(5, feature_seed=11)
    shown = [p[0] for p in plan]
    assert shown[0] == [0, 1, 2, 3, 4]  # the first candidate sees every train record, strongest first
    assert len({tuple(s) for s in shown}) == 4  # every candidate sees a different list
    for s in shown[1:]:
        assert 3 <= len(s) <= 5 and len(set(s)) == len(s) and set(s) <= set(range(5))
    assert any(s != sorted(s) or len(s) < 5 for s in shown[1:])
    # deterministic for a fixed seed, different for another
    assert LLMExplainer(_EchoBackend(), ExplainerConfig(k=4, seed=3)).plan(5, feature_seed=11) == plan
    assert [p[0] for p in LLMExplainer(_EchoBackend(), ExplainerConfig(k=4, seed=4)).plan(5, feature_seed=11)] != shown

    backend = _EchoBackend()
    train = [ActivationRecord([" in", f" City{i}"], [0.0, 1.0 + i]) for i in range(5)]
    cands = LLMExplainer(backend, ExplainerConfig(format="highlight", k=4, seed=3)).candidates(train, feature_seed=11)
    assert [c.shown for c in cands] == shown
    assert len(set(backend.prompts)) == 4  # the target excerpts (last user message) differ, not just bookkeeping
