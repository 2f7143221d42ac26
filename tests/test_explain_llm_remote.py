"""The OpenAI-compatible backend against a fake server on 127.0.0.1 started by the test.

The server plays a model whose digit distribution after "<word><TAB>" is fixed
per word ("Paris" -> 9 with p=.6, 8 with p=.2; any other word -> 0 with p=.7,
1 with p=.1; the rest on "unknown"), so the expected values are known by hand:
Paris -> (8·.2 + 9·.6)/.8 = 8.75, other -> (1·.1)/.8 = 0.125.
"""

from __future__ import annotations

import numpy as np
import pytest

from explain.llm.backends import BackendConfigError, LLMError, make_backend
from explain.explainer import ExplainerConfig, LLMExplainer
from explain.llm.cache import LLMCache
from explain.records import ActivationRecord
from explain.scorers.simulation import AllAtOnceSimulator
from tests.support.remote_server import FakeServer

FRAGS = [["We", " visited", " Paris"], [" Paris", " is", " big"]]
EXPECTED = [[0.125, 0.125, 8.75], [8.75, 0.125, 0.125]]


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def _backend(server, tmp_path=None, **kw):
    kw.setdefault("max_retries", 2)
    kw.setdefault("backoff_base", 0.001)
    cache = LLMCache(tmp_path / "llm.sqlite") if tmp_path is not None else None
    return make_backend("openai:fake-model", base_url=server.url, cache=cache, **kw)


def test_completions_echo_mode(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a localhost base URL works without a key
    result = AllAtOnceSimulator(_backend(server)).simulate("capital cities", FRAGS)
    assert result.mode == "completions-echo" and result.ten == "unavailable"
    np.testing.assert_allclose(result.expected_values[0], EXPECTED[0], atol=1e-9)
    np.testing.assert_allclose(result.expected_values[1], EXPECTED[1], atol=1e-9)
    assert server.count("/v1/completions") == 2 and result.n_calls == 2  # one request per prompt


def test_two_step_ten_in_completions_mode(server):
    result = AllAtOnceSimulator(_backend(server, ten_two_step=True)).simulate("capital cities", FRAGS[:1])
    assert result.ten == "two-step"
    # other words: p("1")=.1 splits into 1 (.05, "1" then newline) and 10 (.05, "1","0"); /.8 -> EV .6875
    np.testing.assert_allclose(result.expected_values[0], [0.6875, 0.6875, 8.75], atol=1e-9)
    assert server.count("/v1/completions") == 1 + 3  # the echo request + one per slot


def test_chat_top_logprobs_mode_when_echo_is_refused(server):
    server.echo = False
    result = AllAtOnceSimulator(_backend(server)).simulate("capital cities", FRAGS)
    assert result.mode == "chat-top-logprobs"
    np.testing.assert_allclose(np.concatenate(result.expected_values), np.concatenate(EXPECTED), atol=1e-9)
    assert server.count("/chat/completions") == 6  # one per token
    assert result.distributions[0][2][9] == pytest.approx(0.75)


def test_forced_chat_mode_respects_concurrency(server):
    server.delay = 0.05
    backend = _backend(server, sim_mode="chat", concurrency=2)
    AllAtOnceSimulator(backend).simulate("capital cities", [["a", " b", " c", " d", " e", " Paris"]])
    assert server.count("/v1/completions") == 0 and server.count("/chat/completions") == 6
    assert server.max_in_flight == 2


def test_429_then_success_is_retried(server):
    server.script = [429]
    result = AllAtOnceSimulator(_backend(server)).simulate("capital cities", FRAGS[:1])
    np.testing.assert_allclose(result.expected_values[0], EXPECTED[0], atol=1e-9)
    assert server.count() == 2


def test_500_exhausting_retries_raises_not_zero(server, tmp_path):
    server.script = [500] * 3
    backend = _backend(server, tmp_path, max_retries=2)
    with pytest.raises(LLMError, match="failed after 3 attempts"):
        AllAtOnceSimulator(backend).simulate("capital cities", FRAGS[:1])
    assert server.count() == 3 and len(backend.cache) == 0  # nothing cached as a success
    # the next run retries and succeeds
    result = AllAtOnceSimulator(backend).simulate("capital cities", FRAGS[:1])
    np.testing.assert_allclose(result.expected_values[0], EXPECTED[0], atol=1e-9)


@pytest.mark.parametrize("echo", [True, False])
def test_garbage_answer_is_a_clear_failure(server, tmp_path, echo):
    server.garbage, server.echo = True, echo
    backend = _backend(server, tmp_path)
    with pytest.raises(LLMError, match="digit"):
        AllAtOnceSimulator(backend).simulate("capital cities", FRAGS[:1])
    assert len(backend.cache) == 0


def test_cache_hit_on_rerun_sends_nothing(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-123")
    first = AllAtOnceSimulator(_backend(server, tmp_path)).simulate("capital cities", FRAGS)
    sent = server.count()
    again = AllAtOnceSimulator(_backend(server, tmp_path)).simulate("capital cities", FRAGS)  # a fresh "run"
    assert server.count() == sent and again.n_calls == 0 and again.n_cached == 2
    assert again.expected_values == first.expected_values
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"sk-test-secret-123" not in raw  # the key is never stored


def test_explainer_through_chat(server, tmp_path):
    backend = _backend(server, tmp_path, concurrency=3)
    train = [ActivationRecord([" in", f" City{i}"], [0.0, 1.0 + i]) for i in range(30)]
    explainer = LLMExplainer(backend, ExplainerConfig(format="bills", k=4, seed=1))
    cands = explainer.candidates(train, feature_seed=7)
    assert [c.explanation for c in cands] == ["capital cities"] * 4
    assert len({c.fewshot for c in cands}) == 4  # k <= 4 candidates never repeat a few-shot example
    assert all(10 <= len(c.shown) <= 20 for c in cands) and len({tuple(c.shown) for c in cands}) == 4
    sent = [body for path, body in server.requests if path.endswith("/chat/completions")]
    assert len(sent) == 4 and all(b["messages"][-1]["role"] == "user" for b in sent)
    assert all("the main thing this neuron does is find" in b["messages"][-1]["content"] for b in sent)
    # same seeds -> same requests -> all from the cache
    LLMExplainer(backend, ExplainerConfig(format="bills", k=4, seed=1)).candidates(train, feature_seed=7)
    assert server.count() == 4


def test_key_required_for_remote_url(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(BackendConfigError, match="OPENAI_API_KEY"):
        make_backend("openai:gpt-4o-mini")
    with pytest.raises(BackendConfigError, match="unknown LLM backend"):
        make_backend("anthropic:x")


def test_killed_run_resumes_from_the_cache(server, tmp_path):
    server.script = [200, 500, 500, 500]  # the first prompt succeeds, the second fails every retry
    backend = _backend(server, tmp_path, concurrency=1)
    with pytest.raises(LLMError):
        AllAtOnceSimulator(backend).simulate("capital cities", FRAGS)
    assert server.count() == 4
    result = AllAtOnceSimulator(_backend(server, tmp_path)).simulate("capital cities", FRAGS)
    assert server.count() == 5 and result.n_cached == 1 and result.n_calls == 1  # only the missing prompt
    np.testing.assert_allclose(np.concatenate(result.expected_values), np.concatenate(EXPECTED), atol=1e-9)


MALFORMED = [
    (b"this is not json {", "application/json"),  # the SDK's json() raises JSONDecodeError
    (b"<html>502 Bad Gateway</html>", "text/html"),  # the SDK returns the text as a str
    (b'{"id": "x", "object": "chat.completion"}', "application/json"),  # valid JSON, no choices
    (b'{"choices": [{"index": 0}]}', "application/json"),  # a choice without a message / logprobs
    (b"[1, 2, 3]", "application/json"),
]


@pytest.mark.parametrize("raw", MALFORMED, ids=lambda r: r[0][:12].decode())
def test_malformed_responses_are_llm_errors_and_nothing_is_cached(server, tmp_path, raw):
    server.raw = raw
    backend = _backend(server, tmp_path)
    train = [ActivationRecord([" in", f" City{i}"], [0.0, 1.0 + i]) for i in range(5)]
    with pytest.raises(LLMError, match="fake-model generate"):
        LLMExplainer(backend, ExplainerConfig(format="bills", k=1)).candidates(train)
    for mode in ("completions", "chat"):
        with pytest.raises(LLMError, match="fake-model"):
            AllAtOnceSimulator(_backend(server, tmp_path, sim_mode=mode)).simulate("capital cities", FRAGS[:1])
    assert len(backend.cache) == 0
    server.raw = None  # the same backend works once the server answers properly
    assert LLMExplainer(backend, ExplainerConfig(format="bills", k=1)).candidates(train)[0].explanation == "capital cities"


def test_other_openai_api_errors_are_llm_errors(server, monkeypatch):
    """An APIError that is neither an HTTP status nor a connection problem (raised by the SDK itself)."""
    import openai

    backend = _backend(server)
    # the HTTP request the SDK really sent, through its documented raw-response accessor: the SDK's request type
    # (httpx before openai 3, httpx2 since) is its own business
    sent = backend.client.chat.completions.with_raw_response.create(
        model="fake-model", messages=[{"role": "user", "content": "hi"}]).http_request

    def raise_api_error(**kwargs):
        raise openai.APIError("stream ended mid-answer", sent, body=None)

    monkeypatch.setattr(backend.client.chat.completions, "create", raise_api_error)
    with pytest.raises(LLMError, match="APIError: stream ended mid-answer"):
        backend.generate([{"role": "user", "content": "hi"}])


def _closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_a_closed_port_gives_up_after_n_connection_failures_in_a_row_naming_the_url(tmp_path):
    from common.errors import UserError
    from explain.llm.errors import EndpointUnreachable

    url = _closed_port_url()
    backend = make_backend("openai:m", base_url=url, cache=LLMCache(tmp_path / "c.sqlite"), max_retries=5,
                           backoff_base=0.001, max_connection_failures=3)
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(EndpointUnreachable, match=rf"cannot reach {url} \(openai:m\): 3 connection attempts in a "
                                                 r"row failed \(APIConnectionError") as info:
        backend.generate(messages)
    assert isinstance(info.value, UserError) and not isinstance(info.value, LLMError)  # ends the run, not a feature
    assert backend.n_calls == 3  # not max_retries + 1 = 6
    with pytest.raises(EndpointUnreachable):  # every later request fails at once, without a connection attempt
        backend.generate(messages + [{"role": "user", "content": "again"}])
    assert backend.n_calls == 3 and not (tmp_path / "c.sqlite").exists()


def test_rate_limits_and_server_errors_are_not_connection_failures(server):
    """A server that answers (429, 5xx) is reachable: its errors keep the retry schedule and never trip the limit."""
    server.script = [429, 503, 429, 503, 429]
    backend = _backend(server, max_retries=5, max_connection_failures=1)
    assert backend.generate([{"role": "user", "content": "hi"}])
    assert server.count() == 6


@pytest.mark.parametrize("spec, pattern", [
    ("nonsense", r"unknown LLM backend 'nonsense': use tokens \(no LLM\), local:<hub id\|folder\|default> or "
                 r"openai:<model>"),
    ("local:", r"'local:' names no model: use local:default for the offline model"),
    ("local: ", r"names no model"),
    ("openai:", r"'openai:' names no model: use openai:<model>"),
])
def test_a_spec_without_a_known_backend_or_a_model_is_refused(spec, pattern):
    from explain.llm.backends import parse_spec

    with pytest.raises(BackendConfigError, match=pattern):
        parse_spec(spec)
