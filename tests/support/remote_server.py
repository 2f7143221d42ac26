"""A fake OpenAI-compatible server on 127.0.0.1 (completions with echo, chat with top log-probabilities).

It plays a model whose digit distribution after "<word><TAB>" is fixed per word ("Paris" -> 9 with p=.6, 8 with
p=.2; any other word -> 0 with p=.7, 1 with p=.1; the rest on "unknown"), so the expected values are known by hand:
Paris -> (8·.2 + 9·.6)/.8 = 8.75, other -> (1·.1)/.8 = 0.125. Used by tests/test_explain_llm_remote.py and
tests/test_pipeline_hardening.py.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from http.server import ThreadingHTTPServer

import numpy as np

from tests.support.json_handler import JSONHandler

PARIS = {"9": math.log(0.6), "8": math.log(0.2), "unknown": math.log(0.2)}
OTHER = {"0": math.log(0.7), "1": math.log(0.1), "unknown": math.log(0.2)}
GARBAGE = {"unknown": math.log(0.7), "the": math.log(0.3)}
MAX_REQUESTS = 300


def answer_distribution(word: str, garbage: bool) -> dict[str, float]:
    return GARBAGE if garbage else (PARIS if word == "Paris" else OTHER)


class FakeServer:
    def __init__(self):
        self.requests: list[tuple[str, dict]] = []
        self.script: list[int] = []  # HTTP statuses to answer with before behaving normally
        self.echo = True
        self.garbage = False
        self.raw: tuple[bytes, str] | None = None  # (body, content type) sent as is instead of an answer
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def count(self, path: str | None = None) -> int:
        return sum(1 for p, _ in self.requests if path is None or p.endswith(path))

    def _handler(self):
        server = self

        class Handler(JSONHandler):
            def do_POST(self):
                body = self._body()
                with server.lock:
                    server.requests.append((self.path, body))
                    status = server.script.pop(0) if server.script else 200
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    over = len(server.requests) > MAX_REQUESTS
                try:
                    time.sleep(server.delay)
                    if over:
                        return self._send(418, {"error": {"message": "request budget exceeded"}})
                    if status != 200:
                        return self._send(status, {"error": {"message": f"scripted {status}"}})
                    if server.raw is not None:
                        data, content_type = server.raw
                        self.send_response(200)
                        self.send_header("Content-Type", content_type)
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        return self.wfile.write(data)
                    if self.path.endswith("/completions") and "chat" not in self.path:
                        return self._completions(body)
                    return self._chat(body)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _completions(self, body):
                if not server.echo and body.get("echo"):
                    return self._send(400, {"error": {"message": "echo is not supported"}})
                text = body["prompt"]
                if not body.get("echo"):  # the "10" second step: what follows "<word>\t1"
                    assert text.endswith("\t1")
                    logprobs = {"tokens": ["0"], "token_logprobs": [-0.7], "text_offset": [len(text)],
                                "top_logprobs": [{"0": math.log(0.5), "\n": math.log(0.5)}]}
                    return self._send(200, {"id": "cmpl-2", "object": "text_completion", "created": 0,
                                            "model": body["model"], "choices": [{"index": 0, "text": "0",
                                            "finish_reason": "length", "logprobs": logprobs}]})
                tokens = re.findall(r"[A-Za-z]+|\d|\s|.", text, flags=re.S)
                offsets = np.cumsum([0] + [len(t) for t in tokens[:-1]]).tolist()
                tops = [None]
                for i in range(1, len(tokens)):
                    if tokens[i - 1] == "\t":
                        words = [t for t in tokens[:i] if t.isalpha()]
                        tops.append(answer_distribution(words[-1], server.garbage))
                    else:
                        tops.append({tokens[i]: -0.1})
                logprobs = {"tokens": tokens, "token_logprobs": [None] + [-0.1] * (len(tokens) - 1),
                            "top_logprobs": tops, "text_offset": offsets}
                self._send(200, {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "text": text + "0", "finish_reason": "length",
                                              "logprobs": logprobs}]})

            def _chat(self, body):
                choices = []
                if body.get("logprobs"):
                    user = body["messages"][-1]["content"]
                    word = user.rsplit("\t", 1)[0].splitlines()[-1].strip()
                    top = [{"token": t, "logprob": lp, "bytes": None}
                           for t, lp in answer_distribution(word, server.garbage).items()]
                    choices.append({"index": 0, "finish_reason": "length",
                                    "message": {"role": "assistant", "content": top[0]["token"]},
                                    "logprobs": {"content": [{"token": top[0]["token"], "logprob": top[0]["logprob"],
                                                              "bytes": None, "top_logprobs": top}]}})
                else:
                    for i in range(body.get("n", 1)):
                        choices.append({"index": i, "finish_reason": "stop",
                                        "message": {"role": "assistant",
                                                    "content": "the main thing this neuron does is find capital "
                                                               "cities.\nExtra line."}})
                self._send(200, {"id": "chat-1", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": choices})

        return Handler

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
