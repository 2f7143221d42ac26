"""The tied-weight L1 SAE of Cunningham et al. (2023): inference form and training objective."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sae.kinds.affine import AffineDictionary, unit_rows
from sae.kinds.stack import StackOptions, SweepStack, unit_rows_with_grad, xavier


class TiedSAE(AffineDictionary):
    """Cunningham et al.: c = ReLU(M̂x + b), x̂ = M̂ᵀc, M̂ = M with unit rows (normalised in forward)."""

    kind = "tied_sae"
    tensor_shapes = {"M": ("F", "d"), "b": ("F",)}

    def _compute_effective(self):
        m = unit_rows(self._tensors["M"])
        return m, self._tensors["b"], m, torch.zeros(self.d_in, device=m.device)


class TiedStack(SweepStack):
    """Training objective of Cunningham et al.: MSE per element + α·mean L1, decoder rows normalised in forward."""

    kind = "tied_sae"
    bias_names = ("b",)

    def __init__(self, d_in: int, ratio: float, values: list[float], seed: int,
                 options: StackOptions = StackOptions()):
        super().__init__(d_in, ratio, values, seed, options)
        n, f = len(self.values), self.n_features
        self.register_buffer("alpha", torch.tensor(self.values, dtype=torch.float32))
        self.M = nn.Parameter(torch.stack([xavier(f, d_in, g) for g in self.generators()]))
        self.b = nn.Parameter(torch.zeros(n, f))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x [B, d] -> dict of per-model tensors: loss, mse, l1 [n]; codes c [n, B, F]; x_hat [n, B, d]."""
        n, batch = self.alpha.shape[0], x.shape[0]
        xs = x.unsqueeze(0).expand(n, batch, self.d_in)
        dec = unit_rows_with_grad(self.M)
        c = torch.relu(torch.baddbmm(self.b.unsqueeze(1), xs, dec.transpose(1, 2)))
        x_hat = torch.bmm(c, dec)
        mse = (x_hat - xs).pow(2).mean(dim=(1, 2))
        l1 = c.sum(dim=(1, 2)) / batch  # c >= 0, so the L1 norm is the sum
        return {"loss": mse + self.alpha * l1, "mse": mse, "l1": l1, "c": c, "x_hat": x_hat}
