"""What a feature's direction does downstream: its logit effects through the unembedding, and its decoder neighbours.

Logit effects (the "promoted / suppressed tokens" of Neuronpedia and
sae_vis): a residual-stream direction f, added at the end of the model,
changes the logits by f · W_Uᵀ up to the final norm. As TransformerLens's
`fold_ln` does, the final norm's scale γ is folded into the unembedding
(W_U' = W_U · diag(γ), i.e. every row of W_U multiplied elementwise by γ),
so the effect of f is f · W_U'ᵀ; the norm's centring and 1/RMS are
direction-independent scalings and are left out (as they are in both tools).
Gemma's RMSNorm multiplies by (1 + w), so its γ is 1 + w.

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
    """W_U · diag(γ) [vocab, d_model] (fold_ln's W_U without the bias), float32, or None for a model with no LM head.

    None for encoders (BERT family, loaded without an LM head) and for
    families whose final norm is not in the table: a page then shows no
    logit effects rather than wrong ones.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if head is None or model_type not in _FINAL_NORMS:
        return None
    norm: nn.Module = model
    for part in _FINAL_NORMS[model_type].split("."):
        norm = getattr(norm, part)
    w_u = head.weight.detach().to(torch.float32)
    weight = getattr(norm, "weight", None)
    if weight is None:
        return w_u.clone()
    gamma = weight.detach().to(torch.float32)
    if model_type in _ONE_PLUS_WEIGHT:
        gamma = 1.0 + gamma
    return w_u * gamma


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
