"""Servers that answer a request carrying logprobs fields with a client error (issue 24).

Some OpenAI-compatible servers validate their fields strictly and answer
``logprobs``/``top_logprobs``/``echo`` with HTTP 400 or 422 instead of
ignoring them. In ``--score-mode auto`` that means "no logprobs here": the
run switches to text answers once, says so in one line per readout, and
scores every feature. The same status to a request without those fields is
still an error, and it names the server's reason, also when the server puts
it where the SDK does not look (FastAPI's ``{"detail": ...}``).
"""

from __future__ import annotations

import pytest

from common.errors import UserError
from explain.commands import explain_command
from explain.llm.backends import make_backend
from explain.llm.errors import LLMError, NoLogprobs
from explain.pipeline import read_records
from explain.scorers.prompts import detection_request
from explain.settings import ExplainSettings, ScoringConfig
from tests.fake_served import FakeServed, text_value


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    served = FakeServed()
    yield served
    served.close()


def _settings(setup, server, out, **kw):  # noqa: F811
    args = dict(cache=str(setup["cache"]), dicts=[str(setup["pca"])], features=3, explainer="openai:fake",
                simulator="openai:fake", base_url=server.url, scorers=["simulation", "detection"], out=str(out),
                concurrency=2, scoring=ScoringConfig(n_quantiles=5, per_quantile=1, n_negative=5))
    args.update(kw)
    return ExplainSettings(**args)


@pytest.mark.parametrize("status, concurrency", [(400, 1), (422, 2)])
def test_auto_mode_reads_text_once_a_server_refuses_logprobs_fields(setup, server, tmp_path, capsys,  # noqa: F811
                                                                     status, concurrency):
    server.logprobs_refusal = status
    explain_command(_settings(setup, server, tmp_path / "r", concurrency=concurrency))
    err = capsys.readouterr().err
    records = read_records(tmp_path / "r" / "explanations.jsonl")
    assert len(records) == 3 and all(r["status"] == "ok" for r in records)
    for rec in records:
        assert rec["mode"] == "text" and rec["simulation"]["mode"] == "text" and rec["detection"]["mode"] == "text"
        ex = rec["exemplars"]
        tokens = [f["tokens"] for f in ex["top"] + ex["random"] if f["split"] == "test"]
        # the values the server wrote for each token, read as text: the fragments were really scored
        assert rec["simulation"]["test"] == [[float(text_value(t)) for t in frag] for frag in tokens]
        assert rec["scores"]["top_and_random"] is not None
    switched = [line for line in err.splitlines() if "refuses logprobs" in line]
    assert len([s for s in switched if "simulating from text answers" in s]) == 1, err
    assert len([s for s in switched if "reading answers as text" in s]) == 1, err
    assert all(f"HTTP {status}" in s and "unsupported fields: logprobs" in s for s in switched)
    if concurrency == 1:  # found out once per readout (echo, chat top_logprobs, scored answers), not per feature
        assert server.statuses[status] == 3


def test_logprobs_mode_fails_scoring_against_a_server_refusing_logprobs_and_keeps_the_explanation(
        setup, server, tmp_path):  # noqa: F811
    server.logprobs_refusal = 400
    with pytest.raises(UserError, match="no feature of this run succeeded"):
        explain_command(_settings(setup, server, tmp_path / "r", scorers=["simulation"], score_mode="logprobs"))
    records = read_records(tmp_path / "r" / "explanations.jsonl")
    assert records and all(r["status"] == "failed" and r["failed_step"] == "scoring" for r in records)
    assert all("refuses logprobs (HTTP 400" in r["error"] and r["explanation"] for r in records)


def test_a_client_error_to_a_plain_request_stays_an_error_and_names_the_servers_reason(server):
    server.error_body = {"detail": "The prompt has 704 tokens, but the model takes at most 256"}
    server.script = [400]
    backend = make_backend("openai:fake", base_url=server.url, max_retries=0)
    with pytest.raises(LLMError, match=r"generate: HTTP 400: .*The prompt has 704 tokens") as info:
        backend.generate([{"role": "user", "content": "hi"}])
    assert not isinstance(info.value, NoLogprobs)  # no logprobs were asked for: nothing to switch
    backend.close()


@pytest.mark.parametrize("status", [401, 429])
def test_auth_and_rate_limit_errors_to_a_logprobs_request_are_not_taken_for_a_refusal(server, status):
    server.script = [status] * 3
    backend = make_backend("openai:fake", base_url=server.url, max_retries=0)
    with pytest.raises(LLMError) as info:
        backend.generate_scored([detection_request("dogs", ["a dog", "a cat"])])
    assert not isinstance(info.value, NoLogprobs) and f"Error code: {status}" in str(info.value)
    assert not backend.scored_text_only  # the next request still asks for logprobs
    server.script = []
    assert backend.generate_scored([detection_request("dogs", ["a dog", "a cat"])])[0].top_logprobs is not None
    backend.close()


def test_an_error_body_naming_logprobs_is_a_refusal_whatever_the_client_status(server, capsys):
    server.logprobs_refusal = 418  # no status of the usual list: the body says what it is about
    backend = make_backend("openai:fake", base_url=server.url, max_retries=0)
    gen = backend.generate_scored([detection_request("dogs", ["a dog", "a cat"])])[0]
    assert gen.mode == "text" and gen.top_logprobs is None and backend.scored_text_only
    assert "refuses logprobs (HTTP 418" in capsys.readouterr().err
    backend.close()
