"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024): nested prefixes each reconstruct the input.

The dictionary's first w_1 < w_2 < … < F latents form nested dictionaries;
codes come from one BatchTopK over the whole dictionary, and the loss is the
sum over levels of the FVU of the reconstruction from each prefix alone,
plus AuxK against dead latents (SAELens's MatryoshkaBatchTopKTrainingSAE:
its auxiliary loss, on the full reconstruction's residual). A prefix must
reconstruct the input without the latents after it, so a general feature
(a parent) keeps its own early latent instead of being absorbed into the
latents of its specific cases (its children), as plain BatchTopK does.

Inference is BatchTopK's: one learned threshold, encode per token; the
levels are recorded in config.json (`matryoshka_widths`). The widths are
`--matryoshka-prefixes` fractions of the dictionary width (`sae.kind_settings`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sae.kinds.stack import StackOptions
from sae.kinds.threshold import BatchTopKSAE, BatchTopKStack
from sae.kinds.topk import batch_variance


class MatryoshkaSAE(BatchTopKSAE):
    kind = "matryoshka_batchtopk"


class MatryoshkaStack(BatchTopKStack):
    kind = "matryoshka_batchtopk"

    def __init__(self, d_in: int, ratio: float, values: list[float], seed: int,
                 options: StackOptions = StackOptions()):
        super().__init__(d_in, ratio, values, seed, options)
        self.widths = self.kind_settings.widths(self.n_features)  # increasing, the last is the whole dictionary

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = super().forward(x)  # BatchTopK's codes, the whole dictionary's FVU and AuxK
        inner = self.inner_fvu(out["c"], x)
        return {**out, "loss": out["loss"] + inner, "inner_fvu": inner}

    def inner_fvu(self, c: Tensor, x: Tensor) -> Tensor:
        """Σ over the inner levels of ‖x − x̂_w‖² / the batch's variance, x̂_w from the first w latents: [n].

        The prefixes' reconstructions are built block by block (x̂_{w_i} = x̂_{w_{i−1}} + c[w_{i−1}:w_i]·W_d), so
        all of them cost one decode of the largest inner level.
        """
        variance = batch_variance(x)
        recon = self.b_d.unsqueeze(1).expand(len(self.values), x.shape[0], self.d_in)
        total = torch.zeros(len(self.values), device=x.device)
        start = 0
        for width in self.widths[:-1]:
            recon = torch.baddbmm(recon, c[:, :, start:width], self.W_d[:, start:width])
            total = total + (recon - x.unsqueeze(0)).pow(2).sum(dim=(1, 2)) / variance
            start = width
        return total

    def inference_config(self, i: int) -> dict:
        return {"matryoshka_widths": list(self.widths)}
