"""The LLM explainer: k candidate explanations of a feature from its train exemplars.

Best-of-k (Choi et al.) needs *diverse* candidates: candidate i shows a
seeded random subset of 10–20 of the train records (order kept, so the
strongest come first) and one handwritten few-shot feature, cycling through a
seeded permutation of the few-shot set so that k ≤ 4 candidates never repeat
one. With no more than `min_shown` train records (the default 20 top
fragments give 5) a subset of 10–20 cannot vary, so the first candidate sees
all of them in order and each later one a seeded subset of max(3, n−2)..n of
them in shuffled order; otherwise every candidate would see the same prompt
body and best-of-k would only vary the few-shot example. Everything is a
function of (config.seed, feature_seed, i), so a rerun sends identical
requests and is answered from the LLM cache.

Pipeline API::

    explainer = LLMExplainer(backend, ExplainerConfig(format="highlight", k=4, seed=0))
    cands = explainer.candidates(train_records, feature_seed=feature_id)
    cands[i].explanation   # parsed phrase; also .raw, .fewshot, .shown (indices into train_records)

Candidates whose answer parses to nothing are dropped (`dropped` counts them
in `last_dropped`); if none is left, `LLMError` is raised so the feature is
recorded as failed rather than explained by an empty string.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol, Sequence

import numpy as np

from common.errors import UserError
from explain.llm.base import LLMBackend
from explain.llm.errors import LLMError
from explain.prompts import build_explainer_messages, check_format, parse_explanation
from explain.records import ActivationRecord, load_fewshot


@dataclass
class ExplainerConfig:
    format: str = "highlight"  # highlight | bills
    k: int = 1  # candidates per feature
    min_shown: int = 10
    max_shown: int = 20
    temperature: float = 0.7
    max_tokens: int = 60
    seed: int = 0
    fewshot_ids: list[str] | None = None  # None: every handwritten example

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Candidate:
    explanation: str
    raw: str
    fewshot: str
    shown: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


class Explainer(Protocol):
    """What the pipeline asks of an explainer (the LLM one here, or `explain.token_list.TokenListExplainer`)."""

    def candidates(self, train_records: Sequence[ActivationRecord], *, feature_seed: int = 0) -> list[Candidate]:
        """Candidate explanations of one feature from its train exemplars; LLMError when none is usable."""
        ...


class LLMExplainer:
    """Ask an LLM backend for k explanations, varying exemplars shown and the few-shot example."""

    def __init__(self, backend: LLMBackend, config: ExplainerConfig | None = None):
        self.backend = backend
        self.config = config or ExplainerConfig()
        c = self.config
        check_format(c.format)
        if c.k < 1:
            raise UserError(f"--best-of {c.k}: ask for at least 1 candidate explanation")
        if not 1 <= c.min_shown <= c.max_shown:
            raise UserError(f"shown exemplars {c.min_shown}..{c.max_shown}: need 1 <= min <= max")
        self.fewshot = load_fewshot(c.fewshot_ids)
        self.last_dropped = 0

    def plan(self, n_train: int, feature_seed: int = 0) -> list[tuple[list[int], int, int]]:
        """For each candidate: (indices of the train records shown, few-shot index, generation seed)."""
        c = self.config
        rng = np.random.default_rng([c.seed, int(feature_seed)])
        order = rng.permutation(len(self.fewshot))
        plan = []
        seen: set[tuple[int, ...]] = set()
        for i in range(c.k):
            if n_train > c.min_shown:
                size = min(n_train, int(rng.integers(c.min_shown, c.max_shown + 1)))
                shown = sorted(int(x) for x in rng.choice(n_train, size=size, replace=False))
            elif i == 0:
                shown = list(range(n_train))
            else:
                shown = self._small_subset(rng, n_train, seen)
            seen.add(tuple(shown))
            plan.append((shown, int(order[i % len(order)]), int(rng.integers(0, 2**31 - 1))))
        return plan

    @staticmethod
    def _small_subset(rng: np.random.Generator, n_train: int, seen: set[tuple[int, ...]],
                      attempts: int = 20) -> list[int]:
        """A shuffled subset of max(3, n-2)..n records, redrawn (a few times) if an earlier candidate had it."""
        low = min(n_train, max(3, n_train - 2))
        shown: list[int] = []
        for _ in range(attempts):
            size = int(rng.integers(low, n_train + 1))
            shown = [int(x) for x in rng.choice(n_train, size=size, replace=False)]  # random order
            if tuple(shown) not in seen:
                break
        return shown

    def messages(self, records: Sequence[ActivationRecord], fewshot_index: int) -> list[dict[str, str]]:
        return build_explainer_messages(records, self.config.format, self.fewshot[fewshot_index])

    def candidates(self, train_records: Sequence[ActivationRecord], *, feature_seed: int = 0) -> list[Candidate]:
        """k parsed candidate explanations (empty answers dropped; LLMError if none is usable)."""
        if not train_records:
            raise UserError("no train records to explain: the feature needs at least one exemplar")
        c = self.config
        plan = self.plan(len(train_records), feature_seed)
        requests = [
            dict(messages=self.messages([train_records[j] for j in shown], fs), n=1,
                 temperature=c.temperature, max_tokens=c.max_tokens, seed=seed)
            for shown, fs, seed in plan
        ]
        answers = self.backend.generate_many(requests)
        out: list[Candidate] = []
        for (shown, fs, _), texts in zip(plan, answers):
            text = texts[0]
            explanation = parse_explanation(text)
            if explanation:
                out.append(Candidate(explanation=explanation, raw=text, fewshot=self.fewshot[fs].id, shown=shown))
        self.last_dropped = len(plan) - len(out)
        if not out:
            raise LLMError(f"{self.backend.name}: none of {len(plan)} answers held an explanation "
                           f"(first answer: {answers[0][0][:80]!r})")
        return out
