"""What a feature page shows of one feature, as plain data: the contract between computing it and drawing it.

Why a module of its own: the numbers (density, histogram, quantile
examples, logit effects, decoder neighbours) are computed once per
dictionary from a cache, a dictionary and the subject model's unembedding
(`report.feature_stats`, `sae.logit_effects`), and drawn by `report/` for
thousands of features. Keeping the schema here lets either side change
without reading the other's code. Token strings of a fragment are stored
once per dictionary (`DictionarySummaries.fragments`), never per example.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Example:
    """One fragment of the cache and this feature's activation at each of its tokens."""

    fragment: int  # context index in the cache; its tokens are DictionarySummaries.fragments[fragment]
    acts: list[float]  # one per token of that fragment (same length as its token list)


@dataclass
class Quantile:
    """Examples whose maximum activation lies in (lo, hi]: what the feature does away from its top."""

    lo: float
    hi: float
    examples: list[Example] = field(default_factory=list)


@dataclass
class FeatureSummary:
    index: int
    density: float  # fraction of the cache's tokens where the activation is > 0
    max_act: float
    hist_edges: list[float] = field(default_factory=list)  # bins of the non-zero activations (len = counts + 1)
    hist_counts: list[int] = field(default_factory=list)
    top: list[Example] = field(default_factory=list)
    quantiles: list[Quantile] = field(default_factory=list)
    promoted: list[tuple[str, float]] = field(default_factory=list)  # empty when the hook is not in d_model
    suppressed: list[tuple[str, float]] = field(default_factory=list)
    neighbours: list[tuple[int, float]] = field(default_factory=list)  # (feature index, decoder cosine)


@dataclass
class DictionarySummaries:
    name: str  # the dictionary folder's name (as explanation records and the report name it)
    kind: str
    hook: str
    n_tokens: int  # tokens the densities are measured on
    fragments: dict[int, list[str]] = field(default_factory=dict)
    features: list[FeatureSummary] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["fragments"] = {str(k): v for k, v in self.fragments.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "DictionarySummaries":
        def example(e: dict[str, Any]) -> Example:
            return Example(int(e["fragment"]), [float(a) for a in e["acts"]])

        features = [FeatureSummary(
            index=int(f["index"]), density=float(f["density"]), max_act=float(f["max_act"]),
            hist_edges=[float(x) for x in f["hist_edges"]], hist_counts=[int(x) for x in f["hist_counts"]],
            top=[example(e) for e in f["top"]],
            quantiles=[Quantile(float(q["lo"]), float(q["hi"]), [example(e) for e in q["examples"]])
                       for q in f["quantiles"]],
            promoted=[(str(t), float(v)) for t, v in f["promoted"]],
            suppressed=[(str(t), float(v)) for t, v in f["suppressed"]],
            neighbours=[(int(i), float(c)) for i, c in f["neighbours"]]) for f in data["features"]]
        return cls(name=str(data["name"]), kind=str(data["kind"]), hook=str(data["hook"]),
                   n_tokens=int(data["n_tokens"]),
                   fragments={int(k): [str(t) for t in v] for k, v in data["fragments"].items()},
                   features=features)
