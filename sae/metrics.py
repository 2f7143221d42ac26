"""How good a dictionary is: reconstruction, sparsity, dead and twin features, similarity, and effect on the model.

FVU follows the paper: mean((x − x̂)²) / mean((x − mean x)²), both over all
evaluated tokens and dimensions, with mean x the per-dimension mean of those
tokens. Accumulation is in float64 so millions of tokens do not lose digits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm


@dataclass
class _Accumulator:
    d_in: int
    n_features: int
    n: int = 0
    sq_err: float = 0.0
    l0_sum: float = 0.0
    fired: Tensor = field(default=None)  # type: ignore[assignment]
    fire_counts: Tensor = field(default=None)  # type: ignore[assignment]
    resid_sum: Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.fired = torch.zeros(self.n_features, dtype=torch.bool)
        self.fire_counts = torch.zeros(self.n_features, dtype=torch.float64)
        self.resid_sum = torch.zeros(self.d_in, dtype=torch.float64)


@torch.no_grad()
def reconstruction_metrics(dictionaries: Sequence, batches: Iterable[Tensor], device: str = "cpu",
                           progress: bool = False, desc: str = "evaluating") -> list[dict]:
    """FVU, MSE, mean L0, dead fraction and token count for each dictionary, in one pass over `batches`."""
    accs = [_Accumulator(d.d_in, d.n_features) for d in dictionaries]
    total_sum: Tensor | None = None
    total_sq: Tensor | None = None
    n = 0
    for x in tqdm(batches, desc=desc, unit="batch", disable=not progress):
        x = x.to(device, torch.float32)
        x64 = x.to(torch.float64)
        total_sum = x64.sum(0) if total_sum is None else total_sum + x64.sum(0)
        total_sq = (x64 ** 2).sum(0) if total_sq is None else total_sq + (x64 ** 2).sum(0)
        n += x.shape[0]
        for d, acc in zip(dictionaries, accs):
            c = d.encode(x)
            x_hat = d.decode(c)
            resid = x_hat.to(torch.float64) - x64
            acc.sq_err += float(resid.pow(2).sum())
            acc.resid_sum += resid.sum(0).cpu()
            active = c > 0
            acc.l0_sum += float(active.sum())
            counts = active.sum(0).cpu()
            acc.fired |= counts > 0
            acc.fire_counts += counts.to(torch.float64)
    if n == 0:
        raise ValueError("no batches to evaluate on")
    mean = total_sum / n
    variance = float((total_sq / n - mean ** 2).clamp_min(0).sum())  # Σ_dims E[(x − mean)²]
    out = []
    for acc in accs:
        mse = acc.sq_err / (n * acc.d_in)
        per_elem_var = variance / acc.d_in
        # SAEBench's explained variance: 1 − Var(x − x̂) / Var(x), the residual's own mean removed
        resid_var = acc.sq_err / n - float((acc.resid_sum / n).pow(2).sum())
        out.append({
            "fvu": mse / per_elem_var if per_elem_var > 0 else math.inf,
            "mse": mse,
            "explained_variance": 1.0 - resid_var / variance if variance > 0 else -math.inf,
            "l0": acc.l0_sum / n,
            "dead_fraction": float((~acc.fired).float().mean()),
            "eval_tokens": n,
            "firing_rates": acc.fire_counts / n,  # per feature; callers store `density_histogram` of it
        })
    for d, m in zip(dictionaries, out):
        directions = getattr(d, "directions", None)
        if directions is not None:
            m.update(twin_metrics(directions, m["firing_rates"]))
    return out


TWIN_COSINE = 0.9  # live latents whose decoder directions are at least this close are near-duplicates ("twins")


@torch.no_grad()
def twin_metrics(directions: Tensor, firing_rates: Tensor, cosine: float = TWIN_COSINE, chunk: int = 1024) -> dict:
    """The share of live latents with a twin, and the share of L0 they carry.

    L1 charges a code c on one latent exactly what it charges c/2 on each of
    two parallel ones, so an L1 dictionary can keep near-duplicates that fire
    together: the objective is unchanged while L0 counts every copy (measured
    on SmolLM2's layer 3, docs/RESULTS.md). Without this number a user
    comparing dictionaries at equal L0 cannot tell fewer features from the
    same features counted twice. Anti-parallel rows are not twins: behind a
    ReLU they fire on opposite inputs.
    """
    rates = firing_rates.to(torch.float64).cpu()
    live = rates > 0
    rows = directions[live.to(directions.device)]
    twin = (max_cosines(rows, rows, chunk, skip_self=True) >= cosine).cpu()
    total = float(rates[live].sum())
    return {"twin_fraction": float(twin.double().mean()) if twin.numel() else 0.0,
            "twin_l0_share": float(rates[live][twin].sum()) / total if total > 0 else 0.0}


def quality_warnings(metrics: dict) -> list[str]:
    """What makes a dictionary's numbers not worth using (worse than predicting the mean, mostly dead) or its
    L0 misleading (mostly twins, which count one feature several times).

    A diverged run (e.g. --lr far too high) still ends and saves; without
    this the user would only find out from a table they may never read.
    """
    out = []
    fvu, dead = metrics.get("fvu"), metrics.get("dead_fraction")
    if fvu is not None and not (fvu <= 1.0):  # also catches NaN
        out.append(f"FVU {fvu:.4g} > 1: the reconstruction is worse than the mean activation (training diverged "
                   "or did not converge: retrain it with a lower --lr or more --tokens)")
    if dead is not None and dead > 0.5:
        out.append(f"{dead:.0%} of the features never fired on the measured tokens (if it was trained: retrain it "
                   "with a lower --lr, a lower --l1 or higher --k, or more --tokens)")
    twins = metrics.get("twin_l0_share")
    if twins is not None and twins > 0.5:
        out.append(f"{twins:.0%} of its L0 comes from latents with a near-duplicate (decoder cosine >= {TWIN_COSINE}): "
                   "L0 counts the same feature more than once, so compare it with others at equal L0 with care "
                   "(for an L1 SAE, --decoder-norm unit at the default --lr leaves fewer)")
    return out


DENSITY_BINS = [-8.0 + 0.5 * i for i in range(17)]  # log10 firing rate, 1e-8 .. 1


def density_histogram(rates: Tensor) -> dict:
    """Counts of features per log10(firing rate) bin, and how many never fired (the SAEBench density plot)."""
    rates = rates.to(torch.float64)
    alive = rates[rates > 0]
    logs = torch.log10(alive).clamp(DENSITY_BINS[0], DENSITY_BINS[-1])
    counts = torch.histogram(logs, bins=torch.tensor(DENSITY_BINS, dtype=torch.float64)).hist
    return {"log10_bins": DENSITY_BINS, "counts": [int(c) for c in counts], "never_fired": int((rates == 0).sum()),
            "median_log10_rate": float(logs.median()) if logs.numel() else None}


@torch.no_grad()
def max_cosines(a: Tensor, b: Tensor, chunk: int = 4096, skip_self: bool = False) -> Tensor:
    """For each of a's rows, its highest cosine similarity with any of b's rows, in chunks of a so that a wide
    dictionary never holds the whole a x b matrix. `skip_self`: a is b, and a row is not compared with itself."""
    a = a.to(torch.float32)
    b = b.to(torch.float32)
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    best = []
    for i in range(0, a.shape[0], chunk):
        sims = a[i:i + chunk] @ b.T
        if skip_self:
            rows = torch.arange(sims.shape[0], device=sims.device)
            sims[rows, rows + i] = -1.0
        best.append(sims.max(dim=1).values if sims.shape[1] else torch.full((sims.shape[0],), -1.0))
    return torch.cat(best) if best else torch.zeros(0)


def mmcs(a: Tensor, b: Tensor, chunk: int = 4096) -> float:
    """Mean over a's directions of the max cosine similarity with any of b's directions."""
    return float(max_cosines(a, b, chunk).mean())


@torch.no_grad()
def model_metrics(dictionaries: Sequence, model, tokens: Tensor, hook: str, batch_contexts: int = 8,
                  keep_first: bool = False, device: str = "cpu", progress: bool = False,
                  max_norm: float | None = None) -> list[dict]:
    """Next-token KL(clean ‖ spliced) and CE increase when x̂ replaces the activation at `hook`, and the
    same for zero-ablating it, from which the fractions of CE loss and KL recovered follow (SAEBench).

    `keep_first` leaves position 0 untouched: when every context starts with
    BOS, that position's activation is an outlier the dictionaries were not
    trained on (the cache reader skips it), and splicing garbage there would
    measure the BOS, not the dictionary. `max_norm` leaves every token whose
    activation norm exceeds it untouched too, for the same reason (the
    massive-activation sinks the dictionaries were trained without).
    """
    from activations.hooks import logits_with_edits

    n_ctx = tokens.shape[0]
    kl_sum = [0.0] * len(dictionaries)
    ce_sum = [0.0] * len(dictionaries)
    kl_zero = ce_zero = 0.0
    ce_clean = 0.0
    n_pred = 0
    n_tok = 0
    bar = tqdm(total=n_ctx * (1 + len(dictionaries)), desc="KL/CE", unit="ctx", disable=not progress)
    for start in range(0, n_ctx, batch_contexts):
        ids = tokens[start:start + batch_contexts].to(device)
        clean = logits_with_edits(model, ids, {}).float()
        logp_clean = torch.log_softmax(clean, dim=-1)
        targets = ids[:, 1:]
        ce_clean += float(-logp_clean[:, :-1].gather(-1, targets.unsqueeze(-1)).sum())
        n_pred += targets.numel()
        n_tok += ids.numel()
        bar.update(ids.shape[0])

        def untouched(x: Tensor, new: Tensor) -> Tensor:
            """`new` except where the dictionaries were not trained: position 0 (keep_first), sinks (max_norm)."""
            if keep_first:
                new = torch.cat([x[:, :1], new[:, 1:]], dim=1)
            if max_norm is not None:
                new = torch.where((x.float().norm(dim=-1) > max_norm).unsqueeze(-1), x, new)
            return new

        def zero(x: Tensor) -> Tensor:
            return untouched(x, torch.zeros_like(x))

        logp = torch.log_softmax(logits_with_edits(model, ids, {hook: zero}).float(), dim=-1)
        kl_zero += float((logp_clean.exp() * (logp_clean - logp)).sum())
        ce_zero += float(-logp[:, :-1].gather(-1, targets.unsqueeze(-1)).sum())
        for i, d in enumerate(dictionaries):
            def splice(x: Tensor, d=d) -> Tensor:
                return untouched(x, d.decode(d.encode(x.float())).to(x.dtype))

            logp = torch.log_softmax(logits_with_edits(model, ids, {hook: splice}).float(), dim=-1)
            kl_sum[i] += float((logp_clean.exp() * (logp_clean - logp)).sum())
            ce_sum[i] += float(-logp[:, :-1].gather(-1, targets.unsqueeze(-1)).sum())
            bar.update(ids.shape[0])
    bar.close()
    base, zero_ce, zero_kl = ce_clean / n_pred, ce_zero / n_pred, kl_zero / n_tok
    out = []
    for i in range(len(dictionaries)):
        ce, kl = ce_sum[i] / n_pred, kl_sum[i] / n_tok
        out.append({"kl": kl, "ce_clean": base, "ce_spliced": ce, "ce_increase": ce - base,
                    "ppl_clean": math.exp(base), "ppl_spliced": math.exp(ce), "ce_contexts": int(n_ctx),
                    "ce_zero_ablation": zero_ce, "kl_zero_ablation": zero_kl,
                    # SAEBench's core scores: the share of the loss that zero-ablating the hook costs which
                    # the reconstruction wins back (1 = as good as the clean activation)
                    "ce_loss_recovered": (zero_ce - ce) / (zero_ce - base) if zero_ce != base else None,
                    "kl_recovered": (zero_kl - kl) / zero_kl if zero_kl > 0 else None})
    return out
