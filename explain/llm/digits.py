"""From next-token probabilities at a slot to a distribution over the values 0..10.

The value 10 needs care: in tokenizers that split numbers into digits
(SmolLM2, Llama-2, Qwen...) "10" is the two tokens "1","0". Where the
probability of the continuation after "1" is known (the local backend reads
it exactly; the remote backend with ``ten_two_step``), we use

    p(10) = p("1") · p("0" | "1")
    p(1)  = p("1") · (1 − Σ_d p(d | "1"))     d over the digits "0".."9"

i.e. "1" followed by a non-digit is the value 1, "1","0" is 10, and "1"
followed by another digit (11..19, not a valid value) is dropped. Where the
tokenizer has a single "10" token, its probability is p(10) and no second
step is taken. Otherwise (`ten="unavailable"`), p(10) = 0 and all of p("1")
counts as the value 1. The 11 numbers are then renormalised to sum to 1 and
EV = Σ k·p_k. A slot whose digit mass is zero raises `LLMError`: no value is
ever invented.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from explain.llm.errors import LLMError
from explain.records import N_VALUES

DIGITS = tuple(str(d) for d in range(10))


def combine_digit_probs(
    p_digits: Sequence[float],
    p_ten: float | None = None,
    p_after_one: Sequence[float] | None = None,
) -> np.ndarray:
    """The renormalised distribution over 0..10 (see the module docstring for the rule)."""
    p = np.asarray(p_digits, dtype=np.float64)
    if p.shape != (10,):
        raise ValueError(f"need 10 digit probabilities, got shape {p.shape}")
    out = np.zeros(N_VALUES, dtype=np.float64)
    out[:10] = p
    if p_after_one is not None:
        after = np.asarray(p_after_one, dtype=np.float64)
        cont_digit = float(after.sum())
        out[1] = p[1] * max(0.0, 1.0 - cont_digit)
        out[10] = p[1] * float(after[0])
    if p_ten is not None:
        out[10] += float(p_ten)
    total = float(out.sum())
    if not math.isfinite(total) or total <= 0.0:
        raise LLMError("the model put no probability on any value 0..10 at a slot: the answer holds no digits")
    return out / total


def expected_value(dist: Sequence[float]) -> float:
    return float(np.dot(np.arange(N_VALUES, dtype=np.float64), np.asarray(dist, dtype=np.float64)))


def digits_from_top_logprobs(top: Mapping[str, float]) -> tuple[np.ndarray, float | None]:
    """Digit probabilities (and a single-token "10" if listed) from an API's top log-probabilities.

    Token strings are stripped of surrounding whitespace, so " 3" counts as 3;
    duplicates (e.g. "3" and " 3") add up. Tokens absent from the top list
    count as 0 — the renormalisation then spreads over the ones listed.
    """
    p = np.zeros(10, dtype=np.float64)
    ten: float | None = None
    for token, logprob in top.items():
        if logprob is None:
            continue
        key = token.strip()
        prob = math.exp(float(logprob))
        if key in DIGITS:
            p[int(key)] += prob
        elif key == "10":
            ten = (ten or 0.0) + prob
    return p, ten
