"""Scorers of explanations, one module each behind one `Scorer` interface (see `explain.scorers.base`).

`SCORERS` maps a scorer's name to where its class lives. Classes are
imported only when asked for, so a scorer with heavy dependencies (an
embedding model) costs nothing to runs that do not use it. Adding a scorer
is one module and one line here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from activations.errors import UserError
from explain.scorers.base import CAPABILITIES, COST_KEYS, Cost, Scorer, ScoreResult, check_needs

if TYPE_CHECKING:
    from explain.llm.base import LLMBackend
    from explain.settings import ScoringConfig

SCORERS: dict[str, str] = {
    "simulation": "explain.scorers.simulation:SimulationScorer",  # LLM all-at-once simulator + Pearson
    "tokens": "explain.scorers.tokens:TokenListScorer",  # token-list lookup + Pearson, no LLM
    "detection": "explain.scorers.detection:DetectionScorer",  # which plain examples fit? (Paulo et al.)
    "fuzzing": "explain.scorers.fuzzing:FuzzingScorer",  # are the marked tokens the right ones?
    "embedding": "explain.scorers.embedding:EmbeddingScorer",  # sentence-embedding similarity, no LLM
    "intruder": "explain.scorers.intruder:IntruderScorer",  # find the other feature's example; no explanation
}


def scorer_class(name: str) -> type[Scorer]:
    if name not in SCORERS:
        raise UserError(f"unknown scorer {name!r}: choose one of {', '.join(sorted(SCORERS))}")
    module, attr = SCORERS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def make_scorer(name: str, backend: "LLMBackend | None" = None, spec: str | None = None,
                config: "ScoringConfig | None" = None) -> Scorer:
    """The scorer `name` on `backend` (named `spec` in messages), after checking the backend offers its `needs`."""
    cls = scorer_class(name)
    check_needs(cls, backend, spec)
    return cls.create(backend, config)


__all__ = ["CAPABILITIES", "COST_KEYS", "SCORERS", "Cost", "Scorer", "ScoreResult", "check_needs", "make_scorer", "scorer_class"]
