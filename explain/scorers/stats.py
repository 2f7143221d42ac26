"""Statistics shared by scorers and by `compare`: Pearson correlation, and mean with a 95% CI.

A correlation is undefined when either side is constant (e.g. a simulator
that predicts 0 everywhere). That is returned as ``None`` with the reason,
never as 0: a 0 would look like a real, uninformative explanation and would
drag a basis's mean down for a failure of the scorer, not of the basis.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


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
