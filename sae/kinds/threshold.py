"""Threshold SAEs: BatchTopK at inference (Bussmann et al. 2024) and JumpReLU (Rajamanoharan et al. 2024).

Both encode per token as c_j = p_j · [p_j > θ_j] with p = W_e(x − b_d) + b_e:
BatchTopK learns one θ for all features during training (the mean of the
smallest activation its batch-level top-k kept), so a trained BatchTopK SAE
needs no batch at inference; JumpReLU (e.g. Gemma Scope, loaded from SAELens)
has one θ per feature. θ ≥ 0 keeps every code non-negative, as the
`Dictionary` protocol requires.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sae.errors import DictionaryError
from sae.kinds.affine import AffineDictionary, folded_bias, top_k, unit_rows


class ThresholdSAE(AffineDictionary):
    tensor_shapes = {"W_e": ("F", "d"), "b_e": ("F",), "W_d": ("F", "d"), "b_d": ("d",), "threshold": ("F",)}

    def __init__(self, tensors, config, name: str = ""):
        super().__init__(tensors, config, name)
        if bool((self._tensors["threshold"] < 0).any()):
            raise DictionaryError(f"{self.name}: negative thresholds would give negative codes; re-create the folder")

    def _compute_effective(self):
        t = self._tensors
        return t["W_e"], folded_bias(t["W_e"], t["b_e"], t["b_d"]), unit_rows(t["W_d"]), t["b_d"]

    def encode(self, x: Tensor) -> Tensor:
        self._check_width(x, self.d_in, "encode")
        w, b, _, _ = self.effective()
        pre = x.to(w.dtype) @ w.T + b
        c = torch.where(pre > self._tensors["threshold"], pre, torch.zeros((), dtype=pre.dtype, device=pre.device))
        return top_k(c, self.k) if self.k is not None else c


class BatchTopKSAE(ThresholdSAE):
    kind = "batchtopk"


class JumpReLUSAE(ThresholdSAE):
    kind = "jumprelu"
