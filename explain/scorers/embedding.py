"""Embedding scorer (delphi): does the explanation sit closer to the contexts where the feature fires?

A sentence-embedding model (`explain.llm.embedder`; all-MiniLM-L6-v2 by
default) embeds the explanation as a query and each sampled test example
(`Examples.scoring`: activation deciles + non-activating windows) as a
document; the score is the AUROC of cosine similarity for activating vs
non-activating examples. 0.5 is chance, 1.0 a perfect ranking.

No LLM is involved, so it runs offline in milliseconds per feature and is a
real measure of the explanation *text* — the one scorer on this machine
whose model is good at its job (the offline LLM scores at chance). It is a
coarse one: it rewards an explanation that names the topic or words of the
contexts, and cannot tell which token in a context fires.

A token-list explanation (``" Paris" (10), " Berlin" (7)``) is embedded as
its tokens, ``Paris, Berlin``: the weights and quotes are notation, not text.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from activations.errors import UserError
from explain.records import compact
from explain.scorers.base import Cost, Job, Scorer, ScoreResult
from explain.scorers.classify import undefined
from explain.scorers.metrics import auroc
from explain.settings import ScoringConfig
from explain.token_list import TokenListError, parse_token_list


def query_text(explanation: str) -> str:
    """What is embedded for an explanation: a token list as its tokens, anything else as written."""
    try:
        tokens = parse_token_list(explanation)
    except TokenListError:
        return explanation.strip()
    return ", ".join(t.strip() for t in tokens if t.strip())


class EmbeddingScorer(Scorer):
    name = "embedding"
    needs = frozenset({"embeddings"})
    metric_names = ("auroc",)
    selection_metric = "auroc"

    def __init__(self, embedder: Any, config: ScoringConfig | None = None):
        super().__init__()
        self.embedder = embedder
        self.config = config or ScoringConfig()

    @classmethod
    def create(cls, backend: Any | None, config: ScoringConfig | None = None) -> "EmbeddingScorer":
        if backend is None:
            raise UserError("the embedding scorer needs an embedding model: pass --embedder default|<hub id|folder>")
        return cls(backend, config)

    def _score_many(self, jobs: Sequence[Job]) -> list[ScoreResult]:
        return [self._one(explanation, ex.scoring) for explanation, ex in jobs]

    def _one(self, explanation: str, scoring: Any) -> ScoreResult:
        if scoring is None or not scoring.examples:
            return undefined(self.metric_names, "no sampled test examples for this feature")
        query = query_text(explanation)
        if not query:
            return undefined(self.metric_names, "the explanation is empty")
        texts = [query] + [e.text.strip() for e in scoring.examples]
        before = self.embedder.n_embedded
        vectors = self.embedder.embed(texts)
        similarity = vectors[1:] @ vectors[0]
        value, why = auroc(scoring.labels, similarity)
        embedded = self.embedder.n_embedded - before
        cost = Cost(n_prompts=0, n_calls=embedded, n_cached=len(texts) - embedded,
                    n_tokens=self.embedder.count_tokens(texts))
        detail = {"model": self.embedder.name, "query": query,
                  "similarity": [compact(float(s), 4) for s in np.asarray(similarity)]}
        return ScoreResult(metrics={"auroc": value}, notes={"auroc": why} if why else {}, cost=cost,
                           record={self.name: detail})
