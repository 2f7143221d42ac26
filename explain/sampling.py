"""Test examples for the detection, fuzzing, embedding and intruder scorers (Paulo et al. 2024; delphi).

Simulation scores an explanation on the top fragments, where it was
written; these scorers ask whether it *separates* contexts where the feature
fires from contexts where it does not, across the whole range of
activations. Per feature (everything seeded by (seed, feature), so a
feature's examples never depend on which other features run with it):

* **activating**: the fragments whose maximum is above the negative
  threshold, *minus the explainer's train fragments* (top 0::4: no scorer is
  shown what the explainer saw), ranked by maximum and cut into
  `n_quantiles` equal-count bins (deciles); `per_quantile` drawn from each,
  so weak activations are tested as well as strong ones. Bin 0 is the weakest.
* **non-activating** (random): `n_negative` drawn among fragments whose
  maximum is at or below the negative threshold.
* **hard** (optional, `n_hard`): the non-activating fragments most similar to
  the explainer's train fragments (TF-IDF cosine over token ids,
  `ContextSimilarity`): text that looks like where the feature fires, but
  where it does not. delphi finds such contexts with a sentence-embedding
  index; token TF-IDF needs no second model and one pass over the cache's tokens.
* **intruders**: for the intruder scorer, fragments where *another* feature
  of the same dictionary (a seeded "donor" from the run's features) fires in
  the upper half of its activating range while this feature does not.

The negative threshold is the 10th percentile of the feature's fragment
maxima: 0 for any feature silent on at least 10% of fragments (every
sparse feature), so "non-activating" means exactly that; a dense feature
(neurons, PCA, random directions are active somewhere in nearly every
fragment) would otherwise have no negatives at all, and for it
non-activating means "in the bottom decile of maxima". The threshold is in
every record.

Each chosen fragment is shown as one window of ~`window` tokens: fragments
are cut into fixed windows (`window_bounds`) and an activating example is
the window holding its peak, a non-activating one a seeded random window.
Fixed windows are shared by every feature and basis of a run, so the
embedding scorer embeds each at most once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from explain.records import Example, ScoringSet
from explain.settings import ScoringConfig

NEGATIVE_QUANTILE = 0.1
N_DONORS = 3  # donor candidates per feature for the intruder scorer
_SALT_SAMPLE, _SALT_DONOR, _SALT_WINDOW = 15, 16, 17


def window_bounds(length: int, size: int) -> list[tuple[int, int]]:
    """Consecutive windows of about `size` tokens covering [0, length) (a short tail joins its neighbour)."""
    n = max(1, int(round(length / size)))
    edges = np.linspace(0, length, n + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def negative_threshold(maxima: np.ndarray) -> float:
    """Fragment maximum at or below which a fragment counts as non-activating (see the module docstring)."""
    if maxima.size == 0:
        return 0.0
    return max(0.0, float(np.quantile(maxima, NEGATIVE_QUANTILE, method="lower")))


def donor_candidates(feature: int, pool: Sequence[int], seed: int, n: int = N_DONORS) -> list[int]:
    """Up to `n` other features of `pool` to take intruders from, in a seeded order that depends only on `feature`."""
    others = sorted({int(f) for f in pool} - {int(feature)})
    if not others:
        return []
    rng = np.random.default_rng([int(seed), int(feature), _SALT_DONOR])
    return [others[int(i)] for i in rng.permutation(len(others))[:n]]


@dataclass
class ScoringPlan:
    """Fragment indices chosen for one feature, before windows are cut."""

    feature: int
    threshold: float
    quantile: list[tuple[int, int]] = field(default_factory=list)  # (fragment, bin)
    negative: list[int] = field(default_factory=list)
    hard: list[int] = field(default_factory=list)
    intruders: list[tuple[int, int]] = field(default_factory=list)  # (fragment, donor feature)
    notes: list[str] = field(default_factory=list)

    def needs(self) -> list[tuple[int, int]]:
        """(fragment, feature) pairs whose per-token activations the windows need."""
        own = [f for f, _ in self.quantile] + self.negative + self.hard
        return [(f, self.feature) for f in own] + [(f, g) for f, g in self.intruders]


def plan_scoring(maxima: np.ndarray, feature: int, train: np.ndarray, config: ScoringConfig,
                 donors: Sequence[int] = (), donor_maxima: Callable[[int], np.ndarray | None] | None = None,
                 similarity: np.ndarray | None = None, intruders: bool = False) -> ScoringPlan:
    """Choose the activating, non-activating, hard and intruder fragments of one feature.

    `maxima`: this feature's maximum per fragment; `train`: the fragments the
    explainer saw; `similarity`: per-fragment similarity to the train
    fragments (hard negatives); `donor_maxima(g)`: another feature's maxima.
    """
    m = np.asarray(maxima, dtype=np.float64)
    rng = np.random.default_rng([int(config.seed), int(feature), _SALT_SAMPLE])
    plan = ScoringPlan(feature=int(feature), threshold=negative_threshold(m))
    pos = np.setdiff1d(np.flatnonzero(m > plan.threshold), np.asarray(train, dtype=np.int64))
    order = pos[np.lexsort((pos, m[pos]))]  # weakest first, ties by index
    for b, members in enumerate(np.array_split(order, config.n_quantiles)):
        take = min(config.per_quantile, members.size)
        if take:
            plan.quantile += [(int(i), b) for i in sorted(rng.choice(members, size=take, replace=False))]
    if pos.size < config.n_quantiles * config.per_quantile:
        plan.notes.append(f"only {pos.size} activating fragments outside the explainer's: fewer quantile examples")
    neg = np.flatnonzero(m <= plan.threshold)
    take = min(config.n_negative, neg.size)
    plan.negative = sorted(int(i) for i in rng.choice(neg, size=take, replace=False)) if take else []
    if take < config.n_negative:
        plan.notes.append(f"only {neg.size} non-activating fragments: fewer random negatives")
    if config.n_hard and similarity is not None:
        rest = np.setdiff1d(neg, np.asarray(plan.negative, dtype=np.int64))
        rest = rest[similarity[rest] > 0]
        ranked = rest[np.lexsort((rest, -similarity[rest]))]
        plan.hard = [int(i) for i in ranked[: config.n_hard]]
        if len(plan.hard) < config.n_hard:
            plan.notes.append(f"only {len(plan.hard)} similar non-activating fragments: fewer hard negatives")
    if intruders and config.intruder_rounds:
        _plan_intruders(plan, m, config, donors, donor_maxima, rng)
    return plan


def _plan_intruders(plan: ScoringPlan, m: np.ndarray, config: ScoringConfig, donors: Sequence[int],
                    donor_maxima: Callable[[int], np.ndarray | None] | None,
                    rng: np.random.Generator) -> None:
    """Intruder fragments: the first donor that fires strongly (top half of its range) where this feature does not."""
    for g in donors:
        mg = donor_maxima(g) if donor_maxima is not None else None
        if mg is None:
            continue
        active = mg[mg > 0]
        if active.size == 0:
            continue
        eligible = np.flatnonzero((mg >= np.median(active)) & (mg > 0) & (m <= plan.threshold))
        if eligible.size == 0:
            continue
        take = min(config.intruder_rounds, eligible.size)
        plan.intruders = [(int(i), int(g)) for i in rng.choice(eligible, size=take, replace=False)]
        if take < config.intruder_rounds:
            plan.notes.append(f"only {take} intruder fragments from feature {g}")
        return
    plan.notes.append("no other feature of the run fires where this one does not: no intruder rounds")


def build_scoring_set(plan: ScoringPlan, lookup: Callable[[int, int], tuple[list[str], np.ndarray]],
                      config: ScoringConfig) -> ScoringSet:
    """Cut the planned fragments into windows; `lookup(fragment, feature)` = (token strings, activations)."""
    rng = np.random.default_rng([int(config.seed), int(plan.feature), _SALT_WINDOW])

    def cut(fragment: int, feature: int, kind: str, bin_: int | None = None) -> Example:
        tokens, acts = lookup(fragment, feature)
        bounds = window_bounds(len(tokens), config.window)
        if kind in ("quantile", "intruder"):
            peak = int(np.argmax(acts))
            a, b = next((a, b) for a, b in bounds if a <= peak < b)
        else:
            a, b = bounds[int(rng.integers(len(bounds)))]
        return Example(fragment=int(fragment), start=a, tokens=list(tokens[a:b]),
                       activations=[float(x) for x in acts[a:b]], kind=kind, feature=int(feature), bin=bin_)

    examples = [cut(f, plan.feature, "quantile", b) for f, b in plan.quantile]
    examples += [cut(f, plan.feature, "random") for f in plan.negative]
    examples += [cut(f, plan.feature, "hard") for f in plan.hard]
    intruders = [cut(f, g, "intruder") for f, g in plan.intruders]
    return ScoringSet(examples=examples, intruders=intruders, negative_threshold=plan.threshold,
                      notes=list(plan.notes))


class ContextSimilarity:
    """TF-IDF cosine similarity between fragments, over token ids (the hard negatives' "similar context")."""

    def __init__(self, tokens: np.ndarray):
        from scipy import sparse
        from sklearn.feature_extraction.text import TfidfTransformer

        tokens = np.asarray(tokens, dtype=np.int64)
        n, length = tokens.shape
        rows = np.repeat(np.arange(n), length)
        counts = sparse.csr_matrix((np.ones(n * length, dtype=np.float64), (rows, tokens.ravel())),
                                   shape=(n, int(tokens.max(initial=0)) + 1))
        counts.sum_duplicates()
        self.matrix = TfidfTransformer(sublinear_tf=True).fit_transform(counts).tocsr()  # rows L2-normalised

    def scores(self, fragments: Sequence[int]) -> np.ndarray:
        """Cosine similarity of every fragment to the mean TF-IDF vector of `fragments`."""
        idx = np.asarray(list(fragments), dtype=np.int64)
        if idx.size == 0:
            return np.zeros(self.matrix.shape[0])
        query = np.asarray(self.matrix[idx].mean(axis=0)).ravel()
        norm = float(np.linalg.norm(query))
        return np.asarray(self.matrix @ (query / norm if norm else query)).ravel()
