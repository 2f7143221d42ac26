"""Plain data passed between exemplar selection, prompts, LLM backends and scoring.

These types are the whole contract between the LLM side (prompts, backends,
simulator, explainer) and the pipeline (exemplars, scoring, the `explain`
command): the pipeline hands `ActivationRecord`s in and gets strings
(explanations) and `SimulationResult`s back. Everything serialises to JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, Sequence, Union

from common.errors import UserError

#: Activation values the LLM reads and writes (Bills et al.): integers 0..10.
MAX_DISPLAY = 10
N_VALUES = MAX_DISPLAY + 1


def compact(x: float, digits: int) -> float | int:
    """x rounded, written as an int when whole (records stay small: most activations are 0)."""
    r = round(float(x), digits)
    return int(r) if r.is_integer() else r


@dataclass
class ActivationRecord:
    """One fragment: decoded token strings and the true feature activation of each (>= 0)."""

    tokens: list[str]
    activations: list[float]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.activations):
            raise UserError(
                f"ActivationRecord has {len(self.tokens)} tokens but {len(self.activations)} activations: "
                "pass one activation per token"
            )

    def to_json(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens), "activations": [float(a) for a in self.activations]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "ActivationRecord":
        return cls(tokens=[str(t) for t in obj["tokens"]], activations=[float(a) for a in obj["activations"]])


# What a simulator scores: records (tokens + true activations) or bare token lists.
Fragments = Sequence[Union[ActivationRecord, Sequence[str]]]
# The few-shot example both simulators (logprob and text) show first.
DEFAULT_SIM_FEWSHOT = "negation"


def fragment_tokens(fragment: ActivationRecord | Sequence[str]) -> list[str]:
    return list(fragment.tokens) if isinstance(fragment, ActivationRecord) else [str(t) for t in fragment]


@dataclass
class Example:
    """One window of a fragment that a detection / fuzzing / embedding / intruder scorer shows.

    `fragment`, `start` and `end` locate it in the cache (token positions
    after any BOS), so every score can be traced to the text it was given;
    `activations` are those of `feature` (the feature scored, or another
    feature's for an intruder).
    """

    fragment: int
    start: int
    tokens: list[str]
    activations: list[float]
    kind: str  # "quantile" (activating) | "random" / "hard" (non-activating) | "intruder"
    feature: int
    bin: int | None = None  # activation decile of a quantile example, 0 = weakest

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def activating(self) -> bool:
        return self.kind == "quantile"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"fragment": int(self.fragment), "start": int(self.start),
                               "end": int(self.start + len(self.tokens)), "kind": self.kind}
        if self.bin is not None:
            out["bin"] = int(self.bin)
        if self.kind == "intruder":
            out["feature"] = int(self.feature)
        out["max_act"] = compact(max(self.activations, default=0.0), 3)
        return out


@dataclass
class ScoringSet:
    """A feature's test examples for the classification-style scorers (Paulo et al.; see `explain.sampling`).

    `examples` = activating (quantile) ones first, then non-activating
    (random, then hard); scorers refer to examples by their position here.
    `negative_threshold` is the fragment maximum at or below which a fragment
    counts as non-activating (0 for a sparse feature; see `explain.sampling`).
    """

    examples: list[Example]
    intruders: list[Example] = field(default_factory=list)
    negative_threshold: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def activating(self) -> list[Example]:
        return [e for e in self.examples if e.activating]

    @property
    def labels(self) -> list[int]:
        return [int(e.activating) for e in self.examples]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"negative_threshold": compact(self.negative_threshold, 4),
                               "examples": [e.to_json() for e in self.examples],
                               "intruders": [e.to_json() for e in self.intruders]}
        if self.notes:
            out["notes"] = list(self.notes)
        return out


@dataclass(frozen=True)
class Examples:
    """The scored records of one split of one feature, as every scorer takes them.

    Top-activating fragments first, then random ones; scorers report
    metrics on all of them and on each part, because an explanation that
    only fits the top fragments says little about where the feature is off.
    `scoring` holds the sampled test examples of the detection, fuzzing,
    embedding and intruder scorers when the run has one of them.
    """

    split: str  # "valid" (selection among candidates) or "test" (the reported scores)
    top: list[ActivationRecord]
    random: list[ActivationRecord]
    scoring: ScoringSet | None = None

    @property
    def records(self) -> list[ActivationRecord]:
        return [*self.top, *self.random]


@dataclass(frozen=True)
class FewShotExample:
    """A handwritten example feature with a known answer, shown once per prompt."""

    id: str
    explanation: str  # a phrase that completes "the main thing this neuron does is find ..."
    records: tuple[ActivationRecord, ...]


@dataclass
class SimulationResult:
    """Simulated activations of one explanation on a list of fragments.

    `expected_values[r][t]` = Σ_k k·p_k over the values 0..10 at token t of
    fragment r; `distributions[r][t]` is that renormalised distribution
    (11 probabilities). `mode` names how the distributions were read
    (`local-exact`, `completions-echo`, `chat-top-logprobs`) and
    `ten` how the value 10 was obtained (`single-token`, `two-step`,
    `unavailable`), so a record says which path produced its numbers. In the
    text mode (`mode="text"`, `explain.scorers.text_sim`) each value is the
    integer the model wrote, and a fragment whose answer could not be read
    is None (listed in `extra["failed_fragments"]`), never a row of zeros.
    """

    explanation: str
    expected_values: list[list[float] | None]
    distributions: list[list[list[float]]]
    mode: str
    ten: str
    backend: str
    n_calls: int = 0  # LLM requests actually sent (cache hits excluded)
    n_cached: int = 0  # requests answered from the LLM cache
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def load_fewshot(ids: list[str] | None = None) -> list[FewShotExample]:
    """Return the handwritten few-shot features in `explain/fewshot/*.json`, sorted by id.

    Stored as JSON in the repo (not generated) so the prompts are reviewable
    and the answers are known; `ids` selects and orders a subset.
    """
    folder = resources.files("explain") / "fewshot"
    examples: dict[str, FewShotExample] = {}
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".json"):
            continue
        obj = json.loads(entry.read_text(encoding="utf-8"))
        records = tuple(ActivationRecord.from_json(r) for r in obj["records"])
        examples[obj["id"]] = FewShotExample(id=obj["id"], explanation=obj["explanation"], records=records)
    if ids is None:
        return [examples[k] for k in sorted(examples)]
    missing = [i for i in ids if i not in examples]
    if missing:
        raise UserError(f"unknown few-shot example(s) {missing}: choose from {sorted(examples)}")
    return [examples[i] for i in ids]
