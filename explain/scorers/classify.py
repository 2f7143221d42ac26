"""What detection and fuzzing share: examples in shuffled batches, one prompt per batch, P(yes) per example.

Paulo et al.'s classification scorers show the scorer model a batch of
examples (5 per prompt: more let examples leak into each other's
judgement) and ask, for each, whether the explanation applies. The
examples are the feature's sampled test set (`Examples.scoring`: activation
deciles + non-activating, see `explain.sampling`) in a seeded order, so
each batch mixes both kinds and a rerun sends identical prompts (answered
from the LLM cache).

Each example gets P(yes) from the answer's log-probabilities where the
backend has them (`explain.scorers.answers`); metrics are those of
`explain.scorers.metrics` over the examples of the batches that were read.
A batch whose answer cannot be read is a failed batch, listed in the
record with its answer and left out of the metrics — never a guess; when
every batch fails, the metrics are None with that reason. A request that
fails (HTTP errors after retries) raises `LLMError`: the feature is a
failed record, retried by the next run.

How answers are read follows the scorer's `score_mode` (`read_answers`):
``auto`` asks for log-probabilities and reads whatever comes back (a
server without them gives text answers, `mode="text"`), ``text`` asks for
text only (`LLMBackend.generate_text`), ``logprobs`` fails the feature's
scoring when an answer has none.

The record keeps, under the scorer's name, the batches (positions in the
record's `scoring_examples.examples`), every answer as written, P(yes) per
example and how the answers were read (`mode`).
"""

from __future__ import annotations

import json
import zlib
from abc import abstractmethod
from typing import Any, Sequence

import numpy as np

from common.errors import UserError
from explain.llm.base import Generation, LLMBackend, ScoredRequest
from explain.llm.errors import NoLogprobs
from explain.records import Examples, ScoringSet, compact
from explain.scorers.answers import AnswerError, choice_mass, read_binary_list
from explain.scorers.base import Cost, Job, Scorer, ScoreResult
from explain.scorers.metrics import CLASSIFICATION_METRICS, classification_metrics
from explain.settings import ScoringConfig


def example_seed(config: ScoringConfig, scoring: ScoringSet, salt: int) -> np.random.Generator:
    """A generator seeded by the examples themselves, so the same examples always get the same order."""
    where = json.dumps([[e.fragment, e.start, e.kind] for e in scoring.examples + scoring.intruders])
    return np.random.default_rng([int(config.seed), zlib.crc32(where.encode()), salt])


def mean_mass(answers: Sequence[Generation], options: Sequence[str]) -> float | None:
    """Mean over answers of the probability on the allowed answers at the judgement positions (see `choice_mass`)."""
    masses = [m for m in (choice_mass(g, options) for g in answers) if m is not None]
    return compact(sum(masses) / len(masses), 4) if masses else None


def read_answers(scorer: Scorer, backend: LLMBackend, requests: list[ScoredRequest]) -> list[Generation]:
    """The backend's answers to `requests`, read as the scorer's `score_mode` says (see the module docstring)."""
    if not requests:
        return []
    if scorer.score_mode == "text":
        return backend.generate_text(requests)
    answers = backend.generate_scored(requests)
    if scorer.score_mode == "logprobs" and any(g.mode == "text" for g in answers):
        raise NoLogprobs(f"{backend.name}: the {scorer.name} answers came back without logprobs; "
                         "--score-mode auto or text reads them as text instead")
    return answers


def undefined(metric_names: Sequence[str], why: str) -> ScoreResult:
    return ScoreResult(metrics={m: None for m in metric_names}, notes={m: why for m in metric_names})


class ClassifierScorer(Scorer):
    """Base of detection and fuzzing: subclasses say how an example is shown and how a prompt is built."""

    metric_names = CLASSIFICATION_METRICS

    def __init__(self, backend: LLMBackend, config: ScoringConfig | None = None):
        super().__init__()
        self.backend = backend
        self.config = config or ScoringConfig()

    @classmethod
    def create(cls, backend: LLMBackend | None, config: ScoringConfig | None = None) -> "ClassifierScorer":
        if backend is None:
            raise UserError(f"the {cls.name} scorer needs an LLM: pass --simulator local:... or openai:...")
        return cls(backend, config)

    @abstractmethod
    def texts(self, scoring: ScoringSet) -> list[str]:
        """How each example of `scoring.examples` is shown, in order."""

    @abstractmethod
    def request(self, explanation: str, texts: Sequence[str]) -> ScoredRequest:
        """The prompt of one batch."""

    def batches(self, scoring: ScoringSet) -> list[list[int]]:
        """Example positions per prompt: a seeded shuffle cut into `batch_size` chunks."""
        order = example_seed(self.config, scoring, 0).permutation(len(scoring.examples)).tolist()
        size = self.config.batch_size
        return [order[i:i + size] for i in range(0, len(order), size)]

    def _score_many(self, jobs: Sequence[Job]) -> list[ScoreResult]:
        plans: list[tuple[list[list[int]], int] | None] = []
        requests: list[ScoredRequest] = []
        for explanation, ex in jobs:
            if ex.scoring is None or not ex.scoring.examples:
                plans.append(None)
                continue
            texts, batches = self.texts(ex.scoring), self.batches(ex.scoring)
            plans.append((batches, len(requests)))
            requests.extend(self.request(explanation, [texts[i] for i in b]) for b in batches)
        answers = read_answers(self, self.backend, requests)
        results = []
        for (_, ex), plan in zip(jobs, plans):
            if plan is None:
                results.append(undefined(self.metric_names, "no sampled test examples for this feature"))
                continue
            batches, first = plan
            results.append(self._result(ex, batches, answers[first:first + len(batches)]))
        return results

    def _result(self, ex: Examples, batches: list[list[int]], answers: list[Generation]) -> ScoreResult:
        scoring = ex.scoring
        assert scoring is not None
        p_yes: list[float | None] = [None] * len(scoring.examples)
        failed: list[dict[str, Any]] = []
        n_text = 0
        for b, (batch, gen) in enumerate(zip(batches, answers)):
            try:
                probs, text_only = read_binary_list(gen, len(batch))
            except AnswerError as err:
                failed.append({"batch": b, "error": str(err)})
                continue
            n_text += text_only
            for i, p in zip(batch, probs):
                p_yes[i] = p
        read = [i for i, p in enumerate(p_yes) if p is not None]
        if read:
            labels = scoring.labels
            metrics, notes = classification_metrics([labels[i] for i in read], [p_yes[i] for i in read])
        else:
            result = undefined(self.metric_names, f"all {len(batches)} batches failed")
            metrics, notes = result.metrics, result.notes
        metrics["n_failed"] = len(failed)
        cost = Cost(n_prompts=len(batches), n_calls=sum(g.n_calls for g in answers),
                    n_cached=sum(g.n_cached for g in answers), n_tokens=sum(g.n_tokens for g in answers))
        detail = {"mode": "+".join(sorted({g.mode for g in answers})), "batches": batches,
                  "answers": [g.text for g in answers], "p_yes": [None if p is None else compact(p, 4) for p in p_yes],
                  "failed_batches": failed, "n_text_answers": n_text,
                  "choice_mass": mean_mass(answers, ("0", "1"))}
        return ScoreResult(metrics=metrics, notes=notes, cost=cost, record={self.name: detail})
