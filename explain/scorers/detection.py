"""Detection (Paulo et al. 2024): does the explanation say which examples the feature fires on?

The scorer model sees the explanation and a batch of plain-text examples,
activating and non-activating mixed, and answers 1 or 0 for each
(`explain.scorers.prompts.detection_request`). It tests whether the
explanation picks out the *contexts* where the feature fires, not which
token: the cheapest of the LLM scorers per example, since each example is
its text once (simulation writes every token on a line with a slot).
Batching, reading and metrics are `explain.scorers.classify`.
"""

from __future__ import annotations

from typing import Sequence

from explain.llm.base import ScoredRequest
from explain.records import ScoringSet
from explain.scorers.classify import ClassifierScorer
from explain.scorers.prompts import detection_request, plain_text


class DetectionScorer(ClassifierScorer):
    name = "detection"

    def texts(self, scoring: ScoringSet) -> list[str]:
        return [plain_text(e.tokens) for e in scoring.examples]

    def request(self, explanation: str, texts: Sequence[str]) -> ScoredRequest:
        return detection_request(explanation, texts)
