"""The sampled test examples of the classification scorers (Paulo et al.): deciles, negatives, hard negatives,
intruders, windows, and that no scorer example is one the explainer saw."""

from __future__ import annotations

import numpy as np
import pytest

from explain.sampling import ContextSimilarity, build_scoring_set, donor_candidates, negative_threshold, \
    plan_scoring, window_bounds
from explain.settings import ScoringConfig


def test_windows_cover_the_fragment_in_about_window_sized_pieces():
    assert window_bounds(64, 32) == [(0, 32), (32, 64)]
    assert window_bounds(63, 32) == [(0, 32), (32, 63)]  # a BOS-less 63-token fragment: two windows, not one of 63
    assert window_bounds(20, 32) == [(0, 20)]
    assert window_bounds(100, 32) == [(0, 33), (33, 67), (67, 100)]


def _sparse(n: int = 200) -> np.ndarray:
    m = np.zeros(n)
    m[:100] = np.arange(1, 101, dtype=float)  # fragments 0..99 active with maxima 1..100, the rest silent
    return m


def test_activating_examples_span_the_deciles_and_never_include_the_explainers_fragments():
    m = _sparse()
    train = np.array([99, 95, 91, 87, 83])  # top fragments the explainer saw
    cfg = ScoringConfig(per_quantile=2, n_negative=6)
    plan = plan_scoring(m, feature=3, train=train, config=cfg)
    frags = [f for f, _ in plan.quantile]
    assert len(frags) == 20 and not set(frags) & set(train.tolist())
    bins = {b: [m[f] for f, bb in plan.quantile if bb == b] for b in range(10)}
    assert all(len(v) == 2 for v in bins.values())
    assert all(max(bins[b]) < min(bins[b + 1]) for b in range(9))  # decile 0 weakest ... decile 9 strongest
    assert plan.threshold == 0.0 and len(plan.negative) == 6 and all(m[i] == 0 for i in plan.negative)
    assert plan == plan_scoring(m, feature=3, train=train, config=cfg)  # seeded by (seed, feature) alone
    assert plan.quantile != plan_scoring(m, feature=4, train=train, config=cfg).quantile


def test_a_dense_feature_takes_its_negatives_from_the_bottom_decile_and_says_so():
    rng = np.random.default_rng(0)
    m = rng.uniform(0.5, 5.0, size=300)  # active in every fragment, like a neuron or a PCA direction
    plan = plan_scoring(m, feature=0, train=np.array([], dtype=int), config=ScoringConfig())
    assert plan.threshold == pytest.approx(negative_threshold(m)) and plan.threshold > 0.5
    assert np.mean(m <= plan.threshold) == pytest.approx(0.1, abs=0.01)
    assert all(m[i] <= plan.threshold for i in plan.negative) and len(plan.negative) == 10
    assert all(m[f] > plan.threshold for f, _ in plan.quantile)


def test_hard_negatives_are_the_most_similar_silent_contexts():
    vocab = np.arange(50)
    rng = np.random.default_rng(1)
    tokens = rng.choice(vocab[10:], size=(40, 16))
    tokens[:5, :8] = [1, 2, 3, 4, 5, 6, 7, 8]  # the explainer's fragments share tokens 1..8
    tokens[30:33, :6] = [1, 2, 3, 4, 5, 6]  # three silent fragments that look like them
    m = np.zeros(40)
    m[:12] = np.arange(12, 0, -1)
    sim = ContextSimilarity(tokens).scores([0, 1, 2, 3, 4])
    plan = plan_scoring(m, 0, np.arange(5), ScoringConfig(n_negative=3, n_hard=3), similarity=sim)
    assert not set(plan.hard) & set(plan.negative) and all(m[i] == 0 for i in plan.hard) and len(plan.hard) == 3
    assert {30, 31, 32} - set(plan.negative) <= set(plan.hard)  # the look-alikes not already drawn at random
    rest = set(range(12, 40)) - set(plan.hard) - set(plan.negative)
    assert min(sim[plan.hard]) >= max(sim[list(rest)])


def test_intruders_come_from_a_donor_firing_strongly_where_this_feature_is_silent():
    m = _sparse()
    donor = np.zeros(200)
    donor[50:200] = np.linspace(0.1, 8.0, 150)  # overlaps this feature's active fragments 50..99
    maxima = {7: donor}
    plan = plan_scoring(m, 3, np.array([99]), ScoringConfig(intruder_rounds=4), donors=[9, 7],
                        donor_maxima=maxima.get, intruders=True)  # feature 9 is not in the pass: skipped
    assert len(plan.intruders) == 4 and {g for _, g in plan.intruders} == {7}
    median = np.median(donor[donor > 0])
    assert all(m[f] == 0 and donor[f] >= median for f, _ in plan.intruders)
    assert donor_candidates(3, [1, 3, 5, 7], seed=0) == donor_candidates(3, [7, 5, 3, 1], seed=0)
    assert 3 not in donor_candidates(3, [1, 3, 5, 7], seed=0) and donor_candidates(3, [3], seed=0) == []
    lonely = plan_scoring(m, 3, np.array([99]), ScoringConfig(), donors=[], intruders=True)
    assert lonely.intruders == [] and "no intruder rounds" in lonely.notes[-1]


def test_windows_hold_each_activating_examples_peak_and_record_where_they_come_from():
    m = _sparse(120)
    acts = {f: np.zeros(64) for f in range(120)}
    for f in range(100):
        acts[f][(f * 7) % 64] = m[f]  # the peak of fragment f sits at token (7 f) mod 64
    plan = plan_scoring(m, 1, np.array([99]), ScoringConfig(n_negative=4))
    scoring = build_scoring_set(plan, lambda i, g: ([f"t{i}_{k}" for k in range(64)], acts[i]), ScoringConfig())
    assert scoring.labels == [1] * 10 + [0] * 4
    for e in scoring.activating:
        assert len(e.tokens) == 32 and max(e.activations) == m[e.fragment] and e.start in (0, 32)
        assert e.tokens[0] == f"t{e.fragment}_{e.start}"
    doc = scoring.to_json()
    assert doc["negative_threshold"] == 0 and doc["examples"][0]["kind"] == "quantile"
    assert set(doc["examples"][0]) == {"fragment", "start", "end", "kind", "bin", "max_act"}
