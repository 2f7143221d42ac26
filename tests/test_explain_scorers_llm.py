"""Detection, fuzzing and intruder scorers against a fake OpenAI-compatible server on 127.0.0.1.

The server plays an oracle for one synthetic feature that fires on " dog":
detection says 1 for an example containing "dog" when the explanation
mentions dogs; fuzzing says 1 when every marked span contains "dog"; the
intruder answer is the example whose marks are not "dog". With
log-probabilities a 1 is written with P("1") = 0.9 and a 0 with P("1") = 0.2,
so every expected number is known by hand. The server can also answer
without log-probabilities, refuse them (400), answer garbage, or 429.
"""

from __future__ import annotations

import pytest

from explain.llm.backends import LLMError
from tests.support.oracle_server import OracleServer, dog_scoring, make_oracle_scorer, scoring_examples

@pytest.fixture
def server():
    s = OracleServer()
    yield s
    s.close()


def test_detection_reads_p_yes_from_logprobs_and_scores_it(server, tmp_path):
    scorer = make_oracle_scorer("detection", server, tmp_path)
    result = scorer.score("the word dog", scoring_examples(dog_scoring()))
    detail = result.record["detection"]
    assert result.metrics["auroc"] == 1.0 and result.metrics["balanced_accuracy"] == 1.0 and result.metrics["f1"] == 1.0
    p_by_label = sorted(zip(dog_scoring().labels, detail["p_yes"]))
    assert p_by_label == [(0, pytest.approx(0.2))] * 5 + [(1, pytest.approx(0.9))] * 5  # P(1)/(P(0)+P(1))
    assert detail["mode"] == "chat-logprobs" and detail["failed_batches"] == [] and detail["n_text_answers"] == 0
    assert sorted(i for b in detail["batches"] for i in b) == list(range(10)) and len(detail["batches"]) == 2
    assert result.cost.n_prompts == 2 and result.cost.n_calls == 2 and result.cost.n_tokens == 220
    assert all(r["logprobs"] is True and r["top_logprobs"] == 20 and r["temperature"] == 0 for r in server.requests)
    again = scorer.score("the word dog", scoring_examples(dog_scoring()))
    assert len(server.requests) == 2 and again.metrics == result.metrics and again.cost.n_cached == 2  # LLM cache
    assert again.cost.n_tokens == 220  # what the prompts cost, also when the answers come from the cache
    wrong = scorer.score("the word telescope", scoring_examples(dog_scoring()))
    assert wrong.metrics["auroc"] == 0.5 and wrong.metrics["balanced_accuracy"] == 0.5 and wrong.metrics["f1"] == 0


def test_fuzzing_marks_the_dog_in_activating_examples_only(server, tmp_path):
    result = make_oracle_scorer("fuzzing", server, tmp_path).score("the word dog", scoring_examples(dog_scoring()))
    assert result.metrics["auroc"] == 1.0 and result.metrics["accuracy"] == 1.0
    users = [r["messages"][-1]["content"] for r in server.requests]
    assert sum(u.count("<<dog>>") for u in users) == 5  # only the activating examples' " dog" is marked


def test_text_answers_and_a_server_that_refuses_logprobs(server, tmp_path):
    server.mode = "text"
    result = make_oracle_scorer("detection", server, tmp_path).score("dogs", scoring_examples(dog_scoring()))
    detail = result.record["detection"]
    assert detail["mode"] == "text" and detail["n_text_answers"] == 10 and result.metrics["auroc"] == 1.0
    assert sorted(detail["p_yes"]) == [0] * 5 + [1] * 5
    server.mode, server.requests = "refuse-logprobs", []
    result = make_oracle_scorer("detection", server, tmp_path / "b").score("dogs", scoring_examples(dog_scoring()))
    assert result.record["detection"]["mode"] == "text" and result.metrics["balanced_accuracy"] == 1.0
    # one refused request, then every request without logprobs
    assert [bool(r.get("logprobs")) for r in server.requests] == [True, False, False]


def test_garbage_answers_are_failed_batches_never_guesses(server, tmp_path):
    server.mode = "garbage"
    result = make_oracle_scorer("detection", server, tmp_path).score("dogs", scoring_examples(dog_scoring()))
    assert all(result.metrics[m] is None for m in ("auroc", "balanced_accuracy", "f1"))
    assert result.metrics["n_failed"] == 2 and "all 2 batches failed" in result.notes["auroc"]
    failed = result.record["detection"]["failed_batches"]
    assert [f["batch"] for f in failed] == [0, 1] and "no list of 0s and 1s" in failed[0]["error"]
    assert result.record["detection"]["p_yes"] == [None] * 10


def test_429_is_retried_and_a_request_that_keeps_failing_raises(server, tmp_path):
    server.script = [429, 429]
    result = make_oracle_scorer("detection", server, tmp_path, max_retries=2).score(
        "dogs", scoring_examples(dog_scoring()))
    assert result.metrics["auroc"] == 1.0 and len(server.requests) == 4  # 2 x 429, then the two batches
    server.script = [429] * 3
    with pytest.raises(LLMError, match="failed after 3 attempts"):
        make_oracle_scorer("detection", server, tmp_path / "b", max_retries=2).score(
            "cats", scoring_examples(dog_scoring()))


def test_intruder_finds_the_other_features_example_without_an_explanation(server, tmp_path):
    scorer = make_oracle_scorer("intruder", server, tmp_path, intruder_rounds=3)
    scoring = dog_scoring(intruders=3)
    result = scorer.score("ignored", scoring_examples(scoring))
    assert result.metrics == {"accuracy": 1.0, "p_correct": pytest.approx(0.9), "chance": 0.2, "n_failed": 0}
    rounds = result.record["intruder"]["rounds"]
    assert len(rounds) == 3 and all(len(r["shown"]) == 4 for r in rounds)
    assert result.record["intruder"]["chosen"] == [r["slot"] for r in rounds]
    assert not any("Explanation" in r["messages"][-1]["content"] for r in server.requests)
    scorer.score("another explanation", scoring_examples(scoring))
    assert len(server.requests) == 3  # the same prompts whatever the explanation: all from the cache
    none = scorer.score("x", scoring_examples(dog_scoring(intruders=0)))
    assert none.metrics["accuracy"] is None and none.cost.n_prompts == 0
