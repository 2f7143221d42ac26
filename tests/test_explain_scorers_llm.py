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

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from explain.llm.backends import LLMError, make_backend
from explain.llm.cache import LLMCache
from explain.records import Example, Examples, ScoringSet
from explain.scorers import make_scorer
from explain.settings import ScoringConfig

WORDS = [" the", " cat", " sat", " on", " a", " mat", " by", " river", " in", " spring"]


def dog_scoring(n_pos: int = 5, n_neg: int = 5, intruders: int = 0) -> ScoringSet:
    """Activating examples contain " dog" (activation 2 there), non-activating ones do not."""
    pos = [Example(fragment=i, start=0, tokens=WORDS[:3] + [" dog"] + WORDS[3 + i % 4:6 + i % 4],
                   activations=[0, 0, 0, 2.0, 0, 0, 0], kind="quantile", feature=1, bin=i) for i in range(n_pos)]
    neg = [Example(fragment=100 + i, start=32, tokens=WORDS[i % 5:i % 5 + 5], activations=[0.0] * 5, kind="random",
                   feature=1) for i in range(n_neg)]
    intr = [Example(fragment=200 + i, start=0, tokens=[" in", " Paris", WORDS[i]], activations=[0, 3.0, 0],
                    kind="intruder", feature=2) for i in range(intruders)]
    return ScoringSet(pos + neg, intruders=intr)


class OracleServer:
    def __init__(self) -> None:
        self.mode = "logprobs"  # logprobs | text | refuse-logprobs | garbage
        self.script: list[int] = []  # statuses to answer with first
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def answer(self, body: dict) -> tuple[list[str], list[float] | None]:
        """(answer tokens, P of the right token at each digit, None for non-digit tokens)."""
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        lines = re.findall(r"^\d+\. (.*)$", user, flags=re.M)
        def dog_marks(t: str) -> bool:
            return all("dog" in s for s in re.findall(r"<<(.+?)>>", t) or [""])

        if not user.startswith("Explanation:"):  # intruder
            odd = next(i for i, t in enumerate(lines) if not dog_marks(t))
            return [str(odd + 1)], [0.9]
        about_dogs = "dog" in user.splitlines()[0]
        if "marked" in system:
            yes = [about_dogs and dog_marks(t) for t in lines]
        else:
            yes = [about_dogs and "dog" in t for t in lines]
        tokens, probs = ["["], [None]
        for i, y in enumerate(yes):
            tokens += ["1" if y else "0"] + (["," if i < len(yes) - 1 else "]"])
            probs += [0.9 if y else 0.8, None]
        return tokens, probs

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    status = server.script.pop(0) if server.script else 200
                if status != 200:
                    return self._send(status, {"error": {"message": f"scripted {status}"}})
                if server.mode == "refuse-logprobs" and body.get("logprobs"):
                    return self._send(400, {"error": {"message": "logprobs are not supported"}})
                tokens, probs = server.answer(body)
                text = "I cannot tell which ones." if server.mode == "garbage" else "".join(tokens)
                choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                if body.get("logprobs") and server.mode == "logprobs":
                    content = []
                    for tok, p in zip(tokens, probs):
                        if p is None:
                            top = [{"token": tok, "logprob": 0.0, "bytes": None}]
                        else:
                            other = "0" if tok == "1" else ("1" if tok.isdigit() and tok in "0" else "2")
                            top = [{"token": tok, "logprob": math.log(p), "bytes": None},
                                   {"token": other, "logprob": math.log(1 - p), "bytes": None}]
                        content.append({"token": tok, "logprob": top[0]["logprob"], "bytes": None, "top_logprobs": top})
                    choice["logprobs"] = {"content": content}
                self._send(200, {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [choice],
                                 "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}})

        return Handler

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = OracleServer()
    yield s
    s.close()


def _scorer(name, server, tmp_path, **kw):
    backend = make_backend("openai:oracle", base_url=server.url, cache=LLMCache(tmp_path / "llm.sqlite"),
                           max_retries=kw.pop("max_retries", 2), backoff_base=0.001, concurrency=1)
    return make_scorer(name, backend, "openai:oracle", ScoringConfig(**kw))


def _examples(scoring: ScoringSet) -> Examples:
    return Examples("test", [], [], scoring=scoring)


def test_detection_reads_p_yes_from_logprobs_and_scores_it(server, tmp_path):
    scorer = _scorer("detection", server, tmp_path)
    result = scorer.score("the word dog", _examples(dog_scoring()))
    detail = result.record["detection"]
    assert result.metrics["auroc"] == 1.0 and result.metrics["balanced_accuracy"] == 1.0 and result.metrics["f1"] == 1.0
    p_by_label = sorted(zip(dog_scoring().labels, detail["p_yes"]))
    assert p_by_label == [(0, pytest.approx(0.2))] * 5 + [(1, pytest.approx(0.9))] * 5  # P(1)/(P(0)+P(1))
    assert detail["mode"] == "chat-logprobs" and detail["failed_batches"] == [] and detail["n_text_answers"] == 0
    assert sorted(i for b in detail["batches"] for i in b) == list(range(10)) and len(detail["batches"]) == 2
    assert result.cost.n_prompts == 2 and result.cost.n_calls == 2 and result.cost.n_tokens == 220
    assert all(r["logprobs"] is True and r["top_logprobs"] == 20 and r["temperature"] == 0 for r in server.requests)
    again = scorer.score("the word dog", _examples(dog_scoring()))
    assert len(server.requests) == 2 and again.metrics == result.metrics and again.cost.n_cached == 2  # LLM cache
    assert again.cost.n_tokens == 220  # what the prompts cost, also when the answers come from the cache
    wrong = scorer.score("the word telescope", _examples(dog_scoring()))
    assert wrong.metrics["auroc"] == 0.5 and wrong.metrics["balanced_accuracy"] == 0.5 and wrong.metrics["f1"] == 0


def test_fuzzing_marks_the_dog_in_activating_examples_only(server, tmp_path):
    result = _scorer("fuzzing", server, tmp_path).score("the word dog", _examples(dog_scoring()))
    assert result.metrics["auroc"] == 1.0 and result.metrics["accuracy"] == 1.0
    users = [r["messages"][-1]["content"] for r in server.requests]
    assert sum(u.count("<<dog>>") for u in users) == 5  # only the activating examples' " dog" is marked


def test_text_answers_and_a_server_that_refuses_logprobs(server, tmp_path):
    server.mode = "text"
    result = _scorer("detection", server, tmp_path).score("dogs", _examples(dog_scoring()))
    detail = result.record["detection"]
    assert detail["mode"] == "text" and detail["n_text_answers"] == 10 and result.metrics["auroc"] == 1.0
    assert sorted(detail["p_yes"]) == [0] * 5 + [1] * 5
    server.mode, server.requests = "refuse-logprobs", []
    result = _scorer("detection", server, tmp_path / "b").score("dogs", _examples(dog_scoring()))
    assert result.record["detection"]["mode"] == "text" and result.metrics["balanced_accuracy"] == 1.0
    # one refused request, then every request without logprobs
    assert [bool(r.get("logprobs")) for r in server.requests] == [True, False, False]


def test_garbage_answers_are_failed_batches_never_guesses(server, tmp_path):
    server.mode = "garbage"
    result = _scorer("detection", server, tmp_path).score("dogs", _examples(dog_scoring()))
    assert all(result.metrics[m] is None for m in ("auroc", "balanced_accuracy", "f1"))
    assert result.metrics["n_failed"] == 2 and "all 2 batches failed" in result.notes["auroc"]
    failed = result.record["detection"]["failed_batches"]
    assert [f["batch"] for f in failed] == [0, 1] and "no list of 0s and 1s" in failed[0]["error"]
    assert result.record["detection"]["p_yes"] == [None] * 10


def test_429_is_retried_and_a_request_that_keeps_failing_raises(server, tmp_path):
    server.script = [429, 429]
    result = _scorer("detection", server, tmp_path, max_retries=2).score("dogs", _examples(dog_scoring()))
    assert result.metrics["auroc"] == 1.0 and len(server.requests) == 4  # 2 x 429, then the two batches
    server.script = [429] * 3
    with pytest.raises(LLMError, match="failed after 3 attempts"):
        _scorer("detection", server, tmp_path / "b", max_retries=2).score("cats", _examples(dog_scoring()))


def test_intruder_finds_the_other_features_example_without_an_explanation(server, tmp_path):
    scorer = _scorer("intruder", server, tmp_path, intruder_rounds=3)
    scoring = dog_scoring(intruders=3)
    result = scorer.score("ignored", _examples(scoring))
    assert result.metrics == {"accuracy": 1.0, "p_correct": pytest.approx(0.9), "chance": 0.2, "n_failed": 0}
    rounds = result.record["intruder"]["rounds"]
    assert len(rounds) == 3 and all(len(r["shown"]) == 4 for r in rounds)
    assert result.record["intruder"]["chosen"] == [r["slot"] for r in rounds]
    assert not any("Explanation" in r["messages"][-1]["content"] for r in server.requests)
    scorer.score("another explanation", _examples(scoring))
    assert len(server.requests) == 3  # the same prompts whatever the explanation: all from the cache
    none = scorer.score("x", _examples(dog_scoring(intruders=0)))
    assert none.metrics["accuracy"] is None and none.cost.n_prompts == 0
