"""`explain --concurrency N` against a served model: N requests really overlap, records are those of N = 1.

The server is `tests.fake_served` (answers depend only on each request's
content, and it counts the requests in flight at once). The LLM call cache
is also written by two processes at once here: nothing may be lost.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

from common.errors import UserError
from explain.commands import explain_command
from explain.feature_pool import ordered_map
from explain.llm.cache import LLMCache
from explain.pipeline import read_records
from explain.settings import ExplainSettings, ScoringConfig
from tests.fake_served import FakeServed

REPO = Path(__file__).resolve().parents[1]


def test_ordered_map_keeps_order_overlaps_workers_and_raises_in_order():
    lock, state = threading.Lock(), {"now": 0, "max": 0}

    def work(i: int) -> int:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.02 * ((7 * i) % 5))  # later items often finish first
        with lock:
            state["now"] -= 1
        if i == 13:
            raise ValueError("item 13")
        return i * i

    got = []
    with pytest.raises(ValueError, match="item 13"):
        for r in ordered_map(work, range(20), workers=4):
            got.append(r)
    assert got == [i * i for i in range(13)]  # every earlier result, in order, before the error
    assert state["max"] == 4
    assert list(ordered_map(lambda i: -i, range(5), workers=1)) == [0, -1, -2, -3, -4]


def _settings(setup, out, server, concurrency, **kw):
    args = dict(cache=str(setup["cache"]), dicts=[str(setup["pca"]), str(setup["neuron"])], features=4,
                explainer="openai:fake", simulator="openai:fake", base_url=server.url,
                scorers=["simulation", "detection", "intruder"], out=str(out), concurrency=concurrency,
                scoring=ScoringConfig(n_quantiles=5, per_quantile=1, n_negative=5, intruder_rounds=1))
    args.update(kw)
    return ExplainSettings(**args)


def test_concurrency_overlaps_n_requests_and_writes_the_records_of_concurrency_1(setup, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    # the 8 requests of `many` need room to overlap on a busy machine (at 0.02 s a full-suite run once saw fewer)
    one, many = FakeServed(latency=0.02), FakeServed(latency=0.1)
    try:
        explain_command(_settings(setup, tmp_path / "c1", one, 1))
        many.script = [200, 429, 200, 200, 429, 429] * 6  # rate-limited now and then: retried, nothing changes
        explain_command(_settings(setup, tmp_path / "c8", many, 8))
        assert one.max_in_flight == 1 and many.max_in_flight == 8  # N in flight, never more
        # every 429 was retried; a request identical to one still in flight is sent again (only the cache dedupes)
        assert many.statuses[429] == 18 and many.statuses[200] >= one.n_requests
        ref = (tmp_path / "c1" / "explanations.jsonl").read_bytes()
        assert (tmp_path / "c8" / "explanations.jsonl").read_bytes() == ref  # same records, same order, same bytes
        records = read_records(tmp_path / "c1" / "explanations.jsonl")
        assert len(records) == 8 and sum(r["status"] == "ok" for r in records) >= 4
        assert all(r["scores"]["detection"]["auroc"] is not None for r in records if r["status"] == "ok")

        # A kill loses the features in flight: they resume from the call cache, as a resume at concurrency 1 does
        # (a resumed feature's activations are re-encoded with the other pending ones: floats may move in the
        # last digits, at any concurrency, so the resumed file is compared with a resume at concurrency 1).
        for run in ("c1", "c8"):
            (tmp_path / run / "explanations.jsonl").write_bytes(b"".join(ref.splitlines(keepends=True)[:3]))
        sent = one.n_requests + many.n_requests
        explain_command(_settings(setup, tmp_path / "c1", one, 1))
        explain_command(_settings(setup, tmp_path / "c8", many, 8))
        assert one.n_requests + many.n_requests == sent  # every answer came from the cache
    finally:
        one.close()
        many.close()
    resumed = (tmp_path / "c8" / "explanations.jsonl").read_bytes()
    assert resumed == (tmp_path / "c1" / "explanations.jsonl").read_bytes()
    assert [(r["dictionary"], r["feature"]) for r in read_records(tmp_path / "c8" / "explanations.jsonl")] == \
        [(r["dictionary"], r["feature"]) for r in records]


def test_a_server_without_logprobs_fails_required_logprob_scoring_with_one_line_at_any_concurrency(
        setup, tmp_path):
    server = FakeServed(logprobs=False)
    try:
        with pytest.raises(UserError, match="no feature of this run succeeded") as info:
            explain_command(_settings(setup, tmp_path / "r", server, 4, scorers=["simulation"],
                                      score_mode="logprobs"))
    finally:
        server.close()
    assert "\n" not in str(info.value) and "NoLogprobs" in str(info.value)
    records = read_records(tmp_path / "r" / "explanations.jsonl")
    failed = [r for r in records if r["status"] == "failed"]
    assert failed and all(r["failed_step"] == "scoring" and "returned no logprobs" in r["error"] for r in failed)
    assert all(r["explanation"] for r in failed)  # issue 17: the explanation is kept


def test_concurrency_below_one_is_refused_before_anything_is_written(setup, tmp_path):
    with pytest.raises(UserError, match=r"--concurrency 0: pass 1 or more"):
        explain_command(ExplainSettings(cache=str(setup["cache"]), dicts=[str(setup["pca"])],
                                        out=str(tmp_path / "x"), concurrency=0))
    assert not (tmp_path / "x").exists()


_WRITER = """
import sys, threading, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from explain.llm.cache import LLMCache
ready = Path({path!r}).parent.parent
(ready / "ready{proc}").touch()
while not all((ready / f"ready{{p}}").exists() for p in range(2)):  # both start writing together
    time.sleep(0.001)
cache = LLMCache({path!r})
def work(t):
    for i in range(60):
        cache.put({{"p": {proc}, "t": t, "i": i}}, {{"v": [{proc}, t, i]}})
        assert cache.get({{"p": {proc}, "t": t, "i": i}}) == {{"v": [{proc}, t, i]}}
threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
[th.start() for th in threads]
[th.join() for th in threads]
"""


def test_two_processes_with_threads_writing_one_cache_lose_nothing(tmp_path):
    path = tmp_path / "shared" / "llm_cache.sqlite"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER.format(repo=str(REPO), path=str(path), proc=p)],
                              stderr=subprocess.PIPE) for p in range(2)]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    cache = LLMCache(path)
    assert len(cache) == 2 * 4 * 60
    assert all(cache.get({"p": p, "t": t, "i": i}) == {"v": [p, t, i]}
               for p in range(2) for t in range(4) for i in range(60))
    cache.close()


def test_a_server_that_does_not_implement_echo_is_asked_once_then_simulated_through_chat(monkeypatch):
    """HTTP 501 (Not Implemented) says the server lacks prompt logprobs: no retry schedule, one switch to chat."""
    from explain.llm.backends import make_backend
    from explain.scorers.simulation import AllAtOnceSimulator

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = FakeServed()
    server.echo_refusal = 501
    try:
        backend = make_backend("openai:fake", base_url=server.url, concurrency=4, max_retries=3, backoff_base=0.001)
        result = AllAtOnceSimulator(backend).simulate("rivers", [[" the", " river", " Paris"], [" blue", " song"]])
        backend.close()
    finally:
        server.close()
    assert result.mode == "chat-top-logprobs" and server.statuses[501] == 1  # not 1 + max_retries
    assert server.n_requests == 1 + 5  # then one chat request per token
    assert [round(v, 6) for v in result.expected_values[0]] == [float(zlib.crc32(w.encode()) % 10)
                                                                for w in ("the", "river", "Paris")]
