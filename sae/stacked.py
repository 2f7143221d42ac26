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
            dec = self.M / self.M.norm(dim=-1, keepdim=True)
            pre = torch.baddbmm(self.b.unsqueeze(1), xs, dec.transpose(1, 2))
            c = torch.relu(pre)
            x_hat = torch.bmm(c, dec)
        else:
            dec = self.W_d / self.W_d.norm(dim=-1, keepdim=True)
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
