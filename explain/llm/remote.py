"""An OpenAI-compatible endpoint as explainer and simulator (`openai:<model>` + optional base URL).

Works with OpenAI, vLLM, llama.cpp server and others through the `openai`
package. The API key comes from the environment variable OPENAI_API_KEY
only; it is never logged, cached or written. A base URL on this machine
(localhost, 127.0.0.1, ::1) with no key set gets a dummy key, since local
servers usually ignore it.

Reliability: the client's own retries are off; `call` retries 429, 408,
409, 5xx but 501 (Not Implemented: the server lacks it, asking again is no
use), timeouts and connection errors with exponential backoff
(`backoff_base`·2^attempt seconds, capped, jittered, honouring Retry-After)
up to `max_retries` times, then raises `LLMError`. Other errors (400, 401,
404...) raise at once. A semaphore keeps at most `concurrency` requests in
flight however many threads call in. A dead endpoint fails fast: after
`max_connection_failures` connection failures in a row (no answer at all;
an HTTP status, even 429 or 5xx, resets the count) the backend raises
`EndpointUnreachable`, a one-line `UserError` naming the URL that stops the
run, instead of every feature paying the whole retry schedule.

Simulation modes (the readout's `mode` says which ran):

* ``completions-echo``: one legacy completions request per prompt with
  ``echo=True, logprobs=top_logprobs, max_tokens=1`` (at most 5 logprobs
  without a base URL, api.openai.com's limit; digits outside the top list
  count as 0 before renormalising); the prompt tokens'
  top log-probabilities are read at the token that starts right after each
  slot (where "unknown" begins). All slots of a prompt in one request.
* ``chat-top-logprobs``: for servers without prompt log-probabilities. One
  chat request per slot: the prompt cut right after the slot's TAB, followed
  by a question asking for that token's value; the answer's first token's
  ``top_logprobs`` are read. The model sees exactly the context the
  all-at-once prompt gives that slot (everything before it), so the two
  modes agree in meaning; it costs one request per token. No logprobs at
  all: `NoLogprobs` after one request (see `explain.scorers.text_sim`).
* ``auto`` (default) tries echo on the first prompt and falls back to chat,
  for the rest of the run, when the server refuses it (400/404/405/422/501)
  or returns no prompt log-probabilities. Server errors (5xx after retries)
  are failures, not a reason to switch.

The value 10: read from a single "10" token when the server's tokenizer has
one and lists it (`ten="single-token"`). When digits are split, the
completions mode can take a second step (``ten_two_step=True``: one more
request per slot, prompt + "1", reading the next-token digits; see
`explain.llm.digits`); otherwise `ten="unavailable"` and p("1") all counts
as the value 1.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

from common.errors import first_line
from explain.llm.base import DigitReadout, Generation, LLMBackend, Messages, ScoredRequest
from explain.llm.errors import BackendConfigError, EndpointUnreachable, LLMError, NoLogprobs
from explain.llm.cache import LLMCache
from explain.prompts import SlotPrompt
from explain.llm.remote_readouts import EchoUnsupported, SimulationReader
from explain.llm.remote_scored import ScoredChat

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
RETRY_STATUS = {408, 409, 429}
UNSUPPORTED_STATUS = {400, 404, 405, 422, 501}
NOT_A_REFUSAL = {401, 403, 407} | RETRY_STATUS  # a key or quota problem says nothing about logprobs
MODES = ("auto", "completions", "chat")


def _public_url(base_url: str | None) -> str | None:
    """The base URL without any user:password part, safe to put in cache keys and records."""
    if not base_url:
        return None
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


class OpenAIBackend(LLMBackend):
    """Explain and simulate through an OpenAI-compatible HTTP API."""

    thread_safe = True  # requests bounded by `_sem`, shared state under locks, the cache has its own lock

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        cache: LLMCache | None = None,
        concurrency: int = 4,
        max_retries: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        timeout: float = 120.0,
        top_logprobs: int = 20,
        sim_mode: str = "auto",
        ten_two_step: bool = False,
        continue_final_message: bool = False,
        max_connection_failures: int = 5,
    ):
        super().__init__(cache)
        import openai

        if sim_mode not in MODES:
            raise BackendConfigError(f"simulation mode {sim_mode!r}: use one of {', '.join(MODES)}")
        if concurrency < 1:
            raise BackendConfigError(f"--concurrency {concurrency}: pass 1 or more")
        key = os.environ.get("OPENAI_API_KEY")
        if not key:
            host = urlsplit(base_url).hostname if base_url else None
            if host not in LOCAL_HOSTS:
                raise BackendConfigError(
                    "openai backend needs an API key: set the OPENAI_API_KEY environment variable "
                    "(or use --base-url for a server on localhost)"
                )
            key = "sk-local-no-key"
        self.model_name = model
        self.name = f"openai:{model}"
        self.base_url = _public_url(base_url)
        self.concurrency = int(concurrency)
        self.max_retries, self.backoff_base, self.backoff_max = int(max_retries), float(backoff_base), float(backoff_max)
        self.top_logprobs = int(top_logprobs)
        # api.openai.com's legacy completions accept at most 5 logprobs; vLLM and others take more
        self.echo_logprobs = min(self.top_logprobs, 5) if base_url is None else self.top_logprobs
        self.continue_final_message = bool(continue_final_message)
        self._openai = openai
        self.client = openai.OpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=timeout)
        self._sem = threading.BoundedSemaphore(self.concurrency)
        self._count_lock = threading.Lock()
        self.max_connection_failures = max(1, int(max_connection_failures))
        self._connection_failures = 0  # in a row, over all requests and threads (under _count_lock)
        self._unreachable: str | None = None  # the message, once the endpoint is given up on
        # the readouts, made and held here: each owns what it learns of the server (its modes) and sends
        # through `call` / `cached` (retries, the endpoint's health and the LLM cache stay this object's)
        self.simulation = SimulationReader(self, sim_mode, ten_two_step)
        self.scored = ScoredChat(self)

    @property
    def scored_text_only(self) -> bool:
        """Whether the server refused logprobs on a scored answer (answers are then read as text)."""
        return self.scored.text_only

    def identity(self) -> dict[str, Any]:
        return {"backend": "openai", "model": self.model_name, "base_url": self.base_url}

    def close(self) -> None:
        self.client.close()

    # -- HTTP with retries ----------------------------------------------------------------
    def call(self, what: str, fn: Callable[[], Any], parse: Callable[[Any], Any] | None = None, *,
              asks_logprobs: bool = False) -> Any:
        """Send `fn()` with retries and return `parse(response)`.

        `asks_logprobs`: the request carries logprobs fields, so a client error
        that `refuses_logprobs` raises `NoLogprobs` (auto
        mode reads text answers from then on) instead of a plain `LLMError`.

        Every way a request can go wrong ends as `LLMError` (the pipeline's
        `failed` record): HTTP errors after retries, any other `openai.APIError`,
        a body that is not JSON, and a JSON body without the fields `parse`
        reads (the SDK builds response objects without validating them, so a
        garbage answer shows up as AttributeError/TypeError/... while parsing).
        """
        err_cls = self._openai
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            try:
                with self._sem:
                    with self._count_lock:
                        if self._unreachable:
                            raise EndpointUnreachable(self._unreachable)
                        self.n_calls += 1
                    response = fn()
                self._reached()
                return response if parse is None else _parse_response(self.name, what, response, parse)
            except err_cls.APIStatusError as err:
                self._reached()
                if err.status_code not in RETRY_STATUS and (err.status_code < 500 or err.status_code == 501):
                    if asks_logprobs and refuses_logprobs(err):
                        if what == "completions-echo":
                            raise EchoUnsupported(str(err)) from err
                        raise NoLogprobs(
                            f"{self.name} {what}: the server refuses logprobs (HTTP {err.status_code}: "
                            f"{_http_short(err)[:160]})") from err
                    raise LLMError(f"{self.name} {what}: HTTP {err.status_code}: {_http_short(err)}") from err
                last = err
                wait = _retry_after(err)
            except (err_cls.APITimeoutError, err_cls.APIConnectionError) as err:
                last, wait = err, None
                self._not_reached(err)
            except err_cls.APIError as err:  # e.g. APIResponseValidationError: not retried, the answer is wrong
                raise LLMError(f"{self.name} {what}: {type(err).__name__}: {_short(err)}") from err
            except json.JSONDecodeError as err:
                raise LLMError(f"{self.name} {what}: the server's answer is not valid JSON ({err.msg}): "
                               "check --base-url points at an OpenAI-compatible API") from err
            if attempt < self.max_retries:
                backoff = min(self.backoff_max, self.backoff_base * 2**attempt) * random.uniform(0.5, 1.0)
                time.sleep(min(self.backoff_max, wait) if wait is not None else backoff)
        raise LLMError(f"{self.name} {what}: failed after {self.max_retries + 1} attempts: {_short(last)}")

    def _reached(self) -> None:
        """The server answered (any HTTP status): connection failures no longer count as in a row."""
        with self._count_lock:
            self._connection_failures = 0

    def _not_reached(self, err: Exception) -> None:
        """One more connection failure in a row; at the limit the endpoint is given up on for the whole run."""
        with self._count_lock:
            self._connection_failures += 1
            if self._connection_failures >= self.max_connection_failures and not self._unreachable:
                url = _public_url(str(self.client.base_url)) or str(self.client.base_url)
                self._unreachable = (
                    f"cannot reach {url} ({self.name}): {self._connection_failures} connection attempts in a row "
                    f"failed ({type(err).__name__}: {_short(err)}); check that the server is running and that "
                    "--base-url is right, then rerun the same command (finished features are kept)")
            message = self._unreachable
        if message:
            raise EndpointUnreachable(message) from err

    def cached(self, request: dict[str, Any], send: Callable[[], dict[str, Any]],
                validate: Callable[[dict[str, Any]], Any]) -> tuple[Any, bool]:
        """(validated value, from_cache). Only a response that validates is stored."""
        hit = self.cache.get(request)
        if hit is not None:
            return validate(hit), True
        response = send()
        value = _parse_response(self.name, str(request["op"]), response, validate)
        self.cache.put(request, response)
        return value, False

    # -- generation -----------------------------------------------------------------------
    def _generate_uncached(self, messages: Messages, *, n: int, temperature: float, max_tokens: int,
                           seed: int) -> list[str]:
        extra: dict[str, Any] = {}
        msgs = [dict(m) for m in messages]
        if msgs[-1]["role"] == "assistant":
            if self.continue_final_message:  # vLLM: continue the assistant prefix
                extra["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
            else:  # plain chat APIs cannot continue a turn: ask for the completion instead
                prime = msgs.pop()["content"]
                msgs[-1]["content"] += f'\n\nAnswer with one sentence that completes: "{prime} ..."'

        def parse(resp: Any) -> list[str]:
            return [(c.message.content or "") for c in sorted(resp.choices, key=lambda c: c.index)]

        return self.call("generate", lambda: self.client.chat.completions.create(
            model=self.model_name, messages=msgs, n=n, temperature=temperature, max_tokens=max_tokens,
            seed=seed, **extra), parse)

    # -- scored answers (detection, fuzzing, intruder) ---------------------------------------
    def generate_scored(self, requests: Sequence[ScoredRequest]) -> list[Generation]:
        """Greedy chat answers with top_logprobs (see `explain.llm.remote_scored`)."""
        return self.scored.generate(requests)

    # -- simulation -----------------------------------------------------------------------
    def digit_distributions(self, prompts: Sequence[SlotPrompt]) -> list[DigitReadout]:
        """Digit distributions at each slot (see `explain.llm.remote_readouts`)."""
        return self.simulation.digit_distributions(prompts)



def _parse_response(name: str, what: str, response: Any, parse: Callable[[Any], Any]) -> Any:
    """`parse(response)`, with a response of the wrong shape reported as LLMError, not a crash."""
    try:
        return parse(response)
    except (AttributeError, TypeError, KeyError, IndexError) as err:
        raise LLMError(f"{name} {what}: malformed response ({type(err).__name__}: {_short(err)}); "
                       "the server does not answer in the OpenAI format") from err


def refuses_logprobs(err: Any) -> bool:
    """Does this HTTP error to a request with logprobs fields mean "no logprobs here"?

    400/404/405/422/501 (a server without the endpoint or the fields), or any
    other client error whose body names logprobs; never an auth, quota or
    rate-limit status (401/403/407/408/409/429), which would fail without
    logprobs too.
    """
    status = getattr(err, "status_code", None)
    if not isinstance(status, int) or status in NOT_A_REFUSAL:
        return False
    if status in UNSUPPORTED_STATUS:
        return True
    return 400 <= status < 500 and "logprob" in _http_short(err).lower()


def _http_short(err: Any) -> str:
    """The SDK's one line plus the server's reason where the SDK leaves it out.

    The SDK puts only ``{"error": {"message": ...}}`` into its message; FastAPI
    servers (transformers serve, many gateways) answer ``{"detail": ...}``,
    which would leave the user with "Error code: 400" and no reason.
    """
    text = _short(err)
    body = getattr(err, "body", None)
    detail = (body.get("message") or body.get("detail")) if isinstance(body, dict) else body
    if detail and not isinstance(detail, str):
        detail = json.dumps(detail)[:300]
    if isinstance(detail, str) and detail.strip() and detail.strip() not in text:
        text = f"{text} - {first_line(detail.strip())}"
    return text[:300]


def _short(err: Exception | None) -> str:
    return first_line(err)[:300] if err is not None else "unknown error"


def _retry_after(err: Any) -> float | None:
    headers = getattr(getattr(err, "response", None), "headers", None) or {}
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
