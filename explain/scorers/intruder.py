"""Intruder detection: an explanation-free interpretability score for every feature of every basis.

Each round shows `batch_size − 1` activating examples of the feature and one
example of another feature of the same dictionary (an "intruder",
`explain.sampling`: a context where that feature fires strongly and this
one does not), each with its own feature's active tokens marked, in a
seeded order. The model names the odd one out. If the feature's examples
have something in common that the intruder lacks, a capable model finds it;
a feature that fires on unrelated things gives chance (1 / batch_size).

No explanation is read, so the score is the same for every explainer of a
feature, and its prompts are answered from the LLM cache after the first.
Metrics: `accuracy` (the answer is the intruder), `p_correct` (the
probability on the intruder's number, from log-probabilities where the
backend has them; else 0 or 1 from the text), and `chance`. A round whose
answer holds no example number is a failed round in the record.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from common.errors import UserError
from explain.llm.base import Generation, LLMBackend, ScoredRequest
from explain.records import Examples, ScoringSet, compact
from explain.scorers.answers import AnswerError, read_choice
from explain.scorers.base import Cost, Job, Scorer, ScoreResult
from explain.scorers.classify import example_seed, mean_mass, read_answers, undefined
from explain.scorers.fuzzing import active_marks
from explain.scorers.prompts import intruder_request, marked_text
from explain.settings import ScoringConfig

Round = tuple[list[int], int, int]  # (positions in scoring.activating shown, intruder index, intruder's slot)


class IntruderScorer(Scorer):
    name = "intruder"
    metric_names = ("accuracy", "p_correct", "chance")

    def __init__(self, backend: LLMBackend, config: ScoringConfig | None = None):
        super().__init__()
        self.backend = backend
        self.config = config or ScoringConfig()

    @classmethod
    def create(cls, backend: LLMBackend | None, config: ScoringConfig | None = None) -> "IntruderScorer":
        if backend is None:
            raise UserError("the intruder scorer needs an LLM: pass --simulator local:... or openai:...")
        return cls(backend, config)

    def rounds(self, scoring: ScoringSet) -> list[Round]:
        k = self.config.batch_size - 1
        act = scoring.activating
        if len(act) < k:
            return []
        rng = example_seed(self.config, scoring, 2)
        return [(sorted(rng.choice(len(act), size=k, replace=False).tolist()), r, int(rng.integers(k + 1)))
                for r in range(len(scoring.intruders))]

    def texts(self, scoring: ScoringSet, rnd: Round) -> list[str]:
        members, r, slot = rnd
        act = scoring.activating
        shown = [act[i] for i in members]
        shown.insert(slot, scoring.intruders[r])
        return [marked_text(e.tokens, active_marks(e, self.config.mark_fraction)) for e in shown]

    def _score_many(self, jobs: Sequence[Job]) -> list[ScoreResult]:
        plans: list[tuple[list[Round], int] | None] = []
        requests: list[ScoredRequest] = []
        for _, ex in jobs:
            rounds = self.rounds(ex.scoring) if ex.scoring is not None else []
            if not rounds:
                plans.append(None)
                continue
            plans.append((rounds, len(requests)))
            requests.extend(intruder_request(self.texts(ex.scoring, rnd)) for rnd in rounds)
        answers = read_answers(self, self.backend, requests)
        out = []
        for (_, ex), plan in zip(jobs, plans):
            if plan is None:
                out.append(self._none(ex))
                continue
            rounds, first = plan
            out.append(self._result(rounds, answers[first:first + len(rounds)]))
        return out

    def _none(self, ex: Examples) -> ScoreResult:
        why = "no sampled test examples" if ex.scoring is None else (
            "; ".join(n for n in ex.scoring.notes if "intruder" in n) or
            f"fewer than {self.config.batch_size - 1} activating examples or no intruder")
        return undefined(self.metric_names, why)

    def _result(self, rounds: list[Round], answers: list[Generation]) -> ScoreResult:
        correct: list[float] = []
        p_correct: list[float] = []
        chosen: list[int | None] = []  # per round, None when its answer could not be read
        per_round: list[float | None] = []
        failed: list[dict[str, Any]] = []
        for i, ((_, _, slot), gen) in enumerate(zip(rounds, answers)):
            try:
                answer, probs = read_choice(gen, self.config.batch_size)
            except AnswerError as err:
                failed.append({"round": i, "error": str(err)})
                chosen.append(None)
                per_round.append(None)
                continue
            chosen.append(answer)
            correct.append(float(answer == slot))
            p_correct.append(probs[slot] if probs is not None else float(answer == slot))
            per_round.append(p_correct[-1])
        chance = 1.0 / self.config.batch_size
        if correct:
            metrics: dict[str, float | None] = {"accuracy": float(np.mean(correct)),
                                                "p_correct": float(np.mean(p_correct)), "chance": chance}
            notes: dict[str, str] = {}
        else:
            res = undefined(("accuracy", "p_correct"), f"all {len(rounds)} rounds failed")
            metrics, notes = {**res.metrics, "chance": chance}, res.notes
        metrics["n_failed"] = len(failed)
        cost = Cost(n_prompts=len(rounds), n_calls=sum(g.n_calls for g in answers),
                    n_cached=sum(g.n_cached for g in answers), n_tokens=sum(g.n_tokens for g in answers))
        detail = {"mode": "+".join(sorted({g.mode for g in answers})),
                  "rounds": [{"shown": m, "intruder": r, "slot": s} for m, r, s in rounds],
                  "answers": [g.text for g in answers], "chosen": chosen,
                  "p_correct": [None if p is None else compact(p, 4) for p in per_round], "failed_rounds": failed,
                  "choice_mass": mean_mass(answers, [str(i) for i in range(1, self.config.batch_size + 1)])}
        return ScoreResult(metrics=metrics, notes=notes, cost=cost, record={self.name: detail})
