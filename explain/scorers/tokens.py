"""The token-list scorer: simulation scoring with a lookup table instead of an LLM.

It reads nothing but the explanation, as an LLM simulator would: the
explanation must be a token list from the token-list explainer
(`explain.token_list`), each token's predicted activation is its weight
there (0 for a token not in the list), and the score is the same Pearson
correlation as the LLM simulation scorer's, so the two are comparable and
`compare` can set them side by side. Needs no backend and costs no prompts.
"""

from __future__ import annotations

from typing import Sequence

from explain.records import SimulationResult
from explain.records import Fragments, fragment_tokens
from explain.scorers.simulation import SimulationScorer
from explain.token_list import parse_token_list


class TokenListSimulator:
    """Predict each token's activation by looking it up in the explanation's token list."""

    name = "tokens"

    def simulate(self, explanation: str, fragments: Fragments) -> SimulationResult:
        table = parse_token_list(explanation)
        evs = [[table.get(t, 0.0) for t in fragment_tokens(f)] for f in fragments]
        return SimulationResult(explanation=explanation, expected_values=evs, distributions=[[] for _ in evs],
                                mode="token-lookup", ten="n/a", backend="tokens")

    def simulate_many(self, jobs: Sequence[tuple[str, Fragments]]) -> list[SimulationResult]:
        return [self.simulate(e, f) for e, f in jobs]


class TokenListScorer(SimulationScorer):
    """`SimulationScorer` with the token-list lookup as its simulator: the free floor for every explanation."""

    name = "tokens"

    def __init__(self, simulator: TokenListSimulator | None = None):
        super().__init__(simulator or TokenListSimulator())

    @classmethod
    def create(cls, backend: object | None, config: object | None = None) -> "TokenListScorer":
        return cls()
