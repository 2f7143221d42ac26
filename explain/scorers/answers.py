"""Reading a scorer model's answer: the list of 0/1 judgements, or the intruder's number.

The answer text is parsed first; an answer that does not hold exactly the
expected list (or a number in range) raises `AnswerError`, which the scorer
records as a *failed batch* — never a guess. Then, where the backend gave
log-probabilities (`Generation.top_logprobs`), each judgement is read at
the token that wrote it: P(yes) = P("1") / (P("0") + P("1")) over that
position's top tokens (a token such as "[1" or ",0" counts as its digit),
as delphi does. A position where neither digit is among the top tokens
keeps the written answer (exactly 0 or 1) and is counted in `n_text`, as is
every answer of a backend without log-probabilities.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from explain.llm.base import Generation

_LIST = re.compile(r"\[([^\[\]]*)\]")
_BARE = re.compile(r"[01](?:[\s,]+[01])+")
_PUNCT = " \t\n[](),.:;"


class AnswerError(ValueError):
    """An answer that does not say what the prompt asked for (recorded as a failed batch)."""


def _core(token: str) -> str:
    return token.strip(_PUNCT)


def _token_at(gen: Generation) -> list[int] | None:
    """Character offset -> index of the generated token holding it, or None when tokens do not spell the text."""
    if gen.top_logprobs is None or "".join(gen.tokens) != gen.text or len(gen.tokens) != len(gen.top_logprobs):
        return None
    owner: list[int] = []
    for j, tok in enumerate(gen.tokens):
        owner.extend([j] * len(tok))
    return owner


def _probs(top: dict[str, float], options: Sequence[str]) -> list[float]:
    mass = {o: 0.0 for o in options}
    for token, logprob in top.items():
        core = _core(token)
        if core in mass and logprob is not None:
            mass[core] += math.exp(float(logprob))
    return [mass[o] for o in options]


def choice_mass(gen: Generation, options: Sequence[str]) -> float | None:
    """Mean probability the answer's judgement positions put on `options` at all (None without logprobs).

    A judgement read as P("1") / (P("0") + P("1")) hides how much the model
    wanted to write something else: this keeps it visible.
    """
    if gen.top_logprobs is None:
        return None
    masses = [sum(_probs(top, options)) for tok, top in zip(gen.tokens, gen.top_logprobs) if _core(tok) in options]
    return sum(masses) / len(masses) if masses else None


def read_binary_list(gen: Generation, n: int) -> tuple[list[float], int]:
    """(P(yes) per example, how many were read from the text only) for an answer like "[1,0,0,1,1]"."""
    text = gen.text
    found = _LIST.search(text)
    if found is not None:
        inner, base = found.group(1), found.start(1)
        if inner.strip(" \t\n,01"):
            raise AnswerError(f"the answer list holds more than 0s and 1s: {text.strip()[:60]!r}")
    else:
        bare = _BARE.search(text)
        if bare is None:
            raise AnswerError(f"no list of 0s and 1s in the answer {text.strip()[:60]!r}")
        inner, base = bare.group(0), bare.start(0)
    digits = [(base + m.start(), m.group(0)) for m in re.finditer(r"[01]", inner)]
    if len(digits) != n:
        raise AnswerError(f"{len(digits)} answers for {n} examples: {text.strip()[:60]!r}")
    owner = _token_at(gen)
    out: list[float] = []
    n_text = 0
    for offset, digit in digits:
        p0, p1 = _probs(gen.top_logprobs[owner[offset]], ("0", "1")) if owner is not None else (0.0, 0.0)
        if p0 + p1 > 0:
            out.append(p1 / (p0 + p1))
        else:
            out.append(float(digit == "1"))
            n_text += 1
    return out, n_text


def read_choice(gen: Generation, k: int) -> tuple[int, list[float] | None]:
    """(0-based answer, distribution over the k positions or None when only the text says it) for "3"-style answers."""
    found = re.search(r"\d+", gen.text)
    if found is None or not 1 <= int(found.group(0)) <= k:
        raise AnswerError(f"no example number 1..{k} in the answer {gen.text.strip()[:60]!r}")
    answer = int(found.group(0)) - 1
    owner = _token_at(gen)
    if owner is None:
        return answer, None
    mass = _probs(gen.top_logprobs[owner[found.start()]], [str(i) for i in range(1, k + 1)])
    total = sum(mass)
    return answer, ([m / total for m in mass] if total > 0 else None)
