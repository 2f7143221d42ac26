"""Fitted bases (PCA, ICA, random, and their top-k controls), stored directly in effective form.

They differ only in how `sae.baselines` fits them, so they share one module.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sae.errors import DictionaryError
from sae.kinds.affine import AffineDictionary, top_k, unit_rows


class LinearBasis(AffineDictionary):
    """A fitted basis (PCA, ICA, random) stored directly in effective form."""

    tensor_shapes = {"W_enc": ("F", "d"), "b_enc": ("F",), "W_dec": ("F", "d"), "b_dec": ("d",)}

    def _compute_effective(self):
        t = self._tensors
        return t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"]


class PCABasis(LinearBasis):
    """Principal components of the centred data; negative part of each projection set to 0."""

    kind = "pca"


class ICABasis(LinearBasis):
    """FastICA components, each oriented so its heavy tail is positive; negative part 0."""

    kind = "ica"


class RandomBasis(LinearBasis):
    """A random orthonormal basis (so it is a rotated default basis); negative part 0."""

    kind = "random"


class PCATopK(LinearBasis):
    """PCA with only the k largest (positive) coefficients kept: the sparsity-matched control."""

    kind = "pca_topk"


class ICATopK(LinearBasis):
    """ICA with only the k largest (positive) coefficients kept: the sparsity-matched control."""

    kind = "ica_topk"
