"""The untied L1 SAE (for MLP activations): inference form and training objective."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sae.kinds.affine import AffineDictionary, folded_bias, unit_rows
from sae.kinds.stack import (SAELENS_DECODER_INIT_NORM, StackOptions, SweepStack, fold_row_norms, unit_rows_with_grad,
                             xavier)


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


class UntiedStack(SweepStack):
    """MSE + α·L1 like the tied SAE, with a separate encoder (initialised to the decoder's transpose).

    The decoder bias starts at the data mean, so the first steps do not
    spend the codes on the mean.
    """

    kind = "untied_sae"
    bias_names = ("b_e", "b_d")

    def __init__(self, d_in: int, ratio: float, values: list[float], seed: int,
                 options: StackOptions = StackOptions()):
        super().__init__(d_in, ratio, values, seed, options)
        n, f = len(self.values), self.n_features
        dec = torch.stack([xavier(f, d_in, g) for g in self.generators()])
        mean = options.data_mean if options.data_mean is not None else torch.zeros(d_in)
        self.register_buffer("alpha", torch.tensor(self.values, dtype=torch.float32))
        if self.free_decoder:  # SAELens's Standard SAE: rows (and the encoder, its copy) start at norm 0.1
            dec = SAELENS_DECODER_INIT_NORM * dec / dec.norm(dim=-1, keepdim=True)
        self.W_e = nn.Parameter(dec.clone())
        self.b_e = nn.Parameter(torch.zeros(n, f))
        self.W_d = nn.Parameter(dec)
        self.b_d = nn.Parameter(mean.to(torch.float32).expand(n, d_in).clone())

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """MSE + α·L1; with free decoder norms x̂ = c·W_d and L1 = Σ c·‖W_d‖ (SAELens's Standard SAE), else the
        rows are normalised here and L1 = Σ c."""
        n, batch = self.alpha.shape[0], x.shape[0]
        xs = x.unsqueeze(0).expand(n, batch, self.d_in)
        dec = self.W_d if self.free_decoder else unit_rows_with_grad(self.W_d)
        centred = xs - self.b_d.unsqueeze(1)
        c = torch.relu(torch.baddbmm(self.b_e.unsqueeze(1), centred, self.W_e.transpose(1, 2)))
        x_hat = torch.baddbmm(self.b_d.unsqueeze(1), c, dec)
        mse = (x_hat - xs).pow(2).mean(dim=(1, 2))
        sized = c * self.W_d.norm(dim=-1).unsqueeze(1) if self.free_decoder else c  # the codes of unit rows
        l1 = sized.sum(dim=(1, 2)) / batch
        return {"loss": mse + self.alpha * l1, "mse": mse, "l1": l1, "c": sized, "x_hat": x_hat}

    def inference_tensors(self, i: int) -> dict[str, Tensor]:
        tensors = super().inference_tensors(i)
        return fold_row_norms(tensors)[0] if self.free_decoder else tensors
