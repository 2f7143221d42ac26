"""The interface every LLM backend offers, and what they share (caching, bounded concurrency).

Two operations cover the explainer and the simulator:

* ``generate(messages, n, temperature, max_tokens, seed) -> list[str]``:
  chat completion. `messages` is ``[{"role", "content"}]``; when the last
  message has role ``assistant`` its content is a prefix the answer
  continues (priming). Returned strings are the continuation only.
* ``digit_distributions(prompts) -> list[DigitReadout]``: for each
  `SlotPrompt`, the distribution over the values 0..10 at every slot
  (see `explain.llm.digits` for the value-10 rule), plus which mode read it.
* ``generate_scored(requests) -> list[Generation]``: a greedy (temperature 0)
  chat answer with, where the backend has them, the log-probabilities of the
  top tokens at every generated position, so a scorer can read P("1") vs
  P("0") for each answer of a detection / fuzzing / intruder prompt
  (local: exact; OpenAI-compatible: `logprobs` + `top_logprobs`; a server
  without them: the text only, `mode="text"`).
* ``generate_text(requests) -> list[Generation]``: the same greedy answers
  read as text only (`mode="text"`), for the text scoring mode (a server
  without logprobs, or `--score-mode text`): any backend that can generate
  can answer, and the answers are cached under their own op.

Both consult the `LLMCache` first and store only validated answers, so a
rerun sends no request and a failure raises `LLMError` and is retried next
time. `map_concurrent` runs independent requests with at most `concurrency`
in flight; remote backends additionally bound in-flight HTTP requests with a
semaphore so callers that add their own threads cannot exceed it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from explain.llm.errors import BackendConfigError, LLMError
from explain.llm.cache import LLMCache
from explain.prompts import SlotPrompt

T = TypeVar("T")
R = TypeVar("R")
Messages = list[dict[str, str]]


@dataclass
class DigitReadout:
    """Distributions over 0..10 at every slot of one prompt ([n_slots, 11], rows sum to 1)."""

    distributions: np.ndarray
    mode: str  # local-exact | completions-echo | chat-top-logprobs
    ten: str  # single-token | two-step | unavailable
    n_calls: int  # requests sent for this prompt (0 when all came from the cache)
    n_cached: int  # requests answered by the cache
    n_tokens: int = 0  # model tokens this prompt costs (local backend; kept in the cache entry; 0 when unknown)


@dataclass(frozen=True)
class ScoredRequest:
    """A greedy chat request whose answer a scorer reads; `shared` leading messages are the same in every
    request of that scorer (instructions + few-shot turns), which a local backend computes once.

    `pieces` and `choices` describe the answer the prompt asks for: the fixed
    text around each judgement (``("[", ",", ",", "]")`` for a list of three)
    and the tokens a judgement may be (``("0", "1")``). A backend with exact
    log-probabilities (local) writes the pieces itself and, at each slot
    between them, reads the distribution and writes the most likely choice
    (constrained greedy decoding), so its answer always has the asked-for
    form and every judgement is read where it is made. A remote backend sends
    the prompt alone and the scorer parses whatever comes back.
    """

    messages: tuple[tuple[str, str], ...]  # (role, content) pairs: hashable, so requests can be de-duplicated
    max_tokens: int = 24
    shared: int = 0
    pieces: tuple[str, ...] | None = None  # len(pieces) - 1 slots, one judgement each
    choices: tuple[str, ...] | None = None

    def as_messages(self) -> Messages:
        return [{"role": r, "content": c} for r, c in self.messages]


@dataclass
class Generation:
    """A greedy answer: its text, its tokens and (unless `mode == "text"`) each token's top log-probabilities."""

    text: str
    tokens: list[str]
    top_logprobs: list[dict[str, float]] | None  # per generated token: token string -> log-probability
    mode: str  # local-exact | chat-logprobs | text
    n_calls: int = 0
    n_cached: int = 0
    n_tokens: int = 0  # model tokens this answer costs (kept in the cache entry, so a cached answer reports it; 0: unknown)


def check_messages(messages: Messages) -> None:
    if not messages or any(set(m) != {"role", "content"} for m in messages):
        raise LLMError("messages must be a non-empty list of {'role', 'content'} dicts")


class LLMBackend:
    """Base class: subclasses implement `_generate_uncached` and `digit_distributions`."""

    name: str = "llm"
    concurrency: int = 1
    #: What scorers may ask of this backend (see `explain.scorers.base.Scorer.needs`): "generation"
    #: (`generate`) and "logprobs" (`digit_distributions`); an embedding backend would add "embeddings".
    capabilities: frozenset[str] = frozenset({"generation", "logprobs"})
    #: Whether several features may use this backend from threads at once (`explain.feature_pool`): True only
    #: for backends whose every call is safe on threads (remote HTTP, cache replay); a local model is not.
    thread_safe: bool = False

    def __init__(self, cache: LLMCache | None = None):
        self.cache = cache if cache is not None else LLMCache.disabled()
        self.n_calls = 0  # requests actually sent by this backend object

    # -- identity -------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """What makes two requests to this backend the same request (model, endpoint; never a key)."""
        raise NotImplementedError

    # -- generation -----------------------------------------------------------------------
    def generate(
        self,
        messages: Messages,
        *,
        n: int = 1,
        temperature: float = 1.0,
        max_tokens: int = 60,
        seed: int = 0,
    ) -> list[str]:
        """`n` completions of the chat `messages` (cached; raises LLMError on failure)."""
        check_messages(messages)
        request = {
            "op": "generate", **self.identity(), "messages": messages, "n": int(n),
            "temperature": float(temperature), "max_tokens": int(max_tokens), "seed": int(seed),
        }
        hit = self.cache.get(request)
        if hit is not None:
            return list(hit["texts"])
        texts = self._generate_uncached(messages, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed)
        if len(texts) != n or not all(isinstance(t, str) for t in texts):
            raise LLMError(f"{self.name}: asked for {n} completions, got {len(texts)}")
        self.cache.put(request, {"texts": texts})
        return texts

    def generate_many(self, requests: Sequence[dict[str, Any]]) -> list[list[str]]:
        """`generate(**r)` for each request dict, up to `concurrency` at a time, in order."""
        return self.map_concurrent(lambda r: self.generate(**r), requests)

    def _generate_uncached(self, messages: Messages, *, n: int, temperature: float, max_tokens: int,
                           seed: int) -> list[str]:
        raise NotImplementedError

    # -- simulation -----------------------------------------------------------------------
    def digit_distributions(self, prompts: Sequence[SlotPrompt]) -> list[DigitReadout]:
        raise NotImplementedError

    # -- scored answers -------------------------------------------------------------------
    def generate_scored(self, requests: Sequence[ScoredRequest]) -> list[Generation]:
        """Greedy answers with top log-probabilities where available (see the module docstring)."""
        raise BackendConfigError(f"{self.name} cannot answer detection / fuzzing / intruder prompts: "
                                 "use a local: or openai: backend")

    def generate_text(self, requests: Sequence[ScoredRequest]) -> list[Generation]:
        """Greedy (temperature 0) answers as text only, one request each, cached (see the module docstring)."""
        return self.map_concurrent(self._text_answer, list(requests))

    def _text_answer(self, req: ScoredRequest) -> Generation:
        messages = req.as_messages()
        check_messages(messages)
        request = {"op": "text-answer", **self.identity(), "messages": messages, "max_tokens": int(req.max_tokens)}
        hit = self.cache.get(request)
        if hit is not None:
            return Generation(hit["text"], [hit["text"]], None, "text", n_cached=1)
        texts = self._generate_uncached(messages, n=1, temperature=0.0, max_tokens=int(req.max_tokens), seed=0)
        if len(texts) != 1 or not isinstance(texts[0], str):
            raise LLMError(f"{self.name}: asked for one text answer, got {len(texts)}")
        self.cache.put(request, {"text": texts[0]})
        return Generation(texts[0], [texts[0]], None, "text", n_calls=1)

    # -- helpers --------------------------------------------------------------------------
    def map_concurrent(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """Apply `fn` to every item with at most `concurrency` threads; the first error propagates."""
        items = list(items)
        if self.concurrency <= 1 or len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(fn, items))

    def close(self) -> None:
        """Release resources (HTTP client); the cache belongs to the caller."""
