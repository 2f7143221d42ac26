"""Simulation readouts of the OpenAI-compatible backend: prompt logprobs by completions echo, or chat top_logprobs.

Split from `explain.llm.remote` (the modes are described in its docstring):
the client, retries and cache live there, how a simulation prompt becomes
digit distributions here, in a reader object the backend makes and holds.
"""

from __future__ import annotations

import bisect
import sys
import threading
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from explain.llm.base import DigitReadout
from explain.llm.digits import combine_digit_probs, digits_from_top_logprobs
from explain.llm.errors import LLMError, NoLogprobs
from explain.prompts import SlotPrompt

if TYPE_CHECKING:
    from explain.llm.remote import OpenAIBackend


CHAT_SIM_SYSTEM = "You predict neuron activations. Reply with a single integer from 0 to 10 and nothing else."
CHAT_SIM_QUESTION = (
    "\n\n(End of text.) What is the activation of the last token above, the one just before the final tab? "
    "Reply with one integer from 0 to 10."
)


class EchoUnsupported(Exception):
    """The server cannot return prompt log-probabilities (internal signal for `auto` mode)."""


class SimulationReader:
    """`digit_distributions` by echo or chat readouts, made and held by an `OpenAIBackend` (`backend.simulation`).

    It owns the simulation mode (`auto` settles on the first prompt) and
    what it has seen of the server; requests go through the backend's
    `call` / `cached` and its client, settings and identity.
    """

    def __init__(self, backend: "OpenAIBackend", sim_mode: str, ten_two_step: bool):
        self.backend = backend
        self.sim_mode = sim_mode
        self.ten_two_step = bool(ten_two_step)
        self._mode_lock = threading.Lock()
        self._chat_logprobs_seen = False  # a chat answer with top_logprobs has come back (slots go concurrently)

    @property
    def name(self) -> str:
        return self.backend.name

    def digit_distributions(self, prompts: Sequence[SlotPrompt]) -> list[DigitReadout]:
        prompts = list(prompts)
        if not prompts:
            return []
        with self._mode_lock:
            mode = self.sim_mode
            first: DigitReadout | None = None
            if mode == "auto":
                try:
                    first = self._echo_readout(prompts[0])
                    mode = self.sim_mode = "completions"
                except EchoUnsupported as why:
                    print(f"{self.name}: no prompt logprobs ({str(why)[:120]}); simulating with chat "
                          "top_logprobs, one request per token", file=sys.stderr)
                    mode = self.sim_mode = "chat"
        if mode == "completions":
            rest = prompts[1:] if first is not None else prompts
            out = self.backend.map_concurrent(self._echo_readout_strict, rest)
            return ([first] if first is not None else []) + out
        return [self._chat_readout(p) for p in prompts]

    def _echo_readout_strict(self, prompt: SlotPrompt) -> DigitReadout:
        try:
            return self._echo_readout(prompt)
        except EchoUnsupported as err:
            raise LLMError(f"{self.name}: completions with echo+logprobs refused: {err}") from err

    def _echo_readout(self, prompt: SlotPrompt) -> DigitReadout:
        text = prompt.text
        request = {"op": "completions-echo", **self.backend.identity(), "prompt": text, "logprobs": self.backend.echo_logprobs,
                   "max_tokens": 1, "temperature": 0.0}

        def parse(resp: Any) -> dict[str, Any]:
            lp = resp.choices[0].logprobs if resp.choices else None
            if lp is None or not lp.tokens or lp.top_logprobs is None or lp.text_offset is None:
                raise EchoUnsupported("the response has no prompt logprobs")
            return {"tokens": list(lp.tokens), "text_offset": list(lp.text_offset),
                    "top_logprobs": [None if t is None else dict(t) for t in lp.top_logprobs]}

        def send() -> dict[str, Any]:
            return self.backend.call("completions-echo", lambda: self.backend.client.completions.create(
                model=self.backend.model_name, prompt=text, max_tokens=1, echo=True, logprobs=self.backend.echo_logprobs,
                temperature=0.0), parse, asks_logprobs=True)

        def validate(resp: dict[str, Any]) -> list[tuple[np.ndarray, float | None]]:
            offsets, tops = resp["text_offset"], resp["top_logprobs"]
            rows = []
            for c in prompt.slot_offsets():
                i = bisect.bisect_left(offsets, c)
                if i >= len(offsets) or offsets[i] != c:
                    raise LLMError(f"{self.name}: the server's tokens do not start at a slot (offset {c}); "
                                   "use --simulator with chat mode or another model")
                if tops[i] is None:
                    raise EchoUnsupported("no top logprobs at a prompt token")
                p, ten = digits_from_top_logprobs(tops[i])
                if p.sum() <= 0 and not ten:
                    raise LLMError(f"{self.name}: no digit 0..10 among the top logprobs at a slot "
                                   f"(got {sorted(tops[i])[:8]}); the model does not answer with values")
                rows.append((p, ten))
            return rows

        rows, cached = self.backend.cached(request, send, validate)
        calls, hits = (0, 1) if cached else (1, 0)
        afters: list[np.ndarray | None] = [None] * len(rows)
        single = any(ten is not None for _, ten in rows)
        if self.ten_two_step and not single:
            results = self.backend.map_concurrent(lambda c: self._after_one(text[:c]), prompt.slot_offsets())
            afters = [a for a, _ in results]
            hits += sum(h for _, h in results)
            calls += sum(1 - h for _, h in results)
        ten = "single-token" if single else ("two-step" if self.ten_two_step else "unavailable")
        dists = np.stack([combine_digit_probs(p, t, a) for (p, t), a in zip(rows, afters)])
        return DigitReadout(dists, "completions-echo", ten, n_calls=calls, n_cached=hits)

    def _after_one(self, text_to_slot: str) -> tuple[np.ndarray, int]:
        prompt = text_to_slot + "1"
        request = {"op": "completions-next", **self.backend.identity(), "prompt": prompt, "logprobs": self.backend.echo_logprobs,
                   "max_tokens": 1, "temperature": 0.0}

        def parse(resp: Any) -> dict[str, Any]:
            lp = resp.choices[0].logprobs if resp.choices else None
            if lp is None or not lp.top_logprobs or lp.top_logprobs[0] is None:
                raise LLMError(f"{self.name}: completions returned no logprobs for the '10' step")
            return {"top_logprobs": dict(lp.top_logprobs[0])}

        def send() -> dict[str, Any]:
            return self.backend.call("completions", lambda: self.backend.client.completions.create(
                model=self.backend.model_name, prompt=prompt, max_tokens=1, logprobs=self.backend.echo_logprobs, temperature=0.0),
                parse, asks_logprobs=True)

        (p, _), cached = self.backend.cached(request, send, lambda r: digits_from_top_logprobs(r["top_logprobs"]))
        return p, int(cached)

    def _chat_readout(self, prompt: SlotPrompt) -> DigitReadout:
        first = [] if self._chat_logprobs_seen else [self._chat_slot(prompt, 0)]  # no logprobs: one request lost
        self._chat_logprobs_seen = True
        results = first + self.backend.map_concurrent(lambda i: self._chat_slot(prompt, i), range(len(first), prompt.n_slots))
        rows = [r for r, _ in results]
        hits = sum(h for _, h in results)
        single = any(ten is not None for _, ten in rows)
        dists = np.stack([combine_digit_probs(p, t) for p, t in rows])
        return DigitReadout(dists, "chat-top-logprobs", "single-token" if single else "unavailable",
                            n_calls=len(rows) - hits, n_cached=hits)

    def _chat_slot(self, prompt: SlotPrompt, i: int) -> tuple[tuple[np.ndarray, float | None], int]:
        messages = [{"role": "system", "content": CHAT_SIM_SYSTEM},
                    {"role": "user", "content": prompt.text_through_slot(i) + CHAT_SIM_QUESTION}]
        k = min(self.backend.top_logprobs, 20)
        request = {"op": "chat-top-logprobs", **self.backend.identity(), "messages": messages, "top_logprobs": k,
                   "max_tokens": 1, "temperature": 0.0}

        def parse(resp: Any) -> dict[str, Any]:
            content = resp.choices[0].logprobs.content if resp.choices and resp.choices[0].logprobs else None
            if not content:
                raise NoLogprobs(f"{self.name}: chat completion returned no logprobs (logprobs=True with "
                                 "top_logprobs); --score-mode auto or text scores from text answers instead")
            return {"top_logprobs": {t.token: t.logprob for t in content[0].top_logprobs}}

        def send() -> dict[str, Any]:
            return self.backend.call("chat-top-logprobs", lambda: self.backend.client.chat.completions.create(
                model=self.backend.model_name, messages=messages, max_tokens=1, temperature=0.0, logprobs=True,
                top_logprobs=k), parse, asks_logprobs=True)

        def validate(resp: dict[str, Any]) -> tuple[np.ndarray, float | None]:
            p, ten = digits_from_top_logprobs(resp["top_logprobs"])
            if p.sum() <= 0 and not ten:
                raise LLMError(f"{self.name}: the answer's top_logprobs hold no digit 0..10 "
                               f"(got {sorted(resp['top_logprobs'])[:8]}); the model did not answer with a number")
            return p, ten

        value, cached = self.backend.cached(request, send, validate)
        return value, int(cached)
