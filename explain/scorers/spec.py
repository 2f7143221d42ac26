"""What each scorer is, in one row: the `ScorerSpec` registry every command reads.

Why a registry of plain rows beside the `Scorer` classes: the facts about a
scorer that the rest of the toolkit acts on (which backend it runs on, which
examples must be sampled for it, which metric is its headline, what its
cost counts, whether it runs by default) were written in settings,
components, compare and the report, so a new scorer had to touch them all
and a miss failed silently. They are read here instead, without importing
the scorer's class: this module imports nothing but the standard library
and `common.errors`, so `explain.settings` (and `cli.py --help`) may
read it and stay instant.

Adding a scorer is its module (a `Scorer` subclass) and one row in
`SCORERS`. A test may register a scorer for its own duration with
`monkeypatch.setitem(SCORERS, name, ScorerSpec(...))`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from common.errors import UserError

#: Capabilities a scorer may need. "generation": chat completions; "logprobs": the distribution over
#: the values 0..10 at marked slots (`LLMBackend.digit_distributions`); "embeddings": text embeddings.
CAPABILITIES = frozenset({"generation", "logprobs", "embeddings"})
#: The capabilities only an LLM backend (`--simulator`) offers; "embeddings" come from `--embedder`.
LLM_CAPABILITIES = frozenset({"generation", "logprobs"})


@dataclass(frozen=True)
class ScorerSpec:
    """One scorer's facts; see the module docstring for why they live here and not on the class."""

    name: str  # registry key, `--scorers` value and key of `scores.<name>` in records
    target: str  # "module:Class" of its `Scorer` subclass, imported only when the scorer runs
    headline: str  # the metric best-of-k maximises on valid (`Scorer.selection_metric`), compare and the report show
    needs: frozenset[str] = frozenset()  # subset of CAPABILITIES its backend must offer (`check_needs`)
    sampled: bool = False  # reads the Paulo et al. test examples (`Examples.scoring`, `ScoringConfig`)
    intruders: bool = False  # also reads intruder fragments from other features (`explain.sampling`)
    llm_default: bool = False  # runs when --scorers is not given and --simulator is an LLM
    extra_metrics: tuple[str, ...] = ()  # metrics `compare` reports beside the headline
    # What the `n_tokens` of its cost counts, as the run's cost line names it; None: it runs no model.
    cost_unit: str | None = "model tokens"

    def __post_init__(self) -> None:
        unknown = self.needs - CAPABILITIES
        if unknown:
            raise ValueError(f"scorer {self.name!r} needs unknown capabilities {sorted(unknown)}: "
                             f"choose among {sorted(CAPABILITIES)}")
        if ":" not in self.target:
            raise ValueError(f"scorer {self.name!r}: target {self.target!r} is not 'module:Class'")

    @property
    def needs_llm(self) -> bool:
        """Whether it runs on the `--simulator` LLM backend (and so reads LLM answers)."""
        return bool(self.needs & LLM_CAPABILITIES)

    @property
    def needs_embedder(self) -> bool:
        """Whether it runs on the `--embedder` sentence-embedding model."""
        return "embeddings" in self.needs


SCORERS: dict[str, ScorerSpec] = {s.name: s for s in [
    # token-list lookup + Pearson, no LLM: the free floor
    ScorerSpec("tokens", "explain.scorers.tokens:TokenListScorer", "top_and_random", cost_unit=None),
    # LLM all-at-once simulator + Pearson (Bills et al.)
    ScorerSpec("simulation", "explain.scorers.simulation:SimulationScorer", "top_and_random",
               needs=frozenset({"logprobs"}), llm_default=True),
    # which plain examples fit? (Paulo et al.)
    ScorerSpec("detection", "explain.scorers.detection:DetectionScorer", "auroc", needs=frozenset({"generation"}),
               sampled=True, llm_default=True, extra_metrics=("balanced_accuracy", "f1")),
    # are the marked tokens the right ones?
    ScorerSpec("fuzzing", "explain.scorers.fuzzing:FuzzingScorer", "auroc", needs=frozenset({"generation"}),
               sampled=True, llm_default=True, extra_metrics=("balanced_accuracy", "f1")),
    # sentence-embedding similarity, no LLM; loads a second model, so it runs only when named
    ScorerSpec("embedding", "explain.scorers.embedding:EmbeddingScorer", "auroc", needs=frozenset({"embeddings"}),
               sampled=True, cost_unit="encoder tokens"),
    # find the other feature's example; reads no explanation
    ScorerSpec("intruder", "explain.scorers.intruder:IntruderScorer", "accuracy", needs=frozenset({"generation"}),
               sampled=True, intruders=True, llm_default=True),
]}


def scorer_spec(name: str) -> ScorerSpec:
    """The registered spec of `name`; an unknown name is refused in one line listing the known ones."""
    if name not in SCORERS:
        raise UserError(f"unknown scorer {name!r}: choose one of {', '.join(sorted(SCORERS))}")
    return SCORERS[name]


def known_specs(names: Iterable[str]) -> list[ScorerSpec]:
    """The specs of the registered names among `names`, in order (unknown ones are refused by `scorer_spec`)."""
    return [SCORERS[n] for n in names if n in SCORERS]


def llm_default_scorers() -> list[str]:
    """What an LLM `--simulator` runs when `--scorers` is not given: every scorer marked `llm_default`."""
    return [s.name for s in SCORERS.values() if s.llm_default]
