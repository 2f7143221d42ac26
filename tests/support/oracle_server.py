"""A fake OpenAI-compatible chat server on 127.0.0.1 that plays an oracle for one synthetic feature firing on " dog".

Detection says 1 for an example containing "dog" when the explanation mentions dogs; fuzzing says 1 when every
marked span contains "dog"; the intruder answer is the example whose marks are not "dog". With log-probabilities a 1
is written with P("1") = 0.9 and a 0 with P("1") = 0.2. The server can also answer without log-probabilities,
refuse them (400), answer garbage, or 429. Used by the scorer tests (tests/test_explain_scorers_llm.py,
test_explain_pipeline_scorers.py, test_explain_text_mode.py).
"""

from __future__ import annotations

import json
import math
import re
import threading
from http.server import ThreadingHTTPServer

from explain.llm.backends import make_backend
from explain.llm.cache import LLMCache
from explain.records import Example, Examples, ScoringSet
from explain.scorers import make_scorer
from explain.settings import ScoringConfig
from tests.support.json_handler import JSONHandler

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

        class Handler(JSONHandler):
            def do_POST(self):
                body = self._body()
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


def make_oracle_scorer(name, server, tmp_path, **kw):
    backend = make_backend("openai:oracle", base_url=server.url, cache=LLMCache(tmp_path / "llm.sqlite"),
                           max_retries=kw.pop("max_retries", 2), backoff_base=0.001, concurrency=1)
    return make_scorer(name, backend, "openai:oracle", ScoringConfig(**kw))


def scoring_examples(scoring: ScoringSet) -> Examples:
    return Examples("test", [], [], scoring=scoring)
