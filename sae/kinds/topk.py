"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per token; inference form and objective.

Same affine shape as the untied SAE (c = TopK(ReLU(W_e(x − b_d) + b_e)),
x̂ = c·W_d + b_d); k is part of the dictionary (config `k`), so encode is
per token and needs no batch.

Training follows Gao et al. and EleutherAI/sparsify: loss = FVU + α_aux·AuxK
(dead latents reconstruct the residual), decoder bias initialised at the
data mean, encoder initialised to the decoder's transpose, decoder rows kept
at unit norm (the gradient's component along each row is removed before the
step and rows are renormalised after it, so Adam cannot grow the norm and
shrink the codes instead of learning).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sae.errors import DictionaryError
from sae.kinds.stack import StackOptions, SweepStack, auxk_fvu, batched_top_k
from sae.kinds.untied import UntiedSAE


def batch_variance(x: Tensor) -> Tensor:
    """The TopK objective's normaliser: the batch's total variance (data-parallel training weighs ranks by it)."""
    return (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)


class TopKSAE(UntiedSAE):
    kind = "topk"

    def __init__(self, tensors, config, name: str = ""):
        super().__init__(tensors, config, name)
        if self.k is None or self.k < 1:
            raise DictionaryError(f"{self.name}: a topk dictionary needs a positive `k` in config.json; re-create it")


class TopKStack(SweepStack):
    kind = "topk"
    bias_names = ("b_e", "b_d")

    def __init__(self, d_in: int, ratio: float, values: list[float], seed: int,
                 options: StackOptions = StackOptions()):
        super().__init__(d_in, ratio, values, seed, options)
        n, f = len(self.values), self.n_features
        if any(k < 1 or k > f for k in self.values):
            raise ValueError(f"k values {self.values} must lie in 1..{f}")
        self.init_affine(options.data_mean, row_norm=self.initial_row_norm())
        self.register_buffer("k_values", torch.tensor(self.values, dtype=torch.long), persistent=False)
        # tokens since each latent last fired: the dead-latent counter AuxK reads (checkpointed as extra state)
        self.register_buffer("since_fired", torch.zeros(n, f))

    def initial_row_norm(self) -> float:
        """Where the decoder rows (and the encoder, their copy) start: 1 (free norms: `decoder_init_norm`)."""
        return 1.0

    def codes(self, pre: Tensor) -> Tensor:
        return batched_top_k(pre, self.k_values, max(self.values))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        n, batch = len(self.values), x.shape[0]
        xs = x.unsqueeze(0).expand(n, batch, self.d_in)
        # W_e(x − b_d) + b_e written as W_e·x + (b_e − W_e·b_d): the same numbers, but the gradient to b_d is then a
        # matrix-vector product instead of a second dense [batch × d × F] product through x − b_d
        w_t = self.W_e.transpose(1, 2)
        pre = torch.baddbmm((self.b_e - torch.bmm(self.b_d.unsqueeze(1), w_t).squeeze(1)).unsqueeze(1), xs, w_t)
        c, x_hat = self.codes_and_reconstruction(pre)
        err = x_hat - xs
        variance = batch_variance(x)
        fvu = err.pow(2).sum(dim=(1, 2)) / variance
        aux = self.auxk(pre, c, err, variance)
        if self.training:
            with torch.no_grad():
                fired = (c > 0).any(dim=1)
                self.since_fired.add_(batch).masked_fill_(fired, 0)
        return {"loss": fvu + self.kind_settings.auxk_alpha * aux, "mse": err.pow(2).mean(dim=(1, 2)),
                "l1": c.sum(dim=(1, 2)) / batch, "aux": aux, "c": c, "x_hat": x_hat}

    def auxk(self, pre: Tensor, c: Tensor, err: Tensor, variance: Tensor) -> Tensor:
        """The AuxK loss per model [n]: the dead latents reconstruct the whole dictionary's residual."""
        return auxk_fvu(pre, self.since_fired, self.kind_settings.dead_tokens, self.W_d, (-err).detach(), variance,
                        k_aux=self.d_in // 2)

    def codes_and_reconstruction(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """(c, x̂): the gradient flows through the k kept values into x̂ by the sparse decoder (`sparse_decode`'s
        embedding_bag); the dense codes c are built without gradient, for L0 and the dead-latent counter only."""
        relu = torch.relu(pre)
        x_hats, c = [], torch.zeros_like(pre, requires_grad=False)
        for i, k in enumerate(self.values):  # each model its own k: a top-10 is much cheaper than a top-100
            values, index = relu[i].topk(k, dim=-1, sorted=False)
            x_hats.append(torch.nn.functional.embedding_bag(index, self.W_d[i], per_sample_weights=values, mode="sum"))
            with torch.no_grad():
                c[i].scatter_(-1, index, values)
        return c, torch.stack(x_hats) + self.b_d.unsqueeze(1)

    @torch.no_grad()
    def before_update(self) -> None:
        grad = self.W_d.grad
        if grad is not None:
            parallel = torch.linalg.vecdot(grad, self.W_d).unsqueeze(-1)
            grad.sub_(parallel * self.W_d)

    @torch.no_grad()
    def after_update(self) -> None:
        self.W_d.div_(self.W_d.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    def inference_tensors(self, i: int) -> dict[str, Tensor]:
        return {name: getattr(self, name)[i] for name in ("W_e", "b_e", "W_d", "b_d")}
