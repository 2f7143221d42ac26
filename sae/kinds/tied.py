"""The tied-weight L1 SAE of Cunningham et al. (2023): inference form."""

from __future__ import annotations

import torch
from torch import Tensor

from sae.errors import DictionaryError
from sae.kinds.affine import AffineDictionary, top_k, unit_rows


class TiedSAE(AffineDictionary):
    """Cunningham et al.: c = ReLU(M̂x + b), x̂ = M̂ᵀc, M̂ = M with unit rows (normalised in forward)."""

    kind = "tied_sae"
    tensor_shapes = {"M": ("F", "d"), "b": ("F",)}

    def _compute_effective(self):
        m = unit_rows(self._tensors["M"])
        return m, self._tensors["b"], m, torch.zeros(self.d_in, device=m.device)
