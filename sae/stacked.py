"""The L1 sweep stack under its historical name; every kind's objective now lives beside its class in `sae/kinds/`.

`StackedSAE(tied, d_in, ratio, l1s, seed)` builds the tied or untied L1
objective, as before the registry of kinds existed (benchmarks and tests
of the paper's SAE use it).
"""

from __future__ import annotations

from sae.kinds.stack import StackOptions, SweepStack, model_seed, n_features_for, unit_rows_with_grad
from sae.kinds.tied import TiedStack
from sae.kinds.untied import UntiedStack


def StackedSAE(tied: bool, d_in: int, ratio: float, l1s: list[float], seed: int,  # noqa: N802 (was a class)
               options: StackOptions = StackOptions()) -> SweepStack:
    cls = TiedStack if tied else UntiedStack
    return cls(d_in, ratio, list(l1s), seed, options)


__all__ = ["StackedSAE", "StackOptions", "SweepStack", "model_seed", "n_features_for", "unit_rows_with_grad"]
