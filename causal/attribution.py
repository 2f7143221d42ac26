"""Integrated-gradient attribution of each feature's patch: a cheap screen for the greedy.

The exact greedy needs one forward pass per candidate feature and τ pass;
on a CPU that is hours for thousands of features. `--candidates K` first
ranks features by |IG_j|, the integrated gradient of the mean KL(patched ‖
cf) along the straight path from no edit to every feature patched,

    IG_j = Σ_{n,t} (c̄_j − c_j)[n,t] · (f_j · mean_α ∇_x KL(α·E_all)[n,t]),

(midpoint rule over `steps` values of α; Σ_j IG_j ≈ KL(all) − KL(none)),
and runs the exact greedy on the top K only. All α share one forward and
one backward pass. The screen is an approximation of which features
matter; the KL values on the curve are still measured exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from causal.patching import edit_norm, kl_rows
from causal.selection import PatchProblem


def attribution_scores(problem: PatchProblem, steps: int = 4) -> Tensor:
    """IG_j for every feature [F] (negative: patching j moves the output towards the counterfactual)."""
    full = problem.edit(torch.ones(problem.n_features, dtype=torch.bool, device=problem.delta.device))
    alphas = (torch.arange(steps, dtype=full.dtype, device=full.device) + 0.5) / steps
    edits = (alphas[:, None, None, None] * full[None]).detach().requires_grad_(True)
    with torch.enable_grad():
        logits = problem.runner.logits(edits)  # [steps, N, V]
        kl = kl_rows(logits, problem.cf_logits[None]).mean()  # mean over α and prompts
        (grad,) = torch.autograd.grad(kl, edits)
    problem.prompt_runs += 3 * steps * problem.n_prompts  # a backward pass costs about two forward passes
    problem.forwards += 1
    mean_grad = grad.sum(dim=0).detach()  # Σ_α ∂/∂E of mean_α(...) = mean over α of each gradient
    projected = mean_grad @ problem.w.T  # [N, T, F]: f_j · ∇
    return (problem.delta * projected).sum(dim=(0, 1)).float().cpu()


def screen_ladder(problem: PatchProblem, scores: Tensor, smallest: int) -> list[list[float]]:
    """[[m, KL, edit norm]] with the top-m features by |IG| patched, m = smallest·2^i below the non-trivial count.

    The greedy only ever sees the top `smallest` features, so when the
    information is spread over more of them its curve jumps from "all" to
    "candidates" with nothing between. These states fill that gap: each KL
    is measured exactly (one pass over the prompts each), but the sets are
    the screen's ranking, not the greedy's choice. A state with m features
    at KL k shows that m features suffice for k — an upper bound on the
    fewest that can — and nothing about what the greedy would pick; so it
    is reported apart from `curve`.
    """
    nontrivial = problem.touched.any(dim=0).cpu()
    ranking = [int(j) for j in scores.abs().argsort(descending=True) if nontrivial[j]]
    out = []
    m = smallest
    while m < len(ranking):
        patched = torch.zeros(problem.n_features, dtype=torch.bool, device=problem.delta.device)
        patched[torch.as_tensor(ranking[:m], dtype=torch.long, device=patched.device)] = True
        edit = problem.edit(patched)
        kl = float(problem.kl_all(edit[None])[0].mean())
        out.append([m, kl, edit_norm(edit, problem.valid)])
        m *= 2
    return out
