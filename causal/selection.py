"""Greedy feature selection over thresholds τ: the KL-vs-number-of-features curve.

Protocol (Cunningham et al.; the authors' `ioi_feature_ident.py`): start with
every feature patched; for τ in ascending order, walk over the features
still patched and un-patch one whenever that raises KL(patched ‖ cf) by less
than τ; after each τ record (number patched, KL, edit magnitude). The state
carries over from one τ to the next, as in the reference code. That is not
the same as an independent greedy run per τ from the all-patched start (the
order of un-patching differs), but it is what the paper's figure plots, it
makes every curve point a state reachable by the greedy, and it is far
cheaper: a τ pass only visits what the previous passes left patched.

What this implementation adds, none of which changes a decision:

- Features with c̄ − c = 0 everywhere contribute nothing; un-patching them
  never changes KL (exactly), so they are dropped before the first pass
  (any τ > 0 would un-patch them) and counted as un-patched.
- ΔKL is memoised per (state, feature): the state only changes when a
  feature is un-patched, so a τ pass that reaches a feature already
  evaluated on the current state decides without a forward pass.
- Candidates are visited smallest-first: in the first pass by their mean
  edit magnitude |c̄_j − c_j|·‖f_j‖, later by the exact ΔKL last measured
  (the reference visits them in random order; any order is the same
  protocol). The order never depends on speculative work, so any `rows`
  gives the same decisions.
- Only the prompts a candidate touches are re-run: un-patching feature j
  changes the edit only where c̄_j ≠ c_j, and the KL is a mean over
  prompts, so every other prompt keeps its KL from the current state
  (exactly, in exact arithmetic). Sparse dictionaries touch few prompts
  per feature; dense bases (neurons, PCA) touch all of them.
- Candidates are evaluated in batches of `rows` edited copies per forward,
  speculatively: each copy assumes the predicted decisions of the copies
  before it (predicted from the last ΔKL measured, or the previous
  decision). Decisions are read in order; at the first wrong prediction the
  rest of the batch is discarded (its ΔKL only updates the predictions), so
  the result is exactly the sequential greedy. On CPU `rows` = 1.

ΔKL is a difference of two KLs computed in float64 from float32 logits;
forward passes of different batch shapes can differ in the last bits, which
is far below the smallest τ (1e-5).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from causal.patching import edit_norm, kl_rows
from causal.suffix import SuffixRunner


def default_taus() -> list[float]:
    return [float(t) for t in np.logspace(-5, 0, 50)]


@dataclass
class GreedyConfig:
    taus: list[float] = field(default_factory=default_taus)
    rows: int = 1  # candidates per forward pass (speculation width)


@dataclass
class CurvePoint:
    tau: float | None  # None for a starting point (every feature / every candidate patched)
    n_features: int
    kl: float
    edit_norm: float


@dataclass
class GreedyResult:
    n_features: int
    n_trivial: int  # features with c̄ − c = 0 everywhere (un-patched up front)
    curve: list[CurvePoint]
    patched_final: list[int]
    evaluations: int  # candidate ΔKL evaluations that ran the model
    prompt_runs: int  # prompt sequences that went through the model (evaluations × prompts touched)
    forwards: int  # forward passes
    seconds: float


class PatchProblem:
    """One dictionary's edits at one hook: per-prompt KL for any set of patched features."""

    def __init__(self, runner: SuffixRunner, delta: Tensor, w: Tensor, cf_logits: Tensor):
        self.runner, self.delta, self.w = runner, delta, w  # delta [N, T, F], w [F, d]
        self.cf_logits = cf_logits  # [N, V]
        self.valid = runner.batch.valid
        self.touched = (delta != 0).any(dim=1)  # [N, F]: prompts where feature j's patch changes anything
        self.evaluations = 0
        self.prompt_runs = 0
        self.forwards = 0

    @property
    def n_features(self) -> int:
        return int(self.w.shape[0])

    @property
    def n_prompts(self) -> int:
        return int(self.delta.shape[0])

    def edit(self, patched: Tensor) -> Tensor:
        """Σ_{j patched} (c̄_j − c_j) f_j at every position: [N, T, d]."""
        return (self.delta * patched.to(self.delta.dtype)) @ self.w

    def contribution(self, j: int) -> Tensor:
        return self.delta[..., j, None] * self.w[j]

    def prompts_of(self, j: int) -> Tensor:
        return torch.nonzero(self.touched[:, j]).flatten()

    @torch.no_grad()
    def kl_per_prompt(self, prompts: Tensor, edits: Tensor) -> Tensor:
        """KL(patched ‖ counterfactual) [M] of prompts[i] under edits[i] ([M, T, d]), one forward pass."""
        logits = self.runner.logits_for(prompts, edits)
        self.prompt_runs += int(prompts.numel())
        self.forwards += 1
        return kl_rows(logits, self.cf_logits[prompts.to(self.cf_logits.device)])

    def kl(self, edits: Tensor) -> Tensor:
        """Mean over prompts of KL(patched ‖ counterfactual) for each of R edits [R, N, T, d] -> [R]."""
        return self.kl_all(edits).mean(dim=1)

    def kl_all(self, edits: Tensor) -> Tensor:
        """Per-prompt KL [R, N] for R edits of every prompt."""
        r, n = edits.shape[:2]
        prompts = torch.arange(n, device=edits.device).repeat(r)
        return self.kl_per_prompt(prompts, edits.reshape(r * n, *edits.shape[2:])).reshape(r, n)

    def feature_scale(self) -> Tensor:
        """Mean over real positions of |c̄_j − c_j|·‖f_j‖: the size of feature j's edit."""
        mean_abs = self.delta.abs()[self.valid].mean(dim=0)
        return mean_abs * self.w.norm(dim=1)


@dataclass
class _State:
    patched: Tensor  # [F] bool
    edit: Tensor  # [N, T, d]
    kl_rows: Tensor  # [N] float64, per-prompt KL of this state
    version: int = 0

    @property
    def kl(self) -> float:
        return float(self.kl_rows.mean())


def _evaluate_chain(problem: PatchProblem, state: _State, chain: list[int], predictions: list[bool]):
    """Speculative copies: copy b un-patches chain[b] on top of the predicted decisions before it.

    Each copy re-runs only the prompts its state differs in from `state`;
    returns per copy (edit, per-prompt KL vector).
    """
    edits, touched, spec_edit = [], [], state.edit
    spec_touch = torch.zeros(problem.n_prompts, dtype=torch.bool, device=state.edit.device)
    for k, predict in zip(chain, predictions):
        trial = spec_edit - problem.contribution(k)
        touch = spec_touch | problem.touched[:, k]
        edits.append(trial)
        touched.append(touch)
        if predict:
            spec_edit, spec_touch = trial, touch
    prompts = [torch.nonzero(t).flatten() for t in touched]
    flat_prompts = torch.cat(prompts)
    flat_edits = torch.cat([e[p] for e, p in zip(edits, prompts)])
    kls = problem.kl_per_prompt(flat_prompts, flat_edits)
    problem.evaluations += len(chain)
    results, offset = [], 0
    for e, p in zip(edits, prompts):
        rows = state.kl_rows.clone()
        rows[p] = kls[offset : offset + p.numel()]
        offset += p.numel()
        results.append((e, rows))
    return results


def greedy_curve(problem: PatchProblem, config: GreedyConfig, desc: str = "greedy",
                 candidates: list[int] | None = None) -> GreedyResult:
    """The paper's greedy over all τ; `candidates` restricts it to those features (the rest start un-patched).

    The curve starts with every feature patched; with `candidates`, a second
    point holds the restricted starting state. Every KL on the curve is
    measured on the state it reports, never estimated.
    """
    started = time.perf_counter()
    f = problem.n_features
    nontrivial = problem.touched.any(dim=0)
    patched = nontrivial.clone()
    scale = problem.feature_scale().cpu()
    edit = problem.edit(patched)
    state = _State(patched, edit, problem.kl_all(edit[None])[0])
    curve = [CurvePoint(None, f, state.kl, edit_norm(edit, problem.valid))]
    if candidates is not None:
        chosen = torch.zeros_like(patched)
        chosen[torch.as_tensor(candidates, dtype=torch.long, device=chosen.device)] = True
        state.patched = patched & chosen
        state.edit = problem.edit(state.patched)
        state.kl_rows = problem.kl_all(state.edit[None])[0]
        curve.append(CurvePoint(None, int(state.patched.sum()), state.kl, edit_norm(state.edit, problem.valid)))
    memo: dict[int, tuple[int, float, Tensor]] = {}  # feature -> (state version, ΔKL, per-prompt KL without it)
    last_dkl: dict[int, float] = {}  # feature -> most recent exact ΔKL (on the state of its time): the visiting order
    hint: dict[int, float] = {}  # feature -> most recent ΔKL seen, stale copies included: only for predictions
    rows = max(1, int(config.rows))

    def unpatch(j: int, edit: Tensor, kl_rows_: Tensor) -> None:
        state.patched[j] = False
        state.edit, state.kl_rows = edit, kl_rows_
        state.version += 1

    bar = tqdm(sorted(config.taus), desc=desc, unit="τ", leave=False)
    shown = time.perf_counter()
    for tau in bar:
        order = torch.nonzero(state.patched).flatten().tolist()
        order.sort(key=lambda j: (last_dkl.get(j, float("-inf")), float(scale[j]), j))
        i, previous_accept = 0, True
        while i < len(order):
            j = order[i]
            if j in memo and memo[j][0] == state.version:  # evaluated on this very state: no forward pass
                _, dkl, kl_rows_ = memo[j]
                previous_accept = dkl < tau
                if previous_accept:
                    unpatch(j, state.edit - problem.contribution(j), kl_rows_)
                i += 1
                continue
            chain = order[i : i + rows]
            predictions = []
            for k in chain:
                predictions.append(hint[k] < tau if k in hint else previous_accept)
                previous_accept = predictions[-1]
            results = _evaluate_chain(problem, state, chain, predictions)
            consumed = 0
            for (edit, kl_rows_), k, predict in zip(results, chain, predictions):
                # Every decision before this copy matched its prediction, so it ran on the true state.
                dkl = float(kl_rows_.mean()) - state.kl
                memo[k] = (state.version, dkl, kl_rows_)
                last_dkl[k] = hint[k] = dkl
                accept = dkl < tau
                consumed += 1
                previous_accept = accept
                if accept:
                    unpatch(k, edit, kl_rows_)
                if accept != predict:
                    break
            # Copies after a wrong prediction ran on a state that did not happen: they only
            # sharpen the predictions for the next batch.
            for (edit, kl_rows_), k in list(zip(results, chain))[consumed:]:
                hint[k] = float(kl_rows_.mean()) - state.kl
            i += consumed
            if time.perf_counter() - shown > 1.0:
                bar.set_postfix(patched=int(state.patched.sum()), kl=f"{state.kl:.3g}", evals=problem.evaluations)
                shown = time.perf_counter()
        state.edit = problem.edit(state.patched)  # drop the rounding drift of the running sum
        curve.append(CurvePoint(float(tau), int(state.patched.sum()), state.kl, edit_norm(state.edit, problem.valid)))
    bar.close()
    return GreedyResult(
        n_features=f,
        n_trivial=int((~nontrivial).sum()),
        curve=curve,
        patched_final=torch.nonzero(state.patched).flatten().tolist(),
        evaluations=problem.evaluations,
        prompt_runs=problem.prompt_runs,
        forwards=problem.forwards,
        seconds=time.perf_counter() - started,
    )
