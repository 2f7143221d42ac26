"""Fuzzing (Paulo et al. 2024): are the marked tokens the ones the explanation describes?

Activating examples have their active tokens marked (activation at or
above `mark_fraction` × the example's maximum, 0.3 as in delphi);
non-activating examples get the same number of marks as their paired
activating example (the i-th non-activating one is paired with the
(i mod n)-th activating one) on tokens drawn at random with a seed of their
own. The model answers 1 when the marks fit the explanation. Unlike
detection, it tests whether the explanation names the right *tokens*
inside a context. Batching, reading and metrics are `explain.scorers.classify`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from explain.llm.base import ScoredRequest
from explain.records import Example, ScoringSet
from explain.scorers.classify import ClassifierScorer, example_seed
from explain.scorers.prompts import fuzzing_request, marked_text


def active_marks(example: Example, fraction: float) -> list[bool]:
    """Tokens at or above `fraction` of the example's maximum activation (none when it is not positive)."""
    acts = np.asarray(example.activations, dtype=np.float64)
    top = float(acts.max(initial=0.0))
    return [bool(top > 0 and a > 0 and a >= fraction * top) for a in acts]


def fuzz_marks(scoring: ScoringSet, fraction: float, rng: np.random.Generator) -> list[list[bool]]:
    """Marks of every example of `scoring.examples`, in order (see the module docstring)."""
    counts = [max(1, sum(active_marks(e, fraction))) for e in scoring.activating] or [1]
    out: list[list[bool]] = []
    k = 0  # non-activating examples so far
    for e in scoring.examples:
        if e.activating:
            out.append(active_marks(e, fraction))
            continue
        n = min(len(e.tokens), counts[k % len(counts)])
        chosen = set(rng.choice(len(e.tokens), size=n, replace=False).tolist()) if n else set()
        out.append([i in chosen for i in range(len(e.tokens))])
        k += 1
    return out


class FuzzingScorer(ClassifierScorer):
    name = "fuzzing"

    def texts(self, scoring: ScoringSet) -> list[str]:
        marks = fuzz_marks(scoring, self.config.mark_fraction, example_seed(self.config, scoring, 1))
        return [marked_text(e.tokens, m) for e, m in zip(scoring.examples, marks)]

    def request(self, explanation: str, texts: Sequence[str]) -> ScoredRequest:
        return fuzzing_request(explanation, texts)
