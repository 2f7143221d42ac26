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

from common.errors import UserError
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
    metric_names = ("auroc",)

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
        """All jobs' texts embedded in one call (batched across features), then one AUROC per job."""
        texts: list[list[str]] = []
        for explanation, ex in jobs:
            query = query_text(explanation)
            ok = ex.scoring is not None and ex.scoring.examples and query
            texts.append([query] + [e.text.strip() for e in ex.scoring.examples] if ok else [])
        flat = [t for ts in texts for t in ts]
        vectors, computed = self.embedder.embed_new(flat) if flat else (None, [])
        new = set(computed)
        out, pos = [], 0
        for (explanation, ex), ts in zip(jobs, texts):
            if not ts:
                why = "no sampled test examples for this feature" if ex.scoring is None or not ex.scoring.examples \
                    else "the explanation is empty"
                out.append(undefined(self.metric_names, why))
                continue
            v = vectors[pos:pos + len(ts)]
            pos += len(ts)
            similarity = v[1:] @ v[0]
            value, why = auroc(ex.scoring.labels, similarity)
            embedded = sum(1 for t in dict.fromkeys(ts) if t in new)
            new -= set(ts)  # a text shared by two jobs is embedded once, by the first
            cost = Cost(n_prompts=0, n_calls=embedded, n_cached=len(ts) - embedded,
                        n_tokens=self.embedder.count_tokens(ts))
            detail = {"model": self.embedder.name, "query": ts[0],
                      "similarity": [compact(float(x), 4) for x in np.asarray(similarity)]}
            out.append(ScoreResult(metrics={"auroc": value}, notes={"auroc": why} if why else {}, cost=cost,
                                   record={self.name: detail}))
        return out
