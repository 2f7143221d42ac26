"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024): nested prefixes each reconstruct the input.

The dictionary's first w_1 < w_2 < … < F latents form nested dictionaries;
codes come from one BatchTopK over the whole dictionary, and the loss is the
sum over levels of the FVU of the reconstruction from each prefix alone,
plus AuxK against dead latents (SAELens's MatryoshkaBatchTopKTrainingSAE: by
default here, as its use_matryoshka_aux_loss, per level on that prefix's residual;
with `--no-matryoshka-aux` on the full reconstruction's residual). A prefix must
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

from sae.kinds.stack import StackOptions, auxk_fvu
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

    def auxk(self, pre: Tensor, c: Tensor, err: Tensor, variance: Tensor) -> Tensor:
        """With `matryoshka_aux` (SAELens's use_matryoshka_aux_loss, as the SynthSAEBench experiments train it):
        each level's own dead latents reconstruct the residual of the prefix that ends with them, so a dead
        latent of an early level is revived toward what the early levels miss, not toward the whole
        dictionary's residual; the levels' losses add up."""
        if not self.kind_settings.matryoshka_aux:
            return super().auxk(pre, c, err, variance)
        levels = list(zip([0] + self.widths[:-1], self.widths))  # (first latent, end) of each level's block
        with torch.no_grad():  # x − x̂_w = (x − x̂) + the blocks after w: built from the last level back
            codes, residual, residuals = self.decoder_inputs(c), (-err).detach(), {}
            for start, width in reversed(levels):
                residuals[width] = residual
                residual = residual + torch.bmm(codes[:, :, start:width], self.W_d[:, start:width])
        total = torch.zeros(pre.shape[0], device=pre.device)
        for start, width in levels:
            total = total + auxk_fvu(pre[:, :, start:width], self.since_fired[:, start:width],
                                     self.kind_settings.dead_tokens, self.W_d[:, start:width], residuals[width],
                                     variance, k_aux=self.d_in // 2)
        return total

    def inner_fvu(self, c: Tensor, x: Tensor) -> Tensor:
        """Σ over the inner levels of ‖x − x̂_w‖² / the batch's variance, x̂_w from the first w latents: [n].

        The prefixes' reconstructions are built block by block (x̂_{w_i} = x̂_{w_{i−1}} + c[w_{i−1}:w_i]·W_d), so
        all of them cost one decode of the largest inner level.
        """
        variance = batch_variance(x)
        c = self.decoder_inputs(c)
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
