"""The one interface every way of scoring an explanation implements.

A scorer answers: given an explanation of a feature and the feature's
scored examples (top-activating and random fragments with their true
activations), how well does the explanation account for them? Simulation
(predict every token's activation, correlate), detection (does the
fragment fire?), fuzzing (are the highlighted tokens the right ones?),
embedding similarity and intruder detection are all this shape; each lives
in one module of `explain.scorers` and is registered by its `ScorerSpec`
(`explain.scorers.spec`), which says what the rest of the toolkit needs to
know about it without importing it.

A scorer returns metrics (floats, or None with a reason in `notes`: an
undefined score is never a 0), what it cost, and any record fields it wants
kept (the simulation scorer keeps its per-token predictions). Its spec
declares what it needs from a backend (`needs`), so a run with an unsuitable
backend fails at start-up with one line instead of on the first feature.

A scorer raises `LLMError` (a failed request) or `BackendConfigError` (a
request the backend cannot serve) for a feature it cannot score; the
pipeline records the feature as failed, never as a score.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from explain.llm.errors import BackendConfigError
from explain.records import Examples
from explain.scorers.spec import SCORERS

if TYPE_CHECKING:
    from explain.llm.base import LLMBackend
    from explain.settings import ScoringConfig

Job = tuple[str, Examples]  # (explanation, examples)
#: Guards `Scorer.spent`: features may be scored on several threads at once (`explain.feature_pool`).
_SPENT_LOCK = threading.Lock()


@dataclass
class Cost:
    """What scoring cost: prompts built, requests actually sent, answers from the LLM cache, model tokens."""

    n_prompts: int = 0
    n_calls: int = 0
    n_cached: int = 0
    # Model tokens the prompts cost (as run, and kept with each cached answer, so a rerun from the LLM cache
    # reports the same cost); None when no model ran, 0 when unknown (remote simulation, old cache entries).
    n_tokens: int | None = None

    def __add__(self, other: "Cost") -> "Cost":
        tokens = None if self.n_tokens is None and other.n_tokens is None else \
            (self.n_tokens or 0) + (other.n_tokens or 0)
        return Cost(self.n_prompts + other.n_prompts, self.n_calls + other.n_calls,
                    self.n_cached + other.n_cached, tokens)

    def to_json(self) -> dict[str, int | None]:
        """What a record's `scores.<scorer>` keeps of the cost (see `COST_KEYS`): what scoring the feature
        takes, not what this run sent (cache hits), so a rerun writes the same record."""
        return {"n_prompts": self.n_prompts, "n_tokens": self.n_tokens}


def coarse_mode(detail_mode: str | None) -> str | None:
    """A scorer's fine-grained answer mode(s) ("completions-echo", "chat-logprobs+text", ...) as "logprobs",
    "text" or "logprobs+text"; None for a scorer that reads no LLM answers (the token-list lookup)."""
    parts = {"text" if m == "text" else "logprobs" for m in str(detail_mode or "").split("+")
             if m and m not in ("token-lookup",)}
    return "+".join(sorted(parts)) or None


def record_mode(record: dict[str, Any], scorer: str | None = None) -> str:
    """How a record's LLM answers were read: its `scorer`'s own mode where the record keeps it, else the
    record's `mode`; records from before modes existed were all read from logprobs ("none": no LLM scored)."""
    spec = SCORERS.get(scorer) if scorer is not None else None
    if spec is not None and not spec.needs_llm:
        return "none"
    if scorer is not None:
        detail = record.get(scorer)
        mode = coarse_mode(detail.get("mode")) if isinstance(detail, dict) else None
        if mode:
            return mode
    if record.get("mode"):
        return str(record["mode"])
    return "none" if record.get("simulator") == "tokens" else "logprobs"


#: Keys of `scores.<scorer>` that are costs, not metrics (readers such as `compare` skip them).
COST_KEYS = frozenset({"n_prompts", "n_tokens", "n_cached", "n_failed"})


@dataclass
class ScoreResult:
    """The scoring of one explanation on one split's examples."""

    metrics: dict[str, float | None]  # metric name -> value, None when undefined (reason in `notes`)
    notes: dict[str, str] = field(default_factory=dict)  # metric name -> why it is None
    cost: Cost = field(default_factory=Cost)
    record: dict[str, Any] = field(default_factory=dict)  # JSON-ready fields for the feature's record


class _FromSpec:
    """A class attribute that a registered scorer reads from its `ScorerSpec`, so the fact is written once.

    A class may still set the attribute itself: a scorer given to the
    pipeline by a caller, never registered, must (`needs` defaults to
    nothing). Read through the class's `name` at each access, so a spec
    registered after the class was defined (a test's) is the one read.
    """

    _UNSET = object()

    def __init__(self, field: str, default: Any = _UNSET) -> None:
        self.field, self.default = field, default

    def __set_name__(self, owner: type, attr: str) -> None:
        self.attr = attr

    def __get__(self, obj: Any, owner: type) -> Any:
        spec = SCORERS.get(getattr(owner, "name", None))
        if spec is not None:
            return getattr(spec, self.field)
        if self.default is self._UNSET:
            raise AttributeError(f"{owner.__name__} has no {self.attr}: register a ScorerSpec named "
                                 f"{getattr(owner, 'name', None)!r} or set {self.attr} on the class")
        return self.default


class Scorer(ABC):
    """Scores explanations on examples; subclasses implement `_score_many` and set `name` and `metric_names`.

    To add a scorer: one module in `explain/scorers/` with a subclass, and
    one `ScorerSpec` row in `explain.scorers.spec.SCORERS`, from which the
    class reads `needs` and `selection_metric`. The pipeline uses one scorer to
    select among best-of-k candidates (on valid, by `selection_metric`,
    largest wins) and report on test; that scorer's metrics are the record's
    `scores`. Any further scorer is run on test for the chosen explanation
    and its metrics go to `scores[<name>]` (notes to `score_notes[<name>]`).
    """

    name: ClassVar[str]  # registry key and key of `scores[...]` in records
    metric_names: ClassVar[tuple[str, ...]]
    needs: ClassVar[frozenset[str]] = _FromSpec("needs", frozenset())  # subset of CAPABILITIES the backend must offer
    selection_metric: ClassVar[str] = _FromSpec("headline")  # the metric best-of-k maximises on valid

    def __init__(self) -> None:
        self.spent = Cost()  # everything this scorer object has cost so far
        #: How LLM answers are read (`--score-mode`): "auto" (log-probabilities where the backend returns them,
        #: else text), "logprobs" (required: a backend without them fails the feature's scoring) or "text".
        self.score_mode = "auto"

    @classmethod
    def create(cls, backend: "LLMBackend | None", config: "ScoringConfig | None" = None) -> "Scorer":
        """The scorer for a run whose settings name `backend` (None: no LLM) and sampled-example protocol
        `config` (used by the scorers that read `Examples.scoring`); `needs` is checked first."""
        return cls()

    @abstractmethod
    def _score_many(self, jobs: Sequence[Job]) -> list[ScoreResult]:
        """One result per (explanation, examples) job, in order; batch or parallelise as the backend allows."""

    def score_many(self, jobs: Sequence[Job]) -> list[ScoreResult]:
        results = self._score_many(list(jobs))
        if len(results) != len(jobs):
            raise RuntimeError(f"{type(self).__name__} returned {len(results)} results for {len(jobs)} jobs")
        with _SPENT_LOCK:
            for r in results:
                self.spent = self.spent + r.cost
        return results

    def score(self, explanation: str, examples: Examples) -> ScoreResult:
        return self.score_many([(explanation, examples)])[0]


def check_needs(scorer: type[Scorer], backend: "LLMBackend | None", spec: str | None = None) -> None:
    """Refuse a backend that lacks what `scorer` needs (one line naming the scorer, the gap and the fix)."""
    offered = frozenset() if backend is None else frozenset(getattr(backend, "capabilities", frozenset()))
    missing = scorer.needs - offered
    if missing:
        what = f"the backend {spec!r}" if spec else ("no backend" if backend is None else f"backend {backend.name}")
        raise BackendConfigError(f"the {scorer.name} scorer needs {', '.join(sorted(missing))}, which {what} "
                                 "does not offer: choose another backend for it")
