"""Scores of a simulation (Pearson correlation) and their summary statistics (mean, 95% CI).

A correlation is undefined when either side is constant (e.g. a simulator
that predicts 0 everywhere). That is recorded as ``None`` with the reason,
never as 0: a 0 would look like a real, uninformative explanation and would
drag a basis's mean down for a failure of the scorer, not of the basis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from explain.records import ActivationRecord

SCORE_KINDS = ("top_and_random", "top", "random")


def pearson(predicted: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray) -> tuple[float | None, str | None]:
    """(r, None), or (None, reason) when r is undefined."""
    p = np.asarray(predicted, dtype=np.float64).ravel()
    t = np.asarray(true, dtype=np.float64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"{p.size} predictions for {t.size} true values")
    if p.size < 2:
        return None, f"only {p.size} scored token(s): correlation undefined"
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(t))):
        return None, "non-finite values in the simulation or the activations"
    dp, dt = p - p.mean(), t - t.mean()
    sp, st = float(np.sqrt(dp @ dp)), float(np.sqrt(dt @ dt))
    if sp == 0.0:
        return None, f"the simulation is constant ({p[0]:g} at every token): correlation undefined"
    if st == 0.0:
        return None, f"the true activation is constant ({t[0]:g} at every token): correlation undefined"
    return float(np.clip((dp @ dt) / (sp * st), -1.0, 1.0)), None


@dataclass
class Scores:
    """Correlation over all scored tokens concatenated, for top+random, top only and random only."""

    top_and_random: float | None = None
    top: float | None = None
    random: float | None = None
    notes: dict[str, str] = field(default_factory=dict)  # score kind -> why it is None

    def values(self) -> dict[str, float | None]:
        return {"top_and_random": self.top_and_random, "top": self.top, "random": self.random}


def score_simulation(expected_values: Sequence[Sequence[float]], top: Sequence[ActivationRecord],
                     random: Sequence[ActivationRecord]) -> Scores:
    """Score simulated values of `top + random` records (in that order) against their true activations."""
    records = list(top) + list(random)
    if len(expected_values) != len(records):
        raise ValueError(f"{len(expected_values)} simulated records for {len(records)} scored records")
    for ev, rec in zip(expected_values, records):
        if len(ev) != len(rec.activations):
            raise ValueError(f"a simulated record has {len(ev)} values for {len(rec.activations)} tokens")
    n_top = len(top)
    parts = {"top_and_random": (0, len(records)), "top": (0, n_top), "random": (n_top, len(records))}
    out = Scores()
    for kind, (a, b) in parts.items():
        if a == b:
            out.notes[kind] = "no records in this part of the split"
            continue
        pred = np.concatenate([np.asarray(v, dtype=np.float64) for v in expected_values[a:b]])
        true = np.concatenate([np.asarray(r.activations, dtype=np.float64) for r in records[a:b]])
        r, why = pearson(pred, true)
        setattr(out, kind, r)
        if why:
            out.notes[kind] = why
    return out


def mean_ci(values: Sequence[float], z: float = 1.96) -> dict[str, Any]:
    """Mean, sample sd (ddof=1) and the half-width z·sd/√n of the 95% CI (None when n < 2)."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "ci": None}
    mean = float(x.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "sd": None, "ci": None}
    sd = float(x.std(ddof=1))
    return {"n": n, "mean": mean, "sd": sd, "ci": z * sd / math.sqrt(n)}
