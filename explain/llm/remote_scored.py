"""Greedy answers with top log-probabilities from an OpenAI-compatible server (`ScoredChat`, owned by `OpenAIBackend`).

One chat request per prompt, temperature 0, ``logprobs=True`` and
``top_logprobs`` (at most 20, the API's limit): each generated token comes
back with its most likely alternatives, from which a scorer reads P("1") vs
P("0"). A server that refuses the logprobs parameters (`refuses_logprobs`: 400/
404/405/422/501, or a client error naming logprobs) is asked again without
them, for the rest of the run (one line on stderr says so), and its answers are
read as text (`mode="text"`: each answer counts as exactly 0 or 1). A
server that accepts them but returns none is read as text too. Retries,
the cache and failures are the backend's (`OpenAIBackend.call`): a request
that still fails raises `LLMError`, and only answers with a message are cached.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any, Sequence

from explain.llm.base import Generation, ScoredRequest
from explain.llm.errors import LLMError, NoLogprobs

if TYPE_CHECKING:
    from explain.llm.remote import OpenAIBackend

TOP_K = 20


class ScoredChat:
    """The scored-answer readout of an `OpenAIBackend`, made and held by it (`backend.scored`): it owns whether
    the server still gets asked for logprobs (`text_only`), and sends through the backend's `call` / `cached`."""

    def __init__(self, backend: "OpenAIBackend"):
        self.backend = backend
        self.text_only = False  # the server refused logprobs on a scored answer: ask without them from now on
        self._lock = threading.Lock()

    def generate(self, requests: Sequence[ScoredRequest]) -> list[Generation]:
        return self.backend.map_concurrent(self._one, list(requests))

    def _one(self, request: ScoredRequest) -> Generation:
        messages = request.as_messages()
        if not self.text_only:
            try:
                return _ask(self.backend, messages, request.max_tokens, True)
            except NoLogprobs as err:
                with self._lock:  # several threads may find it out at once: one line
                    if not self.text_only:
                        print(f"{err}: reading answers as text for the rest of the run", file=sys.stderr)
                    self.text_only = True
        return _ask(self.backend, messages, request.max_tokens, False)


def _ask(backend: "OpenAIBackend", messages: list[dict[str, str]], max_tokens: int, with_logprobs: bool) -> Generation:
    k = min(backend.top_logprobs, TOP_K)
    request = {"op": "chat-scored", **backend.identity(), "messages": messages, "max_tokens": int(max_tokens),
               "temperature": 0.0, "top_logprobs": k if with_logprobs else None}
    extra: dict[str, Any] = {"logprobs": True, "top_logprobs": k} if with_logprobs else {}

    def parse(resp: Any) -> dict[str, Any]:
        choice = resp.choices[0]
        text = choice.message.content
        if text is None:
            raise LLMError(f"{backend.name}: the answer has no message content")
        content = choice.logprobs.content if with_logprobs and choice.logprobs is not None else None
        usage = getattr(resp, "usage", None)
        n_tokens = int(getattr(usage, "total_tokens", 0) or 0) if usage is not None else 0
        if not content:
            return {"text": text, "tokens": [text], "top_logprobs": None, "n_tokens": n_tokens}
        return {"text": text, "tokens": [t.token for t in content],
                "top_logprobs": [_merge(t) for t in content], "n_tokens": n_tokens}

    def send() -> dict[str, Any]:
        return backend.call("chat-scored", lambda: backend.client.chat.completions.create(
            model=backend.model_name, messages=messages, max_tokens=int(max_tokens), temperature=0.0, **extra),
            parse, asks_logprobs=with_logprobs)

    def validate(resp: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(resp.get("text"), str):
            raise LLMError(f"{backend.name}: the answer has no text")
        return resp

    value, cached = backend.cached(request, send, validate)
    mode = "chat-logprobs" if value["top_logprobs"] is not None else "text"
    return Generation(value["text"], list(value["tokens"]), value["top_logprobs"], mode,
                      n_calls=0 if cached else 1, n_cached=int(cached), n_tokens=int(value.get("n_tokens") or 0))


def _merge(token: Any) -> dict[str, float]:
    """The token's top alternatives (the token itself included) as string -> log-probability."""
    out = {str(t.token): float(t.logprob) for t in (token.top_logprobs or []) if t.logprob is not None}
    out.setdefault(str(token.token), float(token.logprob))
    return out
