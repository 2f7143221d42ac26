"""Threshold SAEs: BatchTopK (Bussmann et al. 2024; inference form and objective) and JumpReLU (Rajamanoharan et al. 2024).

Both encode per token as c_j = p_j · [p_j > θ_j] with p = W_e(x − b_d) + b_e:
BatchTopK (and Matryoshka BatchTopK, `sae.kinds.matryoshka`) learns one θ for
all features during training (the mean of the smallest activation its
batch-level top-k kept), so a trained BatchTopK SAE needs no batch at
inference; JumpReLU (trained here by `sae.kinds.jumprelu`, or loaded from
SAELens, e.g. Gemma Scope) has one θ per feature. θ ≥ 0 keeps every code non-negative, as the
`Dictionary` protocol requires.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sae.errors import DictionaryError
from sae.kinds.affine import AffineDictionary, folded_bias, top_k, unit_rows
from sae.kinds.stack import StackOptions, fold_row_norms
from sae.kinds.topk import TopKStack


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

    def __init__(self, tensors, config, name: str = ""):
        super().__init__(tensors, config, name)
        # config `k` is the batch-average L0 it was trained for; inference uses the threshold alone
        self.k = None


class BatchTopKStack(TopKStack):
    """BatchTopK training (Bussmann et al. 2024): the k·B largest activations of the whole batch survive.

    Tokens can use more or fewer than k latents as long as the batch average
    is k. The inference threshold θ is a running mean of the smallest
    activation the batch-level top-k kept, so a trained model encodes one
    token at a time with c = p·[p > θ].
    """

    kind = "batchtopk"
    bias_names = ("b_e", "b_d", "threshold")
    momentum = 0.99

    def __init__(self, d_in: int, ratio: float, values: list[float], seed: int,
                 options: StackOptions = StackOptions()):
        super().__init__(d_in, ratio, values, seed, options)
        self.register_buffer("theta", torch.full((len(self.values),), -1.0))  # < 0: not estimated yet

    def initial_row_norm(self) -> float:
        return float(self.kind_settings.decoder_init_norm) if self.free_decoder else 1.0

    def row_norms(self) -> Tensor:
        """‖W_d‖ per latent, [n, 1, F]: codes are pre-activation × norm, the decoder reads code / norm."""
        return self.W_d.norm(dim=-1).clamp_min(1e-12).unsqueeze(1)

    def decoder_inputs(self, c: Tensor) -> Tensor:
        """What multiplies W_d: the codes, divided by the row norms when these are free (then c·W_d/‖W_d‖ is
        the reconstruction of a dictionary whose rows are unit and whose codes are c)."""
        return c / self.row_norms() if self.free_decoder else c

    def codes_and_reconstruction(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """Dense: a token keeps however many latents the batch-wide top k·batch gives it, so there is no fixed k
        per row for `sparse_decode`."""
        if not self.free_decoder:
            c = self.codes(pre)
            return c, torch.baddbmm(self.b_d.unsqueeze(1), c, self.W_d)
        norms = self.row_norms()
        c = self.codes(pre * norms)
        return c, torch.baddbmm(self.b_d.unsqueeze(1), c / norms, self.W_d)

    @torch.no_grad()
    def before_update(self) -> None:
        if not self.free_decoder:
            super().before_update()

    @torch.no_grad()
    def after_update(self) -> None:
        if not self.free_decoder:
            super().after_update()

    def codes(self, pre: Tensor) -> Tensor:
        batch = pre.shape[1]
        relu = torch.relu(pre)
        out = []
        for i, k in enumerate(self.values):
            flat = relu[i].reshape(-1)
            values, index = flat.topk(min(flat.numel(), int(k) * batch), sorted=False)
            out.append(torch.zeros_like(flat).scatter(0, index, values).view_as(relu[i]))
            if self.training:  # without a host sync (no boolean indexing), so a CUDA graph can replay the step
                with torch.no_grad():
                    positive = values > 0
                    low = torch.where(positive, values, torch.full_like(values, torch.inf)).min()
                    average = self.momentum * self.theta[i] + (1 - self.momentum) * low
                    moved = torch.where(self.theta[i] < 0, low, average)
                    self.theta[i] = torch.where(positive.any(), moved, self.theta[i])
        return torch.stack(out)

    def inference_tensors(self, i: int) -> dict[str, Tensor]:
        tensors = super().inference_tensors(i)
        tensors["threshold"] = self.theta[i].clamp_min(0).expand(self.n_features).clone()
        # free norms: θ was learned on n·p, the folded codes, so it stays as it is
        return fold_row_norms(tensors)[0] if self.free_decoder else tensors


class JumpReLUSAE(ThresholdSAE):
    kind = "jumprelu"
