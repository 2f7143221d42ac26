"""The text scoring mode without a server: reading answers, and scores of two modes kept apart downstream.

The end-to-end runs against a real server without logprobs are in
`tests.test_explain_served`; here are the parts that need none: the parser
of the simulator's JSON lists, how records of each mode are told apart
(records written before modes existed read as logprobs), and that
`compare` and the report never average a text-mode score with a logprob one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from explain.commands import compare_command
from explain.scorers.answers import AnswerError
from explain.scorers.base import coarse_mode, record_mode
from explain.scorers.text_sim import parse_values, text_request
from explain.records import load_fewshot
from explain.settings import CompareSettings, ExplainSettings

HOOK = "blocks.1.hook_resid_post"


@pytest.mark.parametrize("text, n, values", [
    ("[0, 3, 10]", 3, [0, 3, 10]),
    ('Sure: [1,0] and then some text', 2, [1, 0]),
])
def test_a_json_list_of_integers_0_to_10_of_the_right_length_is_read(text, n, values):
    assert parse_values(text, n) == values


@pytest.mark.parametrize("text, n, why", [
    ("[0, 3]", 3, "2 values for 3 tokens"),
    ("[0, 3, 4, 5]", 3, "4 values for 3 tokens"),
    ("[0, 11, 2]", 3, "integers 0..10"),
    ("[0, -1, 2]", 3, "integers 0..10"),
    ("[0, 2.5, 2]", 3, "integers 0..10"),
    ("[true, 1, 2]", 3, "integers 0..10"),
    ('["0", "1", "2"]', 3, "integers 0..10"),
    ("[0 1 2]", 3, "not JSON"),
    ("0, 1, 2", 3, "no JSON list"),
    ("[0, 1, 2", 3, "never closed"),
])
def test_any_other_answer_is_an_error_never_a_padded_guess(text, n, why):
    with pytest.raises(AnswerError, match=why):
        parse_values(text, n)


def test_the_text_prompt_lists_every_token_and_shows_the_fewshot_answer_in_the_asked_form():
    fewshot = load_fewshot(["negation"])[0]
    req = text_request("dogs", [" the", " dog", "\n"], fewshot)
    roles = [r for r, _ in req.messages]
    assert roles == ["system", "user", "assistant", "user"] and req.shared == 3
    shot = fewshot.records[0]
    answer = json.loads(req.messages[2][1])
    assert len(answer) == len(shot.tokens) and all(isinstance(v, int) and 0 <= v <= 10 for v in answer)
    assert max(answer) == 10  # the few-shot record holds the feature's maximum
    question = req.messages[3][1]
    assert question.startswith("Explanation: dogs") and '3. "\\n"' in question and "exactly 3 integers" in question


def test_modes_of_records_old_and_new():
    assert coarse_mode("completions-echo") == coarse_mode("local-exact") == "logprobs"
    assert coarse_mode("chat-logprobs+text") == "logprobs+text" and coarse_mode("text") == "text"
    assert coarse_mode("token-lookup") is None and coarse_mode(None) is None
    old = {"explainer": "openai:m", "simulator": "openai:m", "simulation": {"mode": "chat-top-logprobs"}}
    assert record_mode(old) == "logprobs" and record_mode(old, "simulation") == "logprobs"
    assert record_mode({"simulator": "openai:m"}) == "logprobs"  # before modes existed: logprobs
    assert record_mode({"simulator": "tokens"}) == "none"
    new = {"simulator": "openai:m", "mode": "logprobs+text", "simulation": {"mode": "text"},
           "detection": {"mode": "chat-logprobs"}}
    assert record_mode(new, "simulation") == "text" and record_mode(new, "detection") == "logprobs"
    assert record_mode(new) == "logprobs+text"


def test_score_mode_and_rescore_are_settings_and_cli_flags():
    import cli
    from common.errors import UserError
    from common.options import from_namespace

    args = cli.build_parser().parse_args(["explain", "--cache", "c", "--dict", "d", "--out", "o",
                                          "--score-mode", "text", "--rescore", "runs/old"])
    got = from_namespace(ExplainSettings, args)
    assert got.score_mode == "text" and got.rescore == "runs/old"
    doc = got.to_json()
    assert doc["score_mode"] == "text" and doc["rescore"] == str(Path("runs/old").resolve())
    plain = ExplainSettings(cache="c", dicts=["d"]).to_json()
    assert "score_mode" not in plain and "rescore" not in plain  # older run folders still resume
    with pytest.raises(UserError, match="--score-mode 'exact'"):
        ExplainSettings(cache="c", dicts=["d"], score_mode="exact").validate()


def _record(feature: int, score: float, mode: str | None) -> dict:
    rec = {"dictionary": "sae", "dictionary_path": "/d/sae", "kind": "tied_sae", "hook": HOOK, "explainer": "openai:m",
           "simulator": "openai:m", "feature": feature, "status": "ok", "explanation": f"feature {feature}",
           "scores": {"top_and_random": score, "top": score, "random": score,
                      "simulation": {"top_and_random": score, "top": score, "random": score, "n_prompts": 1}},
           "score_notes": {}}
    if mode is not None:
        rec["mode"] = mode
        rec["simulation"] = {"mode": mode, "test": []}
    return rec


def _write(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "explanations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_compare_and_the_report_show_scores_of_each_mode_apart(tmp_path):
    old = _write(tmp_path / "run" / "explanations" / "old", [_record(f, 0.5, None) for f in range(3)])
    skipped = {**_record(9, 0.0, None), "status": "skipped", "scores": {}, "explanation": None}
    text = _write(tmp_path / "run" / "explanations" / "text", [_record(f, 0.1, "text") for f in range(3)] + [skipped])
    rows = compare_command(CompareSettings(explanations=[str(old), str(text)], json_path=str(tmp_path / "c.json")))
    by_mode = {r["mode"]: r for r in rows}
    assert len(rows) == 2 and set(by_mode) == {"logprobs", "text"}  # same features, same simulator: two rows
    assert by_mode["logprobs"]["top_and_random"]["mean"] == pytest.approx(0.5) and by_mode["logprobs"]["n"] == 3
    assert by_mode["text"]["top_and_random"]["mean"] == pytest.approx(0.1) and by_mode["text"]["n_ok"] == 3
    assert by_mode["text"]["n_skipped"] == 1  # a skipped record has no mode: it counts with its run's scored ones
    doc = json.loads((tmp_path / "c.json").read_text())
    heads = {g["scorer"]: g for g in doc["scorer_groups"] if g["metric"] == "top_and_random"}
    assert heads["simulation"]["mean"] == pytest.approx(0.5) and heads["simulation [text]"]["mean"] == pytest.approx(0.1)

    from report.build import build_report

    html = build_report(tmp_path / "run", tmp_path / "report").read_text()
    section = html[html.index('id="scores"'):html.index('id="dictionaries"')]
    assert "<th>mode</th>" in section and "<td>text</td>" in section and "<td>logprobs</td>" in section


def test_forced_text_mode_on_a_local_model_fails_unreadable_answers_and_caches_them(tmp_path):
    from explain.llm.cache import LLMCache
    from explain.llm.errors import LLMError
    from explain.llm.local import LocalBackend
    from explain.records import ActivationRecord, Examples
    from explain.scorers import make_scorer
    from tests.support.tiny_models import make_tiny_model, make_tokenizer

    tok = make_tokenizer()
    model = make_tiny_model("llama", len(tok))
    model.config.max_position_embeddings = 2048  # the text prompt (few-shot turn included) is ~600 byte tokens
    backend = LocalBackend(model, tok, name="local:tiny", cache=LLMCache(tmp_path / "c.sqlite"))
    scorer = make_scorer("simulation", backend)
    scorer.score_mode = "text"
    ex = Examples("test", [ActivationRecord([" the", " dog"], [0.0, 1.0])], [ActivationRecord([" a"], [0.0])])
    with pytest.raises(LLMError, match="none of the 2 fragments' text answers could be read"):
        scorer.score("dogs", ex)  # a random model writes no JSON list: the scoring fails, no zeros are made up
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(tmp_path / "c.sqlite")) as conn:
        requests = conn.execute("SELECT request FROM calls").fetchall()
    assert len(requests) == 2 and all(json.loads(r)["op"] == "text-answer" for (r,) in requests)
    passes = backend.tokens_processed
    with pytest.raises(LLMError):
        scorer.score("dogs", ex)
    assert backend.tokens_processed == passes  # the answers came from the cache


def test_score_mode_text_asks_for_text_only_and_logprobs_mode_refuses_a_server_without_them(tmp_path):
    """Detection and intruder against the oracle judge of `tests.support.oracle_server` (a server with logprobs
    that answers text only when asked without them)."""
    from explain.llm.errors import NoLogprobs
    from tests.support.oracle_server import OracleServer, dog_scoring, make_oracle_scorer, scoring_examples

    server = OracleServer()
    try:
        scorer = make_oracle_scorer("detection", server, tmp_path)
        scorer.score_mode = "text"
        result = scorer.score("the word dog", scoring_examples(dog_scoring()))
        detail = result.record["detection"]
        assert detail["mode"] == "text" and detail["n_text_answers"] == 10 and result.metrics["auroc"] == 1.0
        assert sorted(detail["p_yes"]) == [0] * 5 + [1] * 5  # each judgement exactly as written
        assert not any(r.get("logprobs") for r in server.requests)  # nothing asked for logprobs
        intruder = make_oracle_scorer("intruder", server, tmp_path / "i", intruder_rounds=2)
        intruder.score_mode = "text"
        got = intruder.score("ignored", scoring_examples(dog_scoring(intruders=2)))
        assert got.metrics["accuracy"] == 1.0 and got.metrics["p_correct"] == 1.0 and got.record["intruder"]["mode"] == "text"

        server.mode = "text"  # from now on the server returns no logprobs, even when asked
        required = make_oracle_scorer("detection", server, tmp_path / "r")
        required.score_mode = "logprobs"
        with pytest.raises(NoLogprobs, match="detection answers came back without logprobs"):
            required.score("the word dog", scoring_examples(dog_scoring()))
    finally:
        server.close()
