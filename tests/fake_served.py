"""A fake OpenAI-compatible served model on 127.0.0.1: deterministic answers, a fixed latency, counters.

Used by `tests/test_explain_concurrency.py` (in-process) and by
`benchmarks/bench_endpoint.py` (as its own process: ``python -m
tests.fake_served --latency 0.2``, which prints the base URL on its first line).

Why this shape: to show that concurrency changes nothing but speed, every
answer depends only on the request's content (a CRC of it), never on the
order requests arrive in; and the server counts the requests in flight at
once (`max_in_flight`), so a test can see that `--concurrency N` really
overlaps N requests and never more. It plays every request the toolkit
sends: the explainer's chat requests, the simulator's completions with
echo (prompt log-probabilities at every token after a TAB, a distribution
over 0..10 chosen by the word before it), and the detection / fuzzing /
intruder chat answers with top log-probabilities; ``GET /v1/stats`` returns
the counters. `script` holds HTTP
statuses to answer first (429 comes with ``Retry-After: 0``);
``logprobs=False`` plays a server with none (echo refused, chat answers
without logprobs); `echo_refusal` refuses only echo, with that status;
`logprobs_refusal` answers that status (e.g. 400, 422) to every request
carrying logprobs fields (``echo``, ``logprobs``, ``top_logprobs``), as
servers that validate their fields strictly do, and answers the rest. The
text simulator's request (a JSON list per fragment) is answered with each
listed token's value, CRC of its letters mod 11.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EXPLANATIONS = ["capital cities", "words about animals", "the letter s", "numbers and dates", "function words"]


def crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def text_value(token: str) -> int:
    """The text simulator's answer for a token: its letters' CRC mod 11 (0..10)."""
    return crc("".join(re.findall(r"[A-Za-z]+", token))) % 11


def digit_top(word: str) -> dict[str, float]:
    """Top log-probabilities at a slot: one value 0..9 chosen by the word (p .6), the rest on "unknown"."""
    return {str(crc(word) % 10): math.log(0.6), "unknown": math.log(0.4)}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # listen() backlog: a burst of 64+ connections must not overflow it (default 5)


class FakeServed:
    """The server; `url` is its base URL (`.../v1`). Start on construction, `close()` to stop."""

    def __init__(self, latency: float = 0.0, logprobs: bool = True, port: int = 0) -> None:
        self.latency = latency
        self.logprobs = logprobs
        self.script: list[int] = []
        self.echo_refusal: int | None = None  # an HTTP status that refuses completions with echo (e.g. 501)
        self.logprobs_refusal: int | None = None  # an HTTP status for any request with logprobs fields (400, 422)
        self.error_body: dict[str, Any] | None = None  # the body of scripted statuses (default: OpenAI's shape)
        self.n_requests = 0
        self.statuses: dict[int, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.httpd = _Server(("127.0.0.1", port), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- answers -----------------------------------------------------------------------------
    def completions(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("echo") and (self.echo_refusal or not self.logprobs):
            return self.echo_refusal or 400, {"error": {"message": "echo is not supported"}}
        text = body["prompt"]
        tokens = re.findall(r"[A-Za-z]+|\d|\s|.", text, flags=re.S)
        offsets, at = [], 0
        for t in tokens:
            offsets.append(at)
            at += len(t)
        tops: list[dict[str, float] | None] = [None]
        for i in range(1, len(tokens)):
            words = [t for t in tokens[:i] if t.isalpha()]
            tops.append(digit_top(words[-1] if words else "") if tokens[i - 1] == "\t" else {tokens[i]: -0.1})
        logprobs = {"tokens": tokens, "token_logprobs": [None] + [-0.1] * (len(tokens) - 1),
                    "top_logprobs": tops, "text_offset": offsets}
        return 200, {"id": "cmpl", "object": "text_completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "text": "0", "finish_reason": "length", "logprobs": logprobs}]}

    def chat(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        user = body["messages"][-1]["content"]
        key = json.dumps(body["messages"], sort_keys=True)
        lines = re.findall(r"^\d+\. (.*)$", user, flags=re.M)
        system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
        if "single integer" in system:  # the simulator's chat mode: the value of the token before the last TAB
            words = re.findall(r"[A-Za-z]+", user.rsplit("\t", 1)[0])
            top = digit_top(words[-1] if words else "")
            tokens = [max(top, key=top.get)]
            if body.get("logprobs") and self.logprobs:
                tops = [{"token": t, "logprob": lp, "bytes": None} for t, lp in top.items()]
                return 200, {"id": "chat", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "length",
                                          "message": {"role": "assistant", "content": tokens[0]},
                                          "logprobs": {"content": [{"token": tokens[0], "logprob": top[tokens[0]],
                                                                    "bytes": None, "top_logprobs": tops}]}}]}
        elif "JSON list of integers" in system:  # the text simulator: one value per listed token
            listed = re.findall(r'^\d+\. (".*")$', user, flags=re.M)
            tokens = [json.dumps([text_value(json.loads(t)) for t in listed])]
        elif "odd one out" in system:  # intruder: one number
            tokens = [str(crc(key) % max(len(lines), 1) + 1)]
        elif "list of 0s and 1s" in system:  # detection / fuzzing: one judgement per example
            bits = [str(crc(line) % 2) for line in lines]
            tokens = ["["] + [t for i, b in enumerate(bits) for t in (b, "," if i < len(bits) - 1 else "]")]
        else:  # the explainer
            choices = [{"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content":
                        f"the main thing this neuron does is find {EXPLANATIONS[crc(key + str(i)) % 5]}."}}
                       for i in range(int(body.get("n") or 1))]
            return 200, {"id": "chat", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": choices}
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": "".join(tokens)}}
        if body.get("logprobs") and self.logprobs:
            content = []
            for tok in tokens:
                top = [{"token": tok, "logprob": math.log(0.7), "bytes": None}]
                if tok in "01":
                    top.append({"token": "1" if tok == "0" else "0", "logprob": math.log(0.3), "bytes": None})
                content.append({"token": tok, "logprob": top[0]["logprob"], "bytes": None, "top_logprobs": top})
            choice["logprobs"] = {"content": content}
        return 200, {"id": "chat", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [choice], "usage": {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55}}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                """``/v1/stats``: the counters as JSON (``?reset=1`` then zeroes `max_in_flight`), for a benchmark."""
                with server.lock:
                    data = json.dumps({"n_requests": server.n_requests, "max_in_flight": server.max_in_flight,
                                       "statuses": server.statuses}).encode()
                    if "reset=1" in self.path:
                        server.max_in_flight = server.in_flight
                self.send_response(200 if self.path.split("?")[0].endswith("/stats") else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.n_requests += 1
                    status = server.script.pop(0) if server.script else 200
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.latency)
                    asks_logprobs = any(body.get(k) for k in ("echo", "logprobs", "top_logprobs"))
                    if status != 200:
                        code, obj = status, server.error_body or {"error": {"message": f"scripted {status}"}}
                    elif server.logprobs_refusal and asks_logprobs:  # FastAPI's shape: {"detail": ...}
                        code, obj = server.logprobs_refusal, {"detail": "unsupported fields: logprobs"}
                    elif self.path.endswith("/chat/completions"):
                        code, obj = server.chat(body)
                    else:
                        code, obj = server.completions(body)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                with server.lock:  # what was answered (a scripted status or the answer's own)
                    server.statuses[code] = server.statuses.get(code, 0) + 1
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if code == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds each request takes")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = FakeServed(latency=args.latency, port=args.port)
    print(server.url, flush=True)
    try:
        server.thread.join()
    except KeyboardInterrupt:
        server.close()


if __name__ == "__main__":
    main()
