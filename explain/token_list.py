"""The token-list explainer: a deterministic, LLM-free explanation, and the format it is written in.

Why: an LLM explanation is only worth its cost if it predicts activations
better than "this feature fires on these tokens". The token list is that
baseline, and, being free, the offline triage score for whole dictionaries.

* Explainer: for each token string in the train exemplars, the mean
  activation over all its occurrences; the `max_tokens` = 10 strings with the
  largest mean, each weighted 0..10 relative to the largest mean (rounded;
  weights that round to 0 are dropped). The explanation is the readable,
  parseable string ``" Paris" (10), " Berlin" (7)`` – each token a JSON
  string literal, so spaces, quotes and newlines round-trip exactly.
* Its scorer (`explain.scorers.tokens`) parses that string back with
  `parse_token_list` and predicts each token's activation by lookup.

The explainer mirrors the LLM explainer's API (`candidates(...)`), so the
pipeline treats them alike.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from common.errors import UserError
from explain.explainer import Candidate
from explain.records import MAX_DISPLAY, ActivationRecord

_ENTRY = re.compile(r'\s*("(?:[^"\\]|\\.)*")\s*\((\d+(?:\.\d+)?)\)\s*(?:,|$)')


class TokenListError(UserError):
    """An explanation that is not a token list was given to the token-list scorer."""


def token_weights(records: Sequence[ActivationRecord], max_tokens: int = 10) -> list[tuple[str, int]]:
    """[(token string, weight 1..10)], highest mean activation first (ties by string)."""
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for rec in records:
        for tok, act in zip(rec.tokens, rec.activations):
            total[tok] += float(act)
            count[tok] += 1
    means = sorted(((total[t] / count[t], t) for t in total), key=lambda m: (-m[0], m[1]))
    if not means or means[0][0] <= 0:
        return []
    top = means[0][0]
    out = []
    for mean, tok in means[:max_tokens]:
        weight = int(round(MAX_DISPLAY * mean / top))
        if weight > 0:
            out.append((tok, weight))
    return out


def format_token_list(weights: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"{json.dumps(tok, ensure_ascii=False)} ({w})" for tok, w in weights)


def parse_token_list(text: str) -> dict[str, float]:
    """Inverse of `format_token_list`; raises TokenListError on anything else."""
    out: dict[str, float] = {}
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _ENTRY.match(text, pos)
        if m is None:
            raise TokenListError(
                f"the tokens simulator cannot read the explanation {text[:60]!r}: "
                "it only reads token lists from --explainer tokens; use an LLM --simulator for other explanations"
            )
        out[json.loads(m.group(1))] = float(m.group(2))
        pos = m.end()
    return out


@dataclass
class TokenListExplainer:
    """Explanation = the tokens that most activate the feature in its train exemplars, with weights."""

    max_tokens: int = 10
    name: str = "tokens"

    def candidates(self, train_records: Sequence[ActivationRecord], *, feature_seed: int = 0) -> list[Candidate]:
        """One candidate (the list is deterministic, so k > 1 would repeat it)."""
        weights = token_weights(train_records, self.max_tokens)
        text = format_token_list(weights)
        return [Candidate(explanation=text, raw=text, fewshot="", shown=list(range(len(train_records))))]
