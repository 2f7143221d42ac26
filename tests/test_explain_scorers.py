"""The `Scorer` interface: registry, backend needs, the two simulation scorers, and a new scorer in a few lines.

A scorer is written here in ten lines and plugged into `explain_feature`
both as the selecting scorer and as an extra one, which is what adding
detection / fuzzing / embedding scorers later will do.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest

from common.errors import UserError
from activations.hooknames import layer_and_site as parse_hook
from explain.compare import summarise
from explain.exemplars import ExemplarConfig, FeatureExemplars, Fragment, select_fragments
from explain.explainer import Candidate
from explain.feature import explain_feature
from explain.llm.base import DigitReadout, LLMBackend
from explain.llm.errors import BackendConfigError
from explain.records import ActivationRecord, Examples
from explain.scorers import SCORERS, Cost, Scorer, ScoreResult, make_scorer, scorer_class
from explain.scorers.simulation import SimulationScorer, score_simulation
from explain.scorers.tokens import TokenListScorer

DOG = [ActivationRecord([" a", " dog", " ran"], [0.0, 2.0, 0.0]), ActivationRecord([" dog", " b"], [1.0, 0.0])]
RANDOM = [ActivationRecord([" c", " d", " dog"], [0.0, 0.0, 0.5])]


class _DogBackend(LLMBackend):
    """An LLM backend that reads ' dog' at a slot as the value 10 and anything else as 0 (the external boundary)."""

    name = "dog"

    def identity(self):
        return {"backend": "dog"}

    def digit_distributions(self, prompts):
        out = []
        for p in prompts:
            rows = np.zeros((p.n_slots, 11))
            for i, piece in enumerate(p.pieces[:-1]):
                rows[i, 10 if piece.endswith(" dog\t") else 0] = 1.0
            out.append(DigitReadout(rows, mode="fake", ten="single-token", n_calls=1, n_cached=0, n_tokens=7))
        return out


class _LengthScorer(Scorer):
    """A made-up scorer: shorter explanations score higher (only to show what adding a scorer takes)."""

    name = "length"
    metric_names = ("brevity",)
    selection_metric = "brevity"

    def _score_many(self, jobs: Sequence[tuple[str, Examples]]) -> list[ScoreResult]:
        return [ScoreResult(metrics={"brevity": 1.0 / len(e)}, notes={"brevity": f"{len(ex.records)} records"},
                            cost=Cost(n_prompts=1), record={"length": {ex.split: len(e)}}) for e, ex in jobs]


def test_registry_names_every_scorer_and_checks_backend_needs():
    assert set(SCORERS) >= {"simulation", "tokens"}
    assert scorer_class("tokens") is TokenListScorer and scorer_class("simulation") is SimulationScorer
    assert isinstance(make_scorer("tokens"), TokenListScorer)  # needs nothing
    assert isinstance(make_scorer("simulation", _DogBackend(), "dog:x"), SimulationScorer)
    with pytest.raises(BackendConfigError, match="simulation scorer needs logprobs"):
        make_scorer("simulation", None)

    class GenerationOnly(_DogBackend):
        capabilities = frozenset({"generation"})

    with pytest.raises(BackendConfigError, match="needs logprobs.*'chat:x'"):
        make_scorer("simulation", GenerationOnly(), "chat:x")
    with pytest.raises(UserError, match="unknown scorer 'nope'"):
        scorer_class("nope")


def test_token_list_scorer_is_the_pearson_of_its_lookup_and_costs_nothing():
    scorer = TokenListScorer()
    ex = Examples("test", DOG, RANDOM)
    result = scorer.score('" dog" (10)', ex)
    predicted = [[0, 10, 0], [10, 0], [0, 0, 10]]
    assert result.metrics == score_simulation(predicted, DOG, RANDOM).values()
    assert result.cost == Cost(n_prompts=0, n_calls=0, n_cached=0, n_tokens=None)  # no model ran
    assert result.record["simulation"]["test"] == predicted and result.record["simulation"]["mode"] == "token-lookup"


def test_simulation_scorer_reads_the_backend_and_reports_its_cost():
    scorer = make_scorer("simulation", _DogBackend())
    results = scorer.score_many([("dogs", Examples("valid", DOG, RANDOM)), ("cats", Examples("valid", DOG, []))])
    first, second = results
    assert first.metrics == score_simulation([[0, 10, 0], [10, 0], [0, 0, 10]], DOG, RANDOM).values()
    assert first.record["simulation"]["valid"][0] == [0, 10, 0] and first.record["simulation"]["mode"] == "fake"
    assert first.cost == Cost(n_prompts=3, n_calls=3, n_cached=0, n_tokens=21)  # one prompt per fragment
    assert second.metrics["random"] is None and second.notes["random"] == "no records in this part of the split"
    assert scorer.spent == first.cost + second.cost


class _Stub:
    def __init__(self, texts):
        self.texts = texts

    def candidates(self, train_records, *, feature_seed=0):
        return [Candidate(explanation=t, raw=t, fewshot="stub", shown=[0]) for t in self.texts]


def _dog_exemplars() -> FeatureExemplars:
    rng = np.random.default_rng(0)
    vocab = [" the", " dog", " cat", " of"]
    frags = [[vocab[i] for i in rng.integers(0, 4, size=16)] for _ in range(80)]
    acts = [np.array([2.0 if t == " dog" else 0.0 for t in f]) for f in frags]
    sel = select_fragments(np.array([a.max() for a in acts]), 0, ExemplarConfig())
    return FeatureExemplars(0, 80, sel.n_active, 2.0,
                            top=[Fragment(int(i), frags[i], acts[i].tolist()) for i in sel.top],
                            random=[Fragment(int(i), frags[i], acts[i].tolist()) for i in sel.random])


def test_an_extra_scorer_writes_scores_under_its_name_and_leaves_the_rest_as_before():
    ex, cands = _dog_exemplars(), ['" the" (10)', '" dog" (10)']
    plain = explain_feature(ex, _Stub(cands), TokenListScorer(), ExemplarConfig(), {"dictionary": "d"})
    extra = _LengthScorer()
    rec = explain_feature(ex, _Stub(cands), TokenListScorer(), ExemplarConfig(), {"dictionary": "d"},
                          extra_scorers=[extra])
    assert rec["best"] == 1 and rec["scores"]["top_and_random"] == pytest.approx(1.0)
    assert rec["scores"]["length"] == {"brevity": pytest.approx(1 / len(cands[1])), "n_prompts": 1,
                                       "n_tokens": None}  # metrics and what they cost
    assert rec["scores"]["tokens"] == {**{k: rec["scores"][k] for k in ("top_and_random", "top", "random")},
                                       "n_prompts": 0, "n_tokens": None}
    assert rec["score_notes"]["length"] == {"brevity": "10 records"} and rec["length"] == {"test": len(cands[1])}
    del rec["scores"]["length"], rec["score_notes"]["length"], rec["length"]
    assert rec == plain  # the selecting scorer's part of the record is untouched
    assert extra.spent.n_prompts == 1  # scored on test only, for the chosen explanation


def test_the_selecting_scorer_picks_by_its_own_metric():
    ex = _dog_exemplars()
    rec = explain_feature(ex, _Stub(['" dog" (10), " cat" (1)', '" the" (10)']), _LengthScorer(), ExemplarConfig(),
                          {"dictionary": "d"})
    brevity = pytest.approx(1 / len('" the" (10)'))
    assert rec["best"] == 1 and rec["scores"] == {"brevity": brevity, "length": {
        "brevity": brevity, "n_prompts": 1, "n_tokens": None}}
    assert [c["valid_scores"]["brevity"] for c in rec["candidates"]] == [
        pytest.approx(1 / len('" dog" (10), " cat" (1)')), pytest.approx(1 / len('" the" (10)'))]


def test_compare_parses_hooks_with_the_one_parser_and_tolerates_unknown_names():
    assert parse_hook("blocks.3.hook_resid_post") == (3, "hook_resid_post")
    assert parse_hook("blocks.0.mlp.hook_post") == (0, "mlp.hook_post")
    assert parse_hook("blocks.2.attn.hook_z") == (None, "blocks.2.attn.hook_z")
    assert parse_hook("") == (None, "?")
    rec = {"dictionary": "x", "kind": "neuron", "hook": "encoder.layer.1", "explainer": "tokens",
           "simulator": "tokens", "feature": 0, "status": "ok",
           "scores": {"top_and_random": 0.5, "top": 0.5, "random": 0.1}}
    (row,) = summarise([rec])
    assert row["layer"] is None and row["site"] == "encoder.layer.1" and row["top_and_random"]["mean"] == 0.5


class _FailingScorer(_LengthScorer):
    """A scorer whose every request fails (an LLM server that errors), to see what a record keeps."""

    name = "broken"

    def _score_many(self, jobs):
        from explain.llm.errors import LLMError

        raise LLMError("HTTP 500 after 3 attempts")


def test_a_scoring_failure_keeps_the_explanation_and_the_scores_already_made():
    ex, cands = _dog_exemplars(), ['" the" (10)', '" dog" (10)']
    rec = explain_feature(ex, _Stub(cands), TokenListScorer(), ExemplarConfig(), {"dictionary": "d"},
                          extra_scorers=[_FailingScorer()])
    assert rec["status"] == "failed" and rec["failed_step"] == "scoring" and rec["failed_scorer"] == "broken"
    assert rec["error"] == "LLMError: HTTP 500 after 3 attempts"
    assert rec["explanation"] == cands[1] and [c["explanation"] for c in rec["candidates"]] == cands
    assert rec["scores"]["top_and_random"] == pytest.approx(1.0) and "broken" not in rec["scores"]
    assert "mode" not in rec  # the token lookup reads no LLM answers
    # a failing explainer: nothing to keep, and the step says so
    failing = explain_feature(ex, _FailingExplainer(), TokenListScorer(), ExemplarConfig(), {"dictionary": "d"})
    assert failing["status"] == "failed" and failing["failed_step"] == "explain" and failing["explanation"] is None


class _FailingExplainer:
    def candidates(self, train_records, *, feature_seed=0):
        from explain.llm.errors import LLMError

        raise LLMError("none of 1 answers held an explanation")
