"""The untied L1 SAE (for MLP activations): inference form."""

from __future__ import annotations

import torch
from torch import Tensor

from sae.errors import DictionaryError
from sae.kinds.affine import AffineDictionary, folded_bias, top_k, unit_rows


class UntiedSAE(AffineDictionary):
    """c = ReLU(W_e(x − b_d) + b_e), x̂ = Ŵ_d c + b_d with Ŵ_d's rows normalised in forward.

    Normalising the decoder makes ‖c‖₁ the L1 of the *reconstruction's*
    components, so an α means the same as for the tied SAE.
    """

    kind = "untied_sae"
    tensor_shapes = {"W_e": ("F", "d"), "b_e": ("F",), "W_d": ("F", "d"), "b_d": ("d",)}

    def _compute_effective(self):
        t = self._tensors
        return t["W_e"], folded_bias(t["W_e"], t["b_e"], t["b_d"]), unit_rows(t["W_d"]), t["b_d"]
