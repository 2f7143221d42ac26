"""Simulation scoring (Bills et al.): predict every token's activation from the explanation, correlate.

The all-at-once LLM simulator: one prompt per (explanation, group of
fragments), every target token written ``token<TAB>unknown``, and at each
slot the model's distribution over the values 0..10 (renormalised; see
`explain.llm.digits` for the value 10), EV = Σ k·p_k. How the distributions
are read depends on the backend (`local-exact`, `completions-echo`,
`chat-top-logprobs`) and is recorded in each `SimulationResult.mode`.

The simulator shows one fixed handwritten few-shot feature (not varied per
call, unlike the explainer) so that the prompt prefix is identical for every
call of a run and the local backend computes it once. `group_size` fragments
share a prompt; the default 1 simulates each fragment on its own, as Bills et
al.'s code did, so that a fragment's prediction never depends on which
fragments were scored before it (with prefix reuse, grouping saves only the
short explanation header per fragment).

Score = Pearson correlation between simulated and true activations over all
tokens of the scored fragments, for top + random, top only and random only
(`score_simulation`). `SimulationScorer` puts both behind the `Scorer`
interface; any object with `simulate_many` can be its simulator (the
token-list scorer reuses it with a lookup table).

Backends without log-probabilities: `SimulationScorer` then simulates from
text answers (`explain.scorers.text_sim`; `--score-mode`: ``auto`` switches
to text when the backend raises `NoLogprobs`, ``text`` always, ``logprobs``
never: that feature's scoring fails). A fragment whose text answer cannot be
read is left out of the correlation and listed in the record; when none can
be read the scoring step fails (`LLMError`), so the feature is a `failed`
record that keeps its explanation.

Simulator API::

    sim = AllAtOnceSimulator(backend)                       # backend from make_backend(...)
    res = sim.simulate("years in dates", records_or_token_lists)
    res.expected_values  # list per fragment of per-token EVs in [0, 10]
    many = sim.simulate_many([(expl_a, frags), (expl_b, frags)])  # one batched/concurrent pass

A failed request raises `LLMError` (nothing is returned for that call); the
pipeline records the feature as failed.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import asdict, dataclass, field
from typing import Protocol, Sequence

import numpy as np

from common.errors import UserError
from explain.llm.base import LLMBackend
from explain.llm.digits import expected_value
from explain.llm.errors import LLMError, NoLogprobs
from explain.prompts import SlotPrompt, build_simulation_prompt
from explain.records import (DEFAULT_SIM_FEWSHOT, ActivationRecord, Examples, Fragments, SimulationResult, compact,
                             fragment_tokens, load_fewshot)
from explain.scorers.base import Cost, Job, Scorer, ScoreResult
from explain.scorers.stats import pearson

SCORE_KINDS = ("top_and_random", "top", "random")


# -- the score ------------------------------------------------------------------------------------

@dataclass
class Scores:
    """Correlation over all scored tokens concatenated, for top+random, top only and random only."""

    top_and_random: float | None = None
    top: float | None = None
    random: float | None = None
    notes: dict[str, str] = field(default_factory=dict)  # score kind -> why it is None

    def values(self) -> dict[str, float | None]:
        return {"top_and_random": self.top_and_random, "top": self.top, "random": self.random}


def score_simulation(expected_values: Sequence[Sequence[float]], top: Sequence[ActivationRecord],
                     random: Sequence[ActivationRecord]) -> Scores:
    """Score simulated values of `top + random` records (in that order) against their true activations."""
    records = list(top) + list(random)
    if len(expected_values) != len(records):
        raise ValueError(f"{len(expected_values)} simulated records for {len(records)} scored records")
    for ev, rec in zip(expected_values, records):
        if len(ev) != len(rec.activations):
            raise ValueError(f"a simulated record has {len(ev)} values for {len(rec.activations)} tokens")
    n_top = len(top)
    parts = {"top_and_random": (0, len(records)), "top": (0, n_top), "random": (n_top, len(records))}
    out = Scores()
    for kind, (a, b) in parts.items():
        if a == b:
            out.notes[kind] = "no records in this part of the split"
            continue
        pred = np.concatenate([np.asarray(v, dtype=np.float64) for v in expected_values[a:b]])
        true = np.concatenate([np.asarray(r.activations, dtype=np.float64) for r in records[a:b]])
        r, why = pearson(pred, true)
        setattr(out, kind, r)
        if why:
            out.notes[kind] = why
    return out


# -- the LLM simulator ----------------------------------------------------------------------------

@dataclass
class SimulatorConfig:
    fewshot_id: str = DEFAULT_SIM_FEWSHOT  # the handwritten feature shown in every simulation prompt
    group_size: int = 1  # fragments per prompt

    def to_json(self) -> dict:
        return asdict(self)


class AllAtOnceSimulator:
    """Predict per-token activations (0..10 expected values) of fragments from an explanation."""

    def __init__(self, backend: LLMBackend, config: SimulatorConfig | None = None):
        self.backend = backend
        self.config = config or SimulatorConfig()
        if self.config.group_size < 1:
            raise UserError(f"simulator group_size {self.config.group_size}: pass 1 or more")
        self.fewshot = load_fewshot([self.config.fewshot_id])[0]

    def prompts(self, explanation: str, fragments: Fragments) -> list[SlotPrompt]:
        """The prompts `simulate` sends: fragments in groups of `group_size`, in order."""
        token_lists = [fragment_tokens(f) for f in fragments]
        g = self.config.group_size
        return [build_simulation_prompt(explanation, token_lists[i : i + g], self.fewshot)
                for i in range(0, len(token_lists), g)]

    def simulate(self, explanation: str, fragments: Fragments) -> SimulationResult:
        return self.simulate_many([(explanation, fragments)])[0]

    def simulate_many(self, jobs: Sequence[tuple[str, Fragments]]) -> list[SimulationResult]:
        """Simulate several (explanation, fragments) jobs in one backend call (batched or concurrent)."""
        all_prompts: list[SlotPrompt] = []
        spans: list[tuple[int, int]] = []
        for explanation, fragments in jobs:
            if not fragments:
                raise UserError("nothing to simulate: pass at least one fragment per explanation")
            ps = self.prompts(explanation, fragments)
            spans.append((len(all_prompts), len(all_prompts) + len(ps)))
            all_prompts.extend(ps)
        readouts = self.backend.digit_distributions(all_prompts)
        results = []
        for (explanation, _), (a, b) in zip(jobs, spans):
            evs: list[list[float]] = []
            dists: list[list[list[float]]] = []
            for prompt, readout in zip(all_prompts[a:b], readouts[a:b]):
                start = 0
                for n in prompt.record_lengths:
                    block = readout.distributions[start : start + n]
                    dists.append(np.asarray(block).tolist())
                    evs.append([expected_value(row) for row in block])
                    start += n
            modes = {r.mode for r in readouts[a:b]}
            tens = {r.ten for r in readouts[a:b]}
            results.append(SimulationResult(
                explanation=explanation, expected_values=evs, distributions=dists,
                mode="+".join(sorted(modes)), ten="+".join(sorted(tens)), backend=self.backend.name,
                n_calls=sum(r.n_calls for r in readouts[a:b]), n_cached=sum(r.n_cached for r in readouts[a:b]),
                extra={"fewshot": self.config.fewshot_id, "group_size": self.config.group_size,
                       "n_prompts": b - a, "n_tokens": sum(r.n_tokens for r in readouts[a:b])},
            ))
        return results


# -- the scorer -----------------------------------------------------------------------------------

class Simulator(Protocol):
    def simulate_many(self, jobs: Sequence[tuple[str, Fragments]]) -> list[SimulationResult]: ...


class SimulationScorer(Scorer):
    """Simulate the explanation on the examples, then correlate with the true activations (Pearson).

    Its record fields are ``simulation``: the backend, how the values were
    read (`mode`, `ten`) and the simulated values per fragment of the
    scored split, rounded to 2 digits (None for a fragment whose text answer
    could not be read; those are in `failed_fragments` with the answer).
    """

    name = "simulation"
    metric_names = SCORE_KINDS

    def __init__(self, simulator: Simulator, text_simulator: Simulator | None = None):
        super().__init__()
        self.simulator = simulator
        self.text_simulator = text_simulator  # None: this scorer has no text mode (the token-list lookup)
        self.no_logprobs = False  # the backend answered without logprobs once: text mode for the rest of the run
        self._switch_lock = threading.Lock()  # features scored at once (--concurrency) may find it out together

    @classmethod
    def create(cls, backend: LLMBackend | None, config: object | None = None) -> "SimulationScorer":
        if backend is None:
            raise UserError("the simulation scorer needs an LLM backend: pass --simulator local:... or openai:...")
        from explain.scorers.text_sim import TextSimulator

        return cls(AllAtOnceSimulator(backend), TextSimulator(backend))

    def _score_many(self, jobs: Sequence[Job]) -> list[ScoreResult]:
        work = [(explanation, ex.records) for explanation, ex in jobs]
        sims = self._simulate(work)
        return [self._result(sim, ex) for sim, (_, ex) in zip(sims, jobs)]

    def _simulate(self, work: list[tuple[str, Fragments]]) -> list[SimulationResult]:
        text = self.text_simulator
        if text is not None and (self.score_mode == "text" or (self.score_mode == "auto" and self.no_logprobs)):
            return text.simulate_many(work)
        try:
            return self.simulator.simulate_many(work)
        except NoLogprobs as err:
            if text is None or self.score_mode != "auto":
                raise
            with self._switch_lock:  # one line, though several features may find it out at once (--concurrency)
                if not self.no_logprobs:
                    print(f"{str(err).split(';')[0]}: simulating from text answers (mode text) for the rest of the "
                          "run", file=sys.stderr)
                self.no_logprobs = True
            return text.simulate_many(work)

    def _result(self, sim: SimulationResult, ex: Examples) -> ScoreResult:
        evs = sim.expected_values
        failed = list(sim.extra.get("failed_fragments") or [])
        n_top = len(ex.top)
        if failed and len(failed) == len(evs):
            raise LLMError(f"{sim.backend}: none of the {len(evs)} fragments' text answers could be read "
                           f"(first: {failed[0]['error']})")
        kept = [i for i, v in enumerate(evs) if v is not None]
        scores = score_simulation([evs[i] for i in kept], [ex.top[i] for i in kept if i < n_top],
                                  [ex.random[i - n_top] for i in kept if i >= n_top])
        notes = dict(scores.notes)
        metrics: dict[str, float | None] = dict(scores.values())
        if failed:
            for kind in SCORE_KINDS:
                notes.setdefault(kind, f"{len(failed)} of {len(evs)} fragments left out: their text answers "
                                       "could not be read")
            metrics["n_failed"] = len(failed)
        cost = Cost(n_prompts=int(sim.extra.get("n_prompts", 0)), n_calls=sim.n_calls, n_cached=sim.n_cached,
                    n_tokens=sim.extra.get("n_tokens"))
        detail = {"backend": sim.backend, "mode": sim.mode, "ten": sim.ten,
                  ex.split: [None if ev is None else [compact(v, 2) for v in ev] for ev in evs]}
        if failed:
            detail["failed_fragments"] = failed
        return ScoreResult(metrics=metrics, notes=notes, cost=cost, record={"simulation": detail})
