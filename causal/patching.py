"""Feature patching at one hook, and the KL metric, for IOI prompt pairs.

The edit at every position is x' = x + Σ_{j∈F} (c̄_j − c_j) f_j, with c from
the clean run, c̄ from the counterfactual run and f_j feature j's *decoder*
contribution. For a dictionary whose decode is affine, decode(c) = c·W + b,
this is exactly x + decode(c̄ ⊙ m) − decode(c ⊙ m): the bias cancels and
the reconstruction error x − decode(c) stays in x'. Every dictionary kind of
the toolkit decodes affinely (it is what makes "feature j's contribution"
well defined), and `decoder_rows` checks it, so W = decode(I) − decode(0)
gives the f_j and an edit is one matrix product.

Prompts are right-padded and run without an attention mask: with causal
attention a real token never sees the padding to its right, so each
prompt's real positions are computed exactly as if it ran alone, and the
logits are read at each prompt's own last real position.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from common.errors import UserError
from activations.hooks import hooks_installed, run_with_cache
from causal.prompts import IOIPair


class PatchingError(UserError):
    """A dictionary that cannot be used for feature patching at this model's hook."""


@dataclass
class PairBatch:
    """IOI pairs as padded tensors on the model's device."""

    clean_ids: Tensor  # [N, T] long, right-padded
    cf_ids: Tensor  # [N, T]
    lengths: Tensor  # [N] real lengths (equal for clean and counterfactual)
    valid: Tensor  # [N, T] bool: t < length
    io_ids: Tensor  # [N]
    s_ids: Tensor  # [N]
    cf_io_ids: Tensor  # [N]

    @property
    def n(self) -> int:
        return int(self.clean_ids.shape[0])

    @property
    def last(self) -> Tensor:
        return self.lengths - 1

    @property
    def differs(self) -> Tensor:
        """[N, T] bool: real positions at or after the first token where clean and counterfactual differ.

        Before that position both runs have seen the same tokens, so by
        causality their activations are identical; c̄ − c is set to exactly
        zero there instead of keeping floating-point noise.
        """
        diff = (self.clean_ids != self.cf_ids) & self.valid
        return (diff.cumsum(dim=1) > 0) & self.valid


def pair_batch(pairs: list[IOIPair], pad_id: int, device: str | torch.device = "cpu") -> PairBatch:
    n, t = len(pairs), max(len(p.clean_ids) for p in pairs)
    clean = torch.full((n, t), pad_id, dtype=torch.long)
    cf = torch.full((n, t), pad_id, dtype=torch.long)
    for i, p in enumerate(pairs):
        if len(p.clean_ids) != len(p.cf_ids):
            raise PatchingError(f"pair {i} has clean and counterfactual prompts of different token lengths: regenerate the pairs")
        clean[i, : len(p.clean_ids)] = torch.tensor(p.clean_ids)
        cf[i, : len(p.cf_ids)] = torch.tensor(p.cf_ids)
    lengths = torch.tensor([len(p.clean_ids) for p in pairs])
    valid = torch.arange(t)[None, :] < lengths[:, None]
    ids = lambda attr: torch.tensor([getattr(p, attr) for p in pairs])  # noqa: E731
    return PairBatch(clean.to(device), cf.to(device), lengths.to(device), valid.to(device),
                     ids("io_id").to(device), ids("s_id").to(device), ids("cf_io_id").to(device))


def pad_token_id(tokenizer) -> int:
    """Any real token works as padding (nothing reads it); prefer the tokenizer's own."""
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


@torch.no_grad()
def last_logits(model, input_ids: Tensor, lengths: Tensor, edits: dict | None = None) -> Tensor:
    """Next-token logits [N, V] at each prompt's last real position (lm_head only there)."""
    keep = (lengths - 1)[:, None]
    with hooks_installed(model, edits or {}):
        out = model(input_ids=input_ids, use_cache=False, logits_to_keep=keep)
    return out.logits[:, 0].float()


def kl_rows(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(p ‖ q) = Σ p (log p − log q) per row, in float64 (τ goes down to 1e-5)."""
    lp = torch.log_softmax(p_logits.double(), dim=-1)
    lq = torch.log_softmax(q_logits.double(), dim=-1)
    return (lp.exp() * (lp - lq)).sum(dim=-1)


@dataclass
class TaskCheck:
    logit_diff: float  # mean over prompts of logit(IO) − logit(S), clean prompts
    accuracy: float  # fraction of clean prompts with logit(IO) > logit(S)
    top1_accuracy: float  # fraction of clean prompts whose top next token is IO
    io_prob: float  # mean probability of IO
    cf_logit_diff: float  # counterfactual: logit(C) − logit(S)
    kl_clean_vs_cf: float  # mean KL(clean ‖ counterfactual): the unpatched distance
    # per clean prompt, in prompt order: the means above hide which prompts the model gets wrong
    per_prompt_logit_diff: list[float] = field(default_factory=list)
    per_prompt_correct: list[bool] = field(default_factory=list)  # logit(IO) > logit(S)

    @property
    def does_ioi(self) -> bool:
        return self.logit_diff > 0

    @property
    def per_prompt(self) -> list[list]:
        """[[logit_diff, correct], ...], one row per clean prompt (the ioi.json layout)."""
        return [[d, c] for d, c in zip(self.per_prompt_logit_diff, self.per_prompt_correct)]


def task_check(batch: PairBatch, clean_logits: Tensor, cf_logits: Tensor) -> TaskCheck:
    rows = torch.arange(batch.n, device=clean_logits.device)
    io = clean_logits[rows, batch.io_ids]
    s = clean_logits[rows, batch.s_ids]
    probs = torch.softmax(clean_logits.double(), dim=-1)
    cf_diff = cf_logits[rows, batch.cf_io_ids] - cf_logits[rows, batch.s_ids]
    diff = (io - s).float()
    return TaskCheck(
        logit_diff=float(diff.mean()),
        accuracy=float((io > s).float().mean()),
        top1_accuracy=float((clean_logits.argmax(-1) == batch.io_ids).float().mean()),
        io_prob=float(probs[rows, batch.io_ids].mean()),
        cf_logit_diff=float(cf_diff.mean()),
        kl_clean_vs_cf=float(kl_rows(clean_logits, cf_logits).mean()),
        per_prompt_logit_diff=[float(v) for v in diff.cpu()],
        per_prompt_correct=[bool(v) for v in (io > s).cpu()],
    )


@torch.no_grad()
def decoder_rows(dictionary, device: str | torch.device = "cpu", chunk: int = 1024) -> Tensor:
    """W [F, d] with decode(c) = c·W + decode(0); raises PatchingError if decode is not affine.

    Feature j's contribution to x is then c_j·W_j, whatever the kind (tied
    SAE, untied SAE with a decoder bias, PCA with a mean, neuron basis).
    """
    f = int(dictionary.n_features)
    zero = torch.zeros(1, f)
    bias = dictionary.decode(zero).float().reshape(-1).cpu()
    rows = []
    for start in range(0, f, chunk):
        eye = torch.zeros(min(chunk, f - start), f)
        eye[:, start : start + eye.shape[0]] = torch.eye(eye.shape[0])
        rows.append(dictionary.decode(eye).float().cpu() - bias)
    w = torch.cat(rows)
    gen = torch.Generator().manual_seed(0)
    probe = torch.relu(torch.randn(4, f, generator=gen))
    expected = probe @ w + bias
    got = dictionary.decode(probe).float().cpu()
    scale = float(expected.abs().max()) + 1e-6
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * scale):
        name = getattr(dictionary, "name", type(dictionary).__name__)
        raise PatchingError(
            f"dictionary {name!r} does not decode affinely (decode(c) != c·W + b), so a feature's "
            "contribution is undefined: feature patching needs a linear-plus-bias decoder"
        )
    return w.to(device)


@torch.no_grad()
def coefficient_delta(dictionary, x_clean: Tensor, x_cf: Tensor, differs: Tensor, device) -> Tensor:
    """c̄ − c [N, T, F] at the hook, exactly zero where the two prompts share their prefix and at padding."""
    c = dictionary.encode(x_clean.float().cpu()).float()
    c_bar = dictionary.encode(x_cf.float().cpu()).float()
    delta = (c_bar - c).to(device)
    return delta * differs[..., None].to(delta.dtype)


def edit_norm(edit: Tensor, valid: Tensor) -> float:
    """Mean over prompts and real positions of ‖x' − x‖₂ (as the reference code measures the edit)."""
    norms = edit.norm(dim=-1)
    return float(norms[valid].mean())
