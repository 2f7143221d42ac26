"""Many SAEs of one size as one stacked module, so a batch is read once for all of them.

A group holds n models with the same dictionary size F (one per α); their
weights are stacked [n, F, d] and stepped with batched matmuls. Parameters
are disjoint between models, the total loss is a plain sum, and Adam is
element-wise, so each model's trajectory is the one it would have alone.
Each model's initial weights come from its own seed derived from
(seed, kind, R, α), so they do not depend on which other models share the
sweep.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import Tensor, nn

from sae.dictionaries import AffineDictionary, TiedSAE, UntiedSAE


def model_seed(seed: int, kind: str, ratio: float, l1: float) -> int:
    """A stable 63-bit seed for one model, independent of the rest of the sweep."""
    key = json.dumps([int(seed), kind, float(ratio), float(l1)])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


def n_features_for(ratio: float, d_in: int) -> int:
    return max(1, int(round(ratio * d_in)))


class _UnitRows(torch.autograd.Function):
    """m / ‖m‖ per row, with the gradient (g − m̂ (m̂·g)) / ‖m‖ written out.

    Same maths as letting autograd differentiate the division and the norm,
    in about half the passes over the weights; at the paper's batch size
    those passes are a large share of a CPU step.
    """

    @staticmethod
    def forward(ctx, m: Tensor) -> Tensor:
        norm = m.norm(dim=-1, keepdim=True)
        out = m / norm
        ctx.save_for_backward(out, norm)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        out, norm = ctx.saved_tensors
        dot = torch.linalg.vecdot(grad, out).unsqueeze(-1)
        return torch.addcmul(grad, out, dot, value=-1.0).div_(norm)


def unit_rows_with_grad(m: Tensor) -> Tensor:
    return _UnitRows.apply(m)


def _xavier(n_features: int, d_in: int, generator: torch.Generator) -> Tensor:
    w = torch.empty(n_features, d_in)
    return nn.init.xavier_uniform_(w, generator=generator)


class StackedSAE(nn.Module):
    """n SAEs of equal size trained side by side; `forward` returns per-model losses [n]."""

    def __init__(self, tied: bool, d_in: int, ratio: float, l1s: list[float], seed: int):
        super().__init__()
        self.tied = tied
        self.kind = "tied_sae" if tied else "untied_sae"
        self.d_in = d_in
        self.ratio = float(ratio)
        self.n_features = n_features_for(ratio, d_in)
        self.l1s = [float(a) for a in l1s]
        self.seeds = [model_seed(seed, self.kind, ratio, a) for a in self.l1s]
        enc, dec = [], []
        for s in self.seeds:
            g = torch.Generator().manual_seed(s)
            w = _xavier(self.n_features, d_in, g)
            enc.append(w)
            dec.append(w.clone())  # untied: start from the tied solution, then let them separate
        n, f = len(self.l1s), self.n_features
        self.register_buffer("alpha", torch.tensor(self.l1s, dtype=torch.float32))
        if tied:
            self.M = nn.Parameter(torch.stack(enc))
            self.b = nn.Parameter(torch.zeros(n, f))
        else:
            self.W_e = nn.Parameter(torch.stack(enc))
            self.b_e = nn.Parameter(torch.zeros(n, f))
            self.W_d = nn.Parameter(torch.stack(dec))
            self.b_d = nn.Parameter(torch.zeros(n, d_in))

    def param_names(self) -> list[str]:
        return ["M", "b"] if self.tied else ["W_e", "b_e", "W_d", "b_d"]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x [B, d] -> dict of per-model tensors: loss, mse, l1 [n]; codes c [n, B, F]; x_hat [n, B, d]."""
        n = self.alpha.shape[0]
        batch = x.shape[0]
        xs = x.unsqueeze(0).expand(n, batch, self.d_in)
        if self.tied:
            dec = unit_rows_with_grad(self.M)
            pre = torch.baddbmm(self.b.unsqueeze(1), xs, dec.transpose(1, 2))
            c = torch.relu(pre)
            x_hat = torch.bmm(c, dec)
        else:
            dec = unit_rows_with_grad(self.W_d)
            centred = xs - self.b_d.unsqueeze(1)
            pre = torch.baddbmm(self.b_e.unsqueeze(1), centred, self.W_e.transpose(1, 2))
            c = torch.relu(pre)
            x_hat = torch.baddbmm(self.b_d.unsqueeze(1), c, dec)
        mse = (x_hat - xs).pow(2).mean(dim=(1, 2))
        l1 = c.sum(dim=(1, 2)) / batch  # c >= 0, so the L1 norm is the sum
        return {"loss": mse + self.alpha * l1, "mse": mse, "l1": l1, "c": c, "x_hat": x_hat}

    @torch.no_grad()
    def dictionaries(self, base_config: dict) -> list[AffineDictionary]:
        """One inference dictionary per model, holding copies of its raw weights."""
        out = []
        for i, (alpha, s) in enumerate(zip(self.l1s, self.seeds)):
            cfg = {**base_config, "d_in": self.d_in, "n_features": self.n_features, "ratio": self.ratio,
                   "l1": alpha, "init_seed": s}
            if self.tied:
                out.append(TiedSAE({"M": self.M[i].detach().cpu().clone(), "b": self.b[i].detach().cpu().clone()}, cfg))
            else:
                out.append(UntiedSAE({k: getattr(self, k)[i].detach().cpu().clone() for k in self.param_names()}, cfg))
        return out
