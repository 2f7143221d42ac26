"""An LLM judge of assigned descriptors (`describe --judge ...`): precision@K where no gold labels exist.

Mondal et al. asked ChatGPT whether each assigned concept fits a neuron's
exemplars. Here the judge sees a feature's top documents and one of its
top-K descriptors and answers yes or no; precision@K is the fraction of
yes among the judged top-K descriptors, averaged over the judged features
(a seeded sample of the described ones: each judgement is a call). Every
call goes through the SQLite call cache (`OUT/llm_cache.sqlite`); an answer
that starts with neither yes nor no is recorded as `malformed` and left out
of the precision, never counted as a no.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

_EXEMPLARS = 5
_CHARS = 400

SYSTEM = ("You check short descriptors of a text feature against the documents on which the feature is most "
          "active. Answer with one word: yes or no.")


def judge_messages(descriptor: str, exemplars: Sequence[str]) -> list[dict[str, str]]:
    """The chat asking whether `descriptor` fits most of the exemplar documents."""
    docs = "\n".join(f"{i + 1}. {t[:_CHARS]}" for i, t in enumerate(exemplars))
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Documents:\n{docs}\n\nDoes the descriptor \"{descriptor}\" fit most of "
                                        "these documents? Answer yes or no."}]


def read_verdict(answer: str) -> bool | None:
    """True / False for an answer starting with yes / no (case, punctuation ignored); None otherwise."""
    match = re.match(r"\W*(yes|no)\b", answer.strip().lower())
    return None if match is None else match.group(1) == "yes"


def judge_features(spec: str, cache_path: Path, top_rows: torch.Tensor, ranked: list[list[str]], texts: list[str], *,
                   k: int, n_features: int, seed: int, base_url: str | None) -> tuple[dict, dict[int, list[dict]]]:
    """Judge the top-K descriptors of up to `n_features` described features; returns (summary, verdicts per feature).

    `top_rows` [m, F]: each feature's top document rows, most active first (`TopTracker.rows`).
    """
    from explain.llm.backends import LLMCache, LLMError, make_backend

    described = [j for j, names in enumerate(ranked) if names]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(described, size=min(n_features, len(described)), replace=False).tolist()) \
        if described else []
    jobs = []
    for j in chosen:
        top = top_rows[:_EXEMPLARS, j].tolist()
        exemplars = [texts[i] for i in top]
        jobs.extend((j, d, exemplars) for d in ranked[j][:k])
    cache = LLMCache(cache_path)
    kind = spec.partition(":")[0]
    backend = make_backend(spec, cache=cache, **({"base_url": base_url} if kind == "openai" else {}))
    try:
        def ask(job: tuple[int, str, list[str]]) -> dict:
            j, d, exemplars = job
            try:
                answer = backend.generate(judge_messages(d, exemplars), n=1, temperature=0.0, max_tokens=3)[0]
            except LLMError as err:
                return {"feature": j, "descriptor": d, "status": "failed", "answer": str(err)}
            verdict = read_verdict(answer)
            return {"feature": j, "descriptor": d, "status": "malformed" if verdict is None else "ok",
                    "fits": verdict, "answer": answer}

        results = backend.map_concurrent(ask, jobs)
    finally:
        backend.close()
        cache.close()
    per_feature: dict[int, list[dict]] = {}
    for r in results:
        per_feature.setdefault(r["feature"], []).append(r)
    precisions = []
    for verdicts in per_feature.values():
        read = [v["fits"] for v in verdicts if v["status"] == "ok"]
        if read:
            precisions.append(sum(read) / len(read))
    summary = {"judge": spec, "k": k, "features_judged": len(precisions),
               "precision": float(np.mean(precisions)) if precisions else None,
               "malformed": sum(r["status"] == "malformed" for r in results),
               "failed": sum(r["status"] == "failed" for r in results), "calls": len(results)}
    return summary, per_feature


def judge_calibration(verdicts: dict[int, list[dict]], truth: Sequence[str], gold_of: dict[str, str | None]) -> dict:
    """The judge against the annotations where the truth is known (probe dictionaries): its calibration.

    A judged descriptor is right by the annotations when its majority gold
    label is the probe's label (as for precision@K). Returns the agreement
    (share of readable verdicts equal to that), Cohen's kappa, and the
    confusion counts (judge yes/no x annotations right/wrong).
    """
    pairs = [(bool(v["fits"]), gold_of.get(v["descriptor"]) == truth[j])
             for j, vs in verdicts.items() for v in vs if v["status"] == "ok"]
    confusion = {"yes_right": sum(a and b for a, b in pairs), "yes_wrong": sum(a and not b for a, b in pairs),
                 "no_right": sum(b and not a for a, b in pairs), "no_wrong": sum(not a and not b for a, b in pairs)}
    n = len(pairs)
    if n == 0:
        return {"verdicts": 0, "agreement": None, "kappa": None, "confusion": confusion}
    observed = (confusion["yes_right"] + confusion["no_wrong"]) / n
    yes, right = sum(a for a, _ in pairs) / n, sum(b for _, b in pairs) / n
    chance = yes * right + (1 - yes) * (1 - right)
    kappa = None if chance >= 1.0 else (observed - chance) / (1.0 - chance)
    return {"verdicts": n, "agreement": observed, "kappa": kappa, "confusion": confusion}
