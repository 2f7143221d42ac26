"""What every learned kind's training objective shares: n models of one size stepped as one module.

A stack holds n models of one kind and one dictionary size F, one per swept
value (α for the L1 kinds, k for the TopK kinds); their weights are stacked
[n, F, d] and stepped with batched matmuls, so a batch is read once for the
whole sweep. Parameters are disjoint between models, the total loss is a
plain sum, and Adam is element-wise, so each model's trajectory is the one
it would have alone. Each model's initial weights come from its own seed
derived from (seed, kind, R, value), so they do not depend on which other
models share the sweep.

Stacks train on normalised activations (x' = s·x, see `sae.train`); when
they become inference dictionaries every bias-like tensor is divided by s,
which makes encode/decode on raw activations exact (codes scale by 1/s).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


def model_seed(seed: int, kind: str, ratio: float, value: float) -> int:
    """A stable 63-bit seed for one model, independent of the rest of the sweep."""
    key = json.dumps([int(seed), kind, float(ratio), float(value)])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


def n_features_for(ratio: float, d_in: int) -> int:
    return max(1, int(round(ratio * d_in)))


def xavier(n_features: int, d_in: int, generator: torch.Generator) -> Tensor:
    w = torch.empty(n_features, d_in)
    return nn.init.xavier_uniform_(w, generator=generator)


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


@dataclass(frozen=True)
class StackOptions:
    """What an objective gets beside its sweep: its kind's own hyperparameters and the data mean.

    `kind_settings` is an instance of the kind's settings class (`sae.kind_settings`, named by its registry
    row; None: that class's defaults); `data_mean` is in normalised units.
    """

    kind_settings: Any = None
    data_mean: Tensor | None = None


class SweepStack(nn.Module):
    """Base of every learned kind's objective; `forward(x)` returns per-model tensors (loss, mse, l1 [n], c, x_hat)."""

    kind: ClassVar[str] = ""
    # tensors that scale with the input (divided by the input scale when folded into an inference dictionary)
    bias_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, d_in: int, ratio: float, values: list[float], seed: int, options: StackOptions):
        super().__init__()
        self.d_in = d_in
        self.ratio = float(ratio)
        self.n_features = n_features_for(ratio, d_in)
        self.values = [self.spec().sweep.cast(v) for v in values]
        self.seeds = [model_seed(seed, self.kind, ratio, v) for v in self.values]
        self.options = options
        if options.kind_settings is not None:
            self.kind_settings = options.kind_settings
        else:
            from sae.registry import default_settings

            self.kind_settings = default_settings(self.kind)  # this kind's own hyperparameters (or None)

    @classmethod
    def spec(cls):
        """This kind's row in `sae.registry` (its swept parameter, inference class, ...)."""
        from sae.registry import kind_spec

        return kind_spec(cls.kind)

    @property
    def sweep_key(self) -> str:
        """Config key of the swept value ("l1" or "k"), from the registry row."""
        return self.spec().sweep.key

    @property
    def l1s(self) -> list[float]:
        """The swept values under their historical name (the sweep was over α only)."""
        return self.values

    def generators(self) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(s) for s in self.seeds]

    def init_affine(self, data_mean: Tensor | None, row_norm: float = 1.0) -> None:
        """W_e, b_e, W_d, b_d of an affine SAE: decoder rows random of norm `row_norm` (one generator per model),
        the encoder their copy (its transpose, in x·W_eᵀ form), b_e zero, b_d at the data mean (or zero)."""
        n, f, d_in = len(self.values), self.n_features, self.d_in
        dec = []
        for g in self.generators():
            w = torch.randn(f, d_in, generator=g)
            w = w / w.norm(dim=-1, keepdim=True)
            dec.append(w * row_norm if row_norm != 1.0 else w)
        dec_t = torch.stack(dec)
        mean = data_mean if data_mean is not None else torch.zeros(d_in)
        self.W_e = nn.Parameter(dec_t.clone())
        self.b_e = nn.Parameter(torch.zeros(n, f))
        self.W_d = nn.Parameter(dec_t)
        self.b_d = nn.Parameter(mean.to(torch.float32).expand(n, d_in).clone())

    @property
    def free_decoder(self) -> bool:
        """`--decoder-norm free` (kinds whose settings have it): decoder row norms learned, as SAELens trains,
        and folded into the encoder at save (`fold_row_norms`), rather than held at 1."""
        return getattr(self.kind_settings, "decoder_norm", "unit") == "free"

    def param_names(self) -> list[str]:
        return [name for name, _ in self.named_parameters()]

    # hooks the sweep loop calls around each optimiser step
    def before_update(self) -> None:
        """After backward, before the optimiser step (e.g. remove gradient components)."""

    def after_update(self) -> None:
        """After the optimiser step (e.g. renormalise decoder rows)."""

    def at_step(self, step: int, total: int) -> None:
        """Before step `step` (0-based) of `total`: a schedule of the objective's own (e.g. a coefficient's
        warm-up). A function of the step alone, so a resumed run follows it too; a tensor it changes must be
        changed in place (a replayed CUDA graph reads that memory)."""

    def inference_tensors(self, i: int) -> dict[str, Tensor]:
        """Model i's tensors as its inference class stores them (normalised units)."""
        return {name: getattr(self, name)[i] for name in self.param_names()}

    def inference_config(self, i: int) -> dict:
        return {}

    def inference_class(self) -> type:
        from sae.registry import kind_class

        return kind_class(self.kind)

    @torch.no_grad()
    def dictionaries(self, base_config: dict, input_scale: float = 1.0) -> list:
        """One inference dictionary per model, holding copies of its weights, folded to raw input units."""
        out = []
        for i, (value, s) in enumerate(zip(self.values, self.seeds)):
            tensors = {k: v.detach().cpu().clone() for k, v in self.inference_tensors(i).items()}
            for name in self.bias_names:
                tensors[name] = tensors[name] / input_scale
            cfg = {**base_config, "d_in": self.d_in, "n_features": self.n_features, "ratio": self.ratio,
                   self.sweep_key: value, "init_seed": s, **self.inference_config(i)}
            out.append(self.inference_class()(tensors, cfg))
        return out


def batched_top_k(pre: Tensor, ks: Tensor, k_max: int) -> Tensor:
    """Per model i keep the ks[i] largest of ReLU(pre[i]) per row; pre [n, B, F], ks [n] (long)."""
    values, index = torch.relu(pre).topk(k_max, dim=-1, sorted=True)
    keep = torch.arange(k_max, device=pre.device) < ks.view(-1, 1, 1)
    return torch.zeros_like(pre).scatter(-1, index, values * keep)


def sparse_decode(values: Tensor, index: Tensor, w_dec: Tensor, ks: list[int]) -> Tensor:
    """Σ_j values[i, b, j] · w_dec[i, index[i, b, j]] over each model's first ks[i] slots: [n, B, d].

    The same sum as `codes @ w_dec` with the dense [n, B, F] codes, but it
    touches only the k active rows per token, forward and backward (the
    decoder's gradient is a scatter-add of k rows per token, the codes'
    gradient k dot products), as sparsify's embedding_bag decoder does. With
    k ≤ 100 of 1,152 latents that is most of a TopK step's arithmetic saved.
    """
    return torch.stack([torch.nn.functional.embedding_bag(index[i, :, :k], w_dec[i], per_sample_weights=values[i, :, :k],
                                                          mode="sum") for i, k in enumerate(ks)])


def capturing_graph(t: Tensor) -> bool:
    """Whether `t`'s device is being captured into a CUDA graph right now (then nothing may read it back)."""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


SAELENS_DECODER_INIT_NORM = 0.1  # SAELens's decoder_init_norm: where its free decoder rows start


def fold_row_norms(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
    """A model trained with free decoder row norms, saved with unit rows: each norm n moves into the encoder
    row and b_e (codes n·p), and the decoder row is divided by it, so x̂ is unchanged. Returns the folded
    tensors and the norms (a threshold on p becomes n·θ)."""
    norms = tensors["W_d"].norm(dim=-1).clamp_min(1e-12)
    return {**tensors, "W_e": tensors["W_e"] * norms[:, None], "b_e": tensors["b_e"] * norms,
            "W_d": tensors["W_d"] / norms[:, None]}, norms


def auxk_fvu(pre: Tensor, since_fired: Tensor, dead_tokens: int, w_dec: Tensor, residual: Tensor,
             variance: Tensor, k_aux: int) -> Tensor:
    """AuxK loss of Gao et al. (2024) per model [n]: the dead latents' top-k_aux reconstruct the residual.

    `residual` = x − x̂ (detached: only the dead latents learn from it),
    normalised by the data's variance like the main loss, and scaled by
    min(#dead / k_aux, 1) as EleutherAI/sparsify does, so a sweep member
    with few dead latents is not pushed by a loss most of whose slots are
    empty. Zero for a model without dead latents.
    """
    dead = since_fired >= dead_tokens  # [n, F]
    n_dead = dead.sum(-1)
    # the early exit reads the GPU; while a CUDA graph is captured it cannot, and the loss below is 0 anyway
    # when nothing is dead (every value masked to -inf -> 0, scale 0)
    if not capturing_graph(pre) and not bool(n_dead.any()):
        return torch.zeros(pre.shape[0], device=pre.device)
    k = max(1, min(k_aux, pre.shape[-1]))
    masked = torch.where(dead.unsqueeze(1), pre, torch.full_like(pre, -torch.inf))
    values, index = masked.topk(k, dim=-1)
    e_hat = sparse_decode(torch.relu(torch.nan_to_num(values, neginf=0.0)), index, w_dec, [k] * pre.shape[0])
    loss = (e_hat - residual).pow(2).sum(dim=(1, 2)) / variance
    scale = (n_dead.float() / k).clamp(max=1.0)
    return torch.nan_to_num(loss * scale)
