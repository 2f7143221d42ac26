"""Scorers of explanations, one module each behind one `Scorer` interface (see `explain.scorers.base`).

`SCORERS` (`explain.scorers.spec`) maps a scorer's name to its `ScorerSpec`:
where its class lives and what the rest of the toolkit needs to know about
it. Classes are imported only when asked for, so a scorer with heavy
dependencies (an embedding model) costs nothing to runs that do not use it.
Adding a scorer is one module and one spec row.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from explain.scorers.base import COST_KEYS, Cost, Scorer, ScoreResult, check_needs
from explain.scorers.spec import CAPABILITIES, SCORERS, ScorerSpec, scorer_spec

if TYPE_CHECKING:
    from explain.llm.base import LLMBackend
    from explain.settings import ScoringConfig


def scorer_class(name: str) -> type[Scorer]:
    module, attr = scorer_spec(name).target.split(":")
    return getattr(importlib.import_module(module), attr)


def make_scorer(name: str, backend: "LLMBackend | None" = None, spec: str | None = None,
                config: "ScoringConfig | None" = None) -> Scorer:
    """The scorer `name` on `backend` (named `spec` in messages), after checking the backend offers its `needs`."""
    cls = scorer_class(name)
    check_needs(cls, backend, spec)
    return cls.create(backend, config)


__all__ = ["CAPABILITIES", "COST_KEYS", "SCORERS", "Cost", "Scorer", "ScoreResult", "ScorerSpec", "check_needs",
           "make_scorer", "scorer_class", "scorer_spec"]
