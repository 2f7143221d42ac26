"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per token; inference form.

Same affine shape as the untied SAE (c = TopK(ReLU(W_e(x − b_d) + b_e)),
x̂ = c·Ŵ_d + b_d); k is part of the dictionary (config `k`), so encode is
per token and needs no batch.
"""

from __future__ import annotations

from sae.errors import DictionaryError
from sae.kinds.untied import UntiedSAE


class TopKSAE(UntiedSAE):
    kind = "topk"

    def __init__(self, tensors, config, name: str = ""):
        super().__init__(tensors, config, name)
        if self.k is None or self.k < 1:
            raise DictionaryError(f"{self.name}: a topk dictionary needs a positive `k` in config.json; re-create it")
