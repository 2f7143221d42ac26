"""What a feature's direction does downstream: its logit effects through the unembedding, and its decoder neighbours.

Logit effects (the "promoted / suppressed tokens" of Neuronpedia and
sae_vis): what adding a residual-stream direction f at the end of the model
does to the logits through the final norm and the unembedding W_U. The
norm's scale γ is folded into W_U (u_t = W_U[t] ⊙ γ, every row multiplied
elementwise by γ). For LayerNorm families (GPT-2, GPT-NeoX/Pythia) the norm
also subtracts the mean over d_model first, and that centring is a linear
projection that f goes through too: the effect is u_t · (f - mean(f)) =
(u_t - mean_d(u_t)) · f, so each row u_t is centred over d_model. Without
it the values are off by mean(f)·Σ_d u_t, a per-token term that reorders
the tokens (tiny random GPT-2 / GPT-NeoX with random γ, 4 directions:
correlation 0.41-0.87 with a finite difference through the real norm and
head, against 0.99999 centred). RMSNorm families (Llama, Mistral, Qwen2,
Gemma) do not centre, so their rows are W_U ⊙ γ only; Gemma's RMSNorm
multiplies by (1 + w), so its γ is 1 + w. Left out: the 1/σ (1/RMS), a
positive scale per token that multiplies all of f's effects alike and so
changes no ranking, and the first-order change of σ itself, a term whose
logit pattern is the context's own (it lies along the token's normalised
residual, scaled by f's overlap with it) and which averages over isotropic
residuals to a multiple of the effect above. The norm's bias β and the
head's bias do not depend on f and cancel.

This is what TransformerLens's `fold_ln` step (`fold_layer_norm`) does to
the unembedding: `W_U * ln_final.w[:, None]` and, for LayerNorm models
(`center_weights=True`), subtracting each token column's mean over d_model
("center the weights that read in from the LayerNormPre"); for RMSNorm
models it folds the scale only. TransformerLens's `center_unembed` is a
different centring, over the vocabulary, a shift of all logits that changes
no ranking, and is not applied here.

Both products are [n_features × vocab] and [n_features × n_features]: for
10k features and a 49k vocabulary that is 2 GB, so they are computed in
batches of features and only the top-k of each row is kept (memory
[batch × vocab]). This module takes a loaded model object and never loads
one itself (`sae/` reads no models), so the caller decides where it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

# model_type -> dotted path of the final norm inside the *CausalLM model; Gemma's RMSNorm scales by (1 + w)
_FINAL_NORMS: dict[str, str] = {
    "gpt_neox": "gpt_neox.final_layer_norm",
    "gpt2": "transformer.ln_f",
    "llama": "model.norm",
    "mistral": "model.norm",
    "qwen2": "model.norm",
    "gemma": "model.norm",
    "gemma2": "model.norm",
    "gemma3_text": "model.norm",
}
_ONE_PLUS_WEIGHT = ("gemma", "gemma2", "gemma3_text")


def unembedding(model: nn.Module) -> Tensor | None:
    """The final norm folded into W_U [vocab, d_model], float32 (TransformerLens's fold_ln W_U without the bias),
    or None for a model with no LM head.

    Rows are W_U ⊙ γ, centred over d_model when the final norm is a
    LayerNorm (see the module docstring). The family is read from the norm
    module's type, not from a list of names: `nn.LayerNorm` centres (GPT-2,
    GPT-NeoX), the RMSNorm classes do not. None for encoders (BERT family,
    loaded without an LM head) and for families whose final norm is not in
    the table: a page then shows no logit effects rather than wrong ones.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if head is None or model_type not in _FINAL_NORMS:
        return None
    norm: nn.Module = model
    for part in _FINAL_NORMS[model_type].split("."):
        norm = getattr(norm, part)
    u = head.weight.detach().to(torch.float32).clone()
    weight = getattr(norm, "weight", None)
    if weight is not None:
        gamma = weight.detach().to(torch.float32)
        u = u * (1.0 + gamma if model_type in _ONE_PLUS_WEIGHT else gamma)
    if isinstance(norm, nn.LayerNorm):  # LayerNorm centres its input over d_model; RMSNorm does not
        u = u - u.mean(dim=1, keepdim=True)
    return u


@dataclass
class TopK:
    """Per row: the k largest (`top_*`) and k smallest (`bottom_*`) entries of a product, by column id."""

    top_values: Tensor  # [n, k], descending
    top_ids: Tensor
    bottom_values: Tensor  # [n, k], ascending (most suppressed first)
    bottom_ids: Tensor


def batched_topk(a: Tensor, b: Tensor, k: int, batch: int = 256, bottom: bool = True,
                 exclude_self: bool = False) -> TopK:
    """Top-k (and bottom-k) of each row of a @ bᵀ without materialising it: rows of `a` go `batch` at a time.

    `exclude_self` (a and b the same rows) leaves each row's own column out, for neighbours.
    """
    n, m = a.shape[0], b.shape[0]
    k = max(0, min(k, m - (1 if exclude_self else 0)))
    empty = torch.empty((n, k))
    out = TopK(empty.clone(), empty.long(), empty.clone(), empty.long())
    if n == 0 or k == 0:
        return out
    a, b = a.to(torch.float32), b.to(torch.float32)
    with torch.no_grad():
        for s in range(0, n, max(1, batch)):
            prod = a[s:s + batch] @ b.T
            if exclude_self:
                rows = torch.arange(prod.shape[0])
                prod[rows, rows + s] = float("-inf")
            out.top_values[s:s + batch], out.top_ids[s:s + batch] = prod.topk(k, dim=1)
            if bottom:
                if exclude_self:
                    prod[rows, rows + s] = float("inf")
                values, ids = prod.topk(k, dim=1, largest=False)
                out.bottom_values[s:s + batch], out.bottom_ids[s:s + batch] = values, ids
    return out


def logit_effects(directions: Tensor, unembed: Tensor, k: int, batch: int = 256) -> TopK:
    """The k tokens each direction promotes most (top) and suppresses most (bottom): directions @ unembedᵀ.

    `directions` [n, d_model], `unembed` [vocab, d_model] as `unembedding` gives it;
    memory is batch × vocab floats at a time.
    """
    if directions.shape[1] != unembed.shape[1]:
        raise ValueError(f"directions have width {directions.shape[1]} but the unembedding has {unembed.shape[1]}")
    return batched_topk(directions, unembed, k, batch)


def decoder_neighbours(directions: Tensor, rows: int, k: int, batch: int = 1024) -> tuple[Tensor, Tensor]:
    """(cosines [rows, k], feature ids [rows, k]): the k other features nearest to each of the first `rows` features.

    `directions` are the dictionary's unit decoder rows, so the product is
    the cosine; every feature of the dictionary is a candidate neighbour.
    """
    unit = directions.to(torch.float32)
    unit = unit / unit.norm(dim=1, keepdim=True).clamp_min(1e-12)  # the protocol says unit rows; do not rely on it
    found = batched_topk(unit[:rows], unit, k, batch, bottom=False, exclude_self=True)
    return found.top_values, found.top_ids
