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
    rows: int = 1  # edited copies of the prompt batch per forward pass (speculation width)


@dataclass
class CurvePoint:
    tau: float | None  # None for the starting point (every feature patched)
    n_features: int
    kl: float
    edit_norm: float


@dataclass
class GreedyResult:
    n_features: int
    n_trivial: int  # features with c̄ − c = 0 everywhere (un-patched up front)
    curve: list[CurvePoint]
    patched_final: list[int]
    evaluations: int  # edited copies of the prompt batch that went through the model
    forwards: int  # forward passes (each of up to `rows` copies)
    seconds: float


class PatchProblem:
    """One dictionary's edits at one hook: KL for any set of patched features."""

    def __init__(self, runner: SuffixRunner, delta: Tensor, w: Tensor, cf_logits: Tensor):
        self.runner, self.delta, self.w = runner, delta, w  # delta [N, T, F], w [F, d]
        self.cf_logits = cf_logits  # [N, V]
        self.valid = runner.batch.valid
        self.evaluations = 0
        self.forwards = 0

    @property
    def n_features(self) -> int:
        return int(self.w.shape[0])

    def edit(self, patched: Tensor) -> Tensor:
        """Σ_{j patched} (c̄_j − c_j) f_j at every position: [N, T, d]."""
        return (self.delta * patched.to(self.delta.dtype)) @ self.w

    def contribution(self, j: int) -> Tensor:
        return self.delta[..., j, None] * self.w[j]

    def kl(self, edits: Tensor) -> Tensor:
        """Mean over prompts of KL(patched ‖ counterfactual) for each of R edits [R, N, T, d] -> [R]."""
        with torch.no_grad():
            logits = self.runner.logits(edits)
        self.evaluations += edits.shape[0]
        self.forwards += 1
        return kl_rows(logits, self.cf_logits[None]).mean(dim=1)

    def feature_scale(self) -> Tensor:
        """Mean over real positions of |c̄_j − c_j|·‖f_j‖: the size of feature j's edit."""
        mean_abs = self.delta.abs()[self.valid].mean(dim=0)
        return mean_abs * self.w.norm(dim=1)


def greedy_curve(problem: PatchProblem, config: GreedyConfig, desc: str = "greedy",
                 candidates: list[int] | None = None) -> GreedyResult:
    """The paper's greedy over all τ; `candidates` restricts it to those features (the rest start un-patched).

    The curve starts with every feature patched; with `candidates`, a second
    point holds the restricted starting state. Every KL on the curve is
    measured on the state it reports, never estimated.
    """
    started = time.perf_counter()
    f = problem.n_features
    nontrivial = (problem.delta != 0).flatten(0, 1).any(dim=0)
    patched = nontrivial.clone()
    scale = problem.feature_scale().cpu()
    edit = problem.edit(patched)
    kl_state = float(problem.kl(edit[None])[0])
    curve = [CurvePoint(None, f, kl_state, edit_norm(edit, problem.valid))]
    if candidates is not None:
        chosen = torch.zeros_like(patched)
        chosen[torch.as_tensor(candidates, dtype=torch.long, device=chosen.device)] = True
        patched &= chosen
        edit = problem.edit(patched)
        kl_state = float(problem.kl(edit[None])[0])
        curve.append(CurvePoint(None, int(patched.sum()), kl_state, edit_norm(edit, problem.valid)))
    version = 0
    memo: dict[int, tuple[int, float]] = {}  # feature -> (state version, ΔKL on that state)
    last_dkl: dict[int, float] = {}  # feature -> most recent exact ΔKL (on the state of its time): the visiting order
    hint: dict[int, float] = {}  # feature -> most recent ΔKL seen, stale copies included: only for predictions
    rows = max(1, int(config.rows))

    bar = tqdm(sorted(config.taus), desc=desc, unit="τ", leave=False)
    shown = time.perf_counter()
    for tau in bar:
        order = torch.nonzero(patched).flatten().tolist()
        order.sort(key=lambda j: (last_dkl.get(j, float("-inf")), float(scale[j]), j))
        i, previous_accept = 0, True
        while i < len(order):
            j = order[i]
            if j in memo and memo[j][0] == version:  # evaluated on this very state: no forward needed
                dkl = memo[j][1]
                if dkl < tau:
                    patched[j] = False
                    edit = edit - problem.contribution(j)
                    kl_state += dkl
                    version += 1
                previous_accept = dkl < tau
                i += 1
                continue
            # Speculative batch: copy b un-patches order[i + b] on top of the predicted decisions before it.
            chunk = order[i : i + rows]
            predictions, edits, spec = [], [], edit
            for k in chunk:
                predict = hint[k] < tau if k in hint else previous_accept
                trial = spec - problem.contribution(k)
                edits.append(trial)
                predictions.append(predict)
                previous_accept = predict
                if predict:
                    spec = trial
            kls = problem.kl(torch.stack(edits)).tolist()
            consumed = 0
            for b, k in enumerate(chunk):
                # Every decision before copy b matched its prediction, so copy b ran on the true state.
                dkl = kls[b] - kl_state
                memo[k] = (version, dkl)
                last_dkl[k] = hint[k] = dkl
                accept = dkl < tau
                consumed += 1
                if accept:
                    patched[k] = False
                    edit = edits[b]
                    kl_state = kls[b]
                    version += 1
                previous_accept = accept
                if accept != predictions[b]:
                    break
            # Copies after a wrong prediction ran on a state that did not happen: they only
            # sharpen the predictions for the next batch.
            for b in range(consumed, len(chunk)):
                hint[chunk[b]] = kls[b] - kl_state
            i += consumed
            if time.perf_counter() - shown > 1.0:
                bar.set_postfix(patched=int(patched.sum()), kl=f"{kl_state:.3g}", evals=problem.evaluations)
                shown = time.perf_counter()
        edit = problem.edit(patched)  # drop the rounding drift of the running sum
        curve.append(CurvePoint(float(tau), int(patched.sum()), kl_state, edit_norm(edit, problem.valid)))
    bar.close()
    return GreedyResult(
        n_features=f,
        n_trivial=int((~nontrivial).sum()),
        curve=curve,
        patched_final=torch.nonzero(patched).flatten().tolist(),
        evaluations=problem.evaluations,
        forwards=problem.forwards,
        seconds=time.perf_counter() - started,
    )
