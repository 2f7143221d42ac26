"""Metric math of the classification scorers against hand-computed confusion matrices and AUROCs,
Spearman's rho, and reading answers (lists of 0/1 and intruder numbers) from text and log-probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from explain.llm.base import Generation
from explain.scorers.answers import AnswerError, read_binary_list, read_choice
from explain.scorers.metrics import auroc, classification_metrics, confusion, spearman


def test_confusion_and_derived_metrics_match_a_hand_computed_matrix():
    labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    p_yes = [0.9, 0.8, 0.4, 0.7, 0.6, 0.2, 0.1, 0.3, 0.55, 0.05]
    # predicted (> 0.5): 1 1 0 1 | 1 0 0 0 1 0  ->  TP 3, FN 1, FP 2, TN 4
    assert confusion(labels, [p > 0.5 for p in p_yes]) == {"tp": 3, "fp": 2, "tn": 4, "fn": 1}
    m, notes = classification_metrics(labels, p_yes)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["recall"] == pytest.approx(3 / 4) and m["precision"] == pytest.approx(3 / 5)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    # AUROC by counting the 4 x 6 pairs: positives .9 .8 .7 beat every negative (18); .4 beats .3 .2 .1 .05 (4)
    assert m["auroc"] == pytest.approx(22 / 24) and notes == {}


def test_auroc_counts_ties_as_one_half_and_is_undefined_without_both_classes():
    assert auroc([1, 0], [0.5, 0.5]) == (0.5, None)
    assert auroc([1, 1, 0, 0], [1, 0, 1, 0]) == (0.5, None)  # hard 0/1 answers: (1 + .5 + .5 + 0) / 4
    assert auroc([1, 0, 0], [0.2, 0.9, 0.1]) == (pytest.approx(0.5), None)
    value, why = auroc([1, 1], [0.3, 0.7])
    assert value is None and "AUROC needs both" in why
    m, notes = classification_metrics([1, 1, 1], [0.9, 0.2, 0.8])
    assert m["auroc"] is None and m["balanced_accuracy"] is None and m["recall"] == pytest.approx(2 / 3)
    assert set(notes) == {"auroc", "balanced_accuracy"}
    m, notes = classification_metrics([0, 0], [0.1, 0.2])  # nothing predicted, nothing to find
    assert m["precision"] is None and m["f1"] is None and m["accuracy"] == 1.0 and "precision" in notes


def test_spearman_is_the_correlation_of_ranks():
    rho, _ = spearman([1, 2, 3, 4], [10, 20, 30, 1000])
    assert rho == pytest.approx(1.0)
    rho, _ = spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7])  # ranks y = 1 2 3.5 5 3.5
    assert rho == pytest.approx(0.8207826816681233)
    assert spearman([1, 2], [2, 1])[0] is None
    assert spearman([1, 1, 1], [1, 2, 3])[0] is None  # constant: undefined, not 0


def _gen(tokens, tops=None, mode="chat-logprobs"):
    return Generation("".join(tokens), list(tokens), tops, mode if tops is not None else "text")


def test_a_list_answer_is_read_at_the_tokens_that_wrote_it():
    tokens = ["[", "1", ",", "0", ",", "1", "]"]
    tops = [{"[": 0.0}, {"1": math.log(0.6), "0": math.log(0.2), "yes": math.log(0.2)}, {",": 0.0},
            {"0": math.log(0.5), " 0": math.log(0.25), "1": math.log(0.25)}, {",": 0.0},
            {"no": math.log(0.9), "maybe": math.log(0.1)}, {"]": 0.0}]
    p, n_text = read_binary_list(_gen(tokens, tops), 3)
    # P(1)/(P(0)+P(1)): .6/.8; " 0" counts as 0: .25/(.75+.25); neither digit listed -> the written 1
    assert p == [pytest.approx(0.75), pytest.approx(0.25), 1.0] and n_text == 1
    merged = ["Answer: ", "[1", ",0", ",0]"]  # tokenizers that merge brackets with digits
    tops = [{"Answer: ": 0.0}, {"[1": math.log(0.7), "[0": math.log(0.3)}, {",0": 0.0, ",1": math.log(1e-9)},
            {",0]": 0.0}]
    p, n_text = read_binary_list(_gen(merged, tops), 3)
    assert p == [pytest.approx(0.7), pytest.approx(1e-9), 0.0] and n_text == 0


def test_text_answers_count_as_0_or_1_and_garbage_is_an_error_not_a_guess():
    assert read_binary_list(_gen(["The answer is [0, 1,1]."]), 3) == ([0.0, 1.0, 1.0], 3)
    assert read_binary_list(_gen(["1, 0, 0"]), 3) == ([1.0, 0.0, 0.0], 3)  # a bare list
    for bad, n in (("[1,0]", 3), ("I think they all fit.", 2), ("[1, yes, 0]", 3), ("", 1)):
        with pytest.raises(AnswerError):
            read_binary_list(_gen([bad]), n)


def test_an_intruder_answer_is_a_number_with_its_distribution_over_the_examples():
    tops = [{"3": math.log(0.5), "1": math.log(0.25), "Example": math.log(0.25)}]
    answer, probs = read_choice(_gen(["3"], tops), 5)
    assert answer == 2 and probs == pytest.approx([1 / 3, 0, 2 / 3, 0, 0])
    assert read_choice(_gen(["Example 4 is the odd one."]), 5) == (3, None)
    for bad in ("none of them", "7", "0"):
        with pytest.raises(AnswerError):
            read_choice(_gen([bad]), 5)


def _rec(feature, explainer="tokens", simulator="tokens", hook="blocks.3.hook_resid_post", **scores):
    return {"dictionary": "sae", "dictionary_path": "/d/sae", "kind": "tied_sae", "hook": hook, "feature": feature,
            "explainer": explainer, "simulator": simulator, "status": "ok", "explanation": f"e{feature}",
            "scores": scores}


def test_compare_merges_runs_per_feature_and_ranks_scorers_against_each_other():
    from explain.scorer_compare import agreement, summarise_scorers

    old = [_rec(f, top_and_random=v, top=v, random=None) for f, v in enumerate([0.1, 0.2, 0.3, 0.4])]  # pre-15
    emb = [_rec(f, embedding={"auroc": v, "n_prompts": 0, "n_tokens": 9}) for f, v in enumerate([0.6, 0.5, 0.9, 0.8])]
    det = [_rec(f, simulator="local:default", detection={"auroc": v, "balanced_accuracy": v, "f1": None,
                                                         "n_failed": 0})
           for f, v in enumerate([0.4, 0.5, 0.6, 0.7])]
    dup = [_rec(0, embedding={"auroc": 0.0})]  # the same feature again: its first value is kept, never counted twice
    rows = {(r["scorer"], r["metric"]): r for r in summarise_scorers(old + emb + det + dup)}
    assert rows[("tokens", "top_and_random")]["mean"] == pytest.approx(0.25) and rows[("tokens", "top_and_random")]["n"] == 4
    assert rows[("embedding", "auroc")]["mean"] == pytest.approx(0.7) and rows[("embedding", "auroc")]["n"] == 4
    assert rows[("detection", "f1")]["n"] == 0 and rows[("detection", "f1")]["n_null"] == 4
    assert rows[("embedding", "auroc")]["ci"] == pytest.approx(1.96 * np.std([0.6, 0.5, 0.9, 0.8], ddof=1) / 2)
    rho = {(a["a"], a["b"]): a for a in agreement(old + emb + det + dup)}
    assert rho[("detection", "tokens")]["rho"] == pytest.approx(1.0)
    # ranks 2 1 4 3 against 1 2 3 4: 1 - 6·4 / (4·15) = 0.6
    assert rho[("embedding", "tokens")]["rho"] == pytest.approx(0.6) and rho[("embedding", "tokens")]["n"] == 4
