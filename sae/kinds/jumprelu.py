"""JumpReLU training (Rajamanoharan et al. 2024), as SAELens trains it; inference is `threshold.JumpReLUSAE`.

c_j = p_j · H(p_j − θ_j) with p = W_e(x − b_d) + b_e (the pre-encoder bias b_d
is subtracted first) and one threshold θ_j = exp(t_j) per latent. The loss is
SAELens's: ‖x − x̂‖² summed over dimensions, mean over the batch, + λ·L0, with
L0 = Σ_j H(p_j − θ_j). The step H has no useful derivative, so the thresholds
learn through a straight-through estimator: in backward, H's derivative in θ is
replaced by a rectangle kernel of width ε around θ (−(1/ε)·K((p − θ)/ε) for
the L0 term, −(θ/ε)·K((p − θ)/ε) for the codes); the encoder gets the
ordinary gradient of the kept codes, and none from the L0 term (as SAELens).

λ is the swept value (`--l0-coefficient`), warmed up linearly over the first
`--l0-warmup` of the steps; θ starts at `--jumprelu-init-threshold` and ε is
`--jumprelu-bandwidth` (SAELens's names and defaults, in the same units: its
inputs are normalised to E‖x‖ = √d, as ours are). As in SAELens the decoder
rows are free (initialised at norm 0.1, the encoder at the decoder's
transpose); the saved dictionary folds their norms into the encoder and the
thresholds, which a JumpReLU allows exactly. Differences: b_d starts at the
data mean (SAELens: zero), as for every kind here; and SAELens's optional
pre-activation loss on dead latents is on by default, with a stronger weight
and a window that is a share of the run (`JumpReLUSettings`): without it a
latent whose threshold starts above its pre-activations never fires again.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from sae.kinds.stack import SAELENS_DECODER_INIT_NORM, StackOptions, SweepStack, fold_row_norms



def _near(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """The rectangle kernel K((p − θ)/ε): 1 where |p − θ| < ε/2."""
    return (((pre - threshold) / bandwidth).abs() < 0.5).to(pre.dtype)


class _JumpReLU(torch.autograd.Function):
    """p·H(p − θ); backward: the kept codes' gradient to p, and −(θ/ε)·K·g summed over the batch to θ."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        th = threshold.unsqueeze(1)  # [n, 1, F] against pre [n, B, F]
        ctx.save_for_backward(pre, th)
        ctx.bandwidth = bandwidth
        return pre * (pre > th).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, th = ctx.saved_tensors
        near = _near(pre, th, ctx.bandwidth)
        grad_threshold = -(th / ctx.bandwidth * near * grad).sum(1)
        return grad * (pre > th).to(grad.dtype), grad_threshold, None


class _Step(torch.autograd.Function):
    """H(p − θ); backward: nothing to p, −(1/ε)·K·g summed over the batch to θ."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        th = threshold.unsqueeze(1)
        ctx.save_for_backward(pre, th)
        ctx.bandwidth = bandwidth
        return (pre > th).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        pre, th = ctx.saved_tensors
        return None, -(_near(pre, th, ctx.bandwidth) * grad).sum(1) / ctx.bandwidth, None


class JumpReLUStack(SweepStack):
    kind = "jumprelu"
    bias_names = ("b_e", "b_d", "threshold")

    def __init__(self, d_in: int, ratio: float, values: list[float], seed: int,
                 options: StackOptions = StackOptions()):
        super().__init__(d_in, ratio, values, seed, options)
        n, f = len(self.values), self.n_features
        knobs = self.kind_settings
        self.init_affine(options.data_mean, row_norm=SAELENS_DECODER_INIT_NORM)
        # log θ = speed · t with t the parameter: Adam moves t by about the learning rate per step, so the
        # thresholds learn `speed` times faster than the weights (the same as a larger lr for them alone)
        self.threshold_speed = float(knobs.jumprelu_threshold_speed)
        self.log_threshold = nn.Parameter(torch.full((n, f), math.log(knobs.jumprelu_init_threshold) / self.threshold_speed))
        self.bandwidth = float(knobs.jumprelu_bandwidth)
        self.register_buffer("coefficient", torch.tensor(self.values, dtype=torch.float32), persistent=False)
        # the warm-up's share of λ at this step (`at_step`); a tensor, changed in place, for CUDA-graph replay
        self.register_buffer("warmup_factor", torch.ones(()), persistent=False)
        # tokens since each latent last fired: which latents the pre-activation loss acts on (checkpointed)
        self.register_buffer("since_fired", torch.zeros(n, f))

    def at_step(self, step: int, total: int) -> None:
        warm = int(round(self.kind_settings.l0_warmup * total))
        self.warmup_factor.fill_(min(1.0, (step + 1) / warm) if warm else 1.0)

    def thresholds(self) -> Tensor:
        """θ for every model and latent: [n, F]."""
        return (self.log_threshold * self.threshold_speed).exp()

    def pre_activations(self, x: Tensor) -> Tensor:
        """p = W_e(x − b_d) + b_e for every model: [n, B, F] (the b_d term as one matrix-vector product)."""
        n, batch = len(self.values), x.shape[0]
        w_t = self.W_e.transpose(1, 2)
        bias = self.b_e - torch.bmm(self.b_d.unsqueeze(1), w_t).squeeze(1)
        return torch.baddbmm(bias.unsqueeze(1), x.unsqueeze(0).expand(n, batch, self.d_in), w_t)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        batch = x.shape[0]
        pre = self.pre_activations(x)
        threshold = self.thresholds()
        c = _JumpReLU.apply(pre, threshold, self.bandwidth)
        x_hat = torch.baddbmm(self.b_d.unsqueeze(1), c, self.W_d)
        err = x_hat - x.unsqueeze(0)
        squared = err.pow(2).sum(dim=(1, 2)) / batch  # summed over dimensions, mean over rows (SAELens's mse_loss)
        l0 = _Step.apply(pre, threshold, self.bandwidth).sum(dim=(1, 2)) / batch
        loss = squared + self.coefficient * self.warmup_factor * l0 + self.pre_act_loss(pre, threshold)
        if self.training:
            with torch.no_grad():
                self.since_fired.add_(batch).masked_fill_((c > 0).any(dim=1), 0)
        return {"loss": loss, "mse": err.pow(2).mean(dim=(1, 2)),
                "l1": c.sum(dim=(1, 2)) / batch, "l0": l0.detach(), "c": c, "x_hat": x_hat}

    def pre_act_loss(self, pre: Tensor, threshold: Tensor) -> Tensor:
        """Per model [n]: weight · mean over rows of Σ_dead ‖d_j‖·relu(θ_j − p_j) (SAELens's `pre_act_loss`).

        A dead latent's codes are zero and its pre-activations lie outside the threshold's kernel, so
        nothing else sends it gradient: without this term a threshold that starts above a latent's
        pre-activations keeps it dead for good (a third of the latents on SmolLM2's layer 3)."""
        weight, window = float(self.kind_settings.pre_act_loss), self.kind_settings.pre_act_dead_tokens
        if weight == 0 or window is None:  # None: a share of a run this stack was not given (train_sweep resolves it)
            return pre.new_zeros(len(self.values))
        # computed whether or not any latent is dead: no host sync, so a CUDA graph can replay the step
        dead = self.since_fired >= window  # [n, F]
        gap = torch.relu(threshold.unsqueeze(1) - pre)  # [n, B, F]
        per_latent = gap.sum(1) / pre.shape[1]  # [n, F], mean over rows
        return weight * (per_latent * dead * self.W_d.norm(dim=-1)).sum(-1)

    def inference_tensors(self, i: int) -> dict[str, Tensor]:
        """Decoder row norms folded into the encoder and the threshold (exact: p > θ ⇔ n·p > n·θ for n > 0)."""
        folded, norms = fold_row_norms({name: getattr(self, name)[i] for name in ("W_e", "b_e", "W_d", "b_d")})
        return {**folded, "threshold": self.thresholds()[i] * norms}
