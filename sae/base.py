"""The one interface every basis implements, learned or not.

Training metrics, explanation and patching only ever see this protocol, so a
PCA basis and an SAE are compared by exactly the same code.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Dictionary(Protocol):
    d_in: int
    n_features: int

    def encode(self, x: Tensor) -> Tensor:
        """[..., d_in] -> [..., n_features], every coefficient >= 0."""
        ...

    def decode(self, c: Tensor) -> Tensor:
        """[..., n_features] -> [..., d_in]."""
        ...

    @property
    def directions(self) -> Tensor:
        """[n_features, d_in], unit-norm rows: the feature directions."""
        ...
