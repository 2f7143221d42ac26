"""Classification metrics of the detection / fuzzing / embedding / intruder scorers, and Spearman's ρ.

Per feature, examples are labelled 1 (activating) or 0 (non-activating)
and the scorer gives each a score: P(yes) read from the LLM's
log-probabilities, or the cosine similarity to the explanation. From them:

* the confusion matrix at P(yes) > 0.5 → accuracy, balanced accuracy
  ((TPR + TNR) / 2: the classes need not be the same size), precision,
  recall, F1 (Paulo et al.; delphi);
* AUROC, threshold-free: the probability that a random activating example
  scores above a random non-activating one, ties counting one half
  (the Mann–Whitney U statistic over average ranks).

A metric that is undefined (no example of one class, no positive
prediction for precision) is None with a reason, never 0 — as everywhere in
the scorers (see `explain.scorers.stats`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import rankdata

from explain.scorers.stats import pearson

CLASSIFICATION_METRICS = ("auroc", "balanced_accuracy", "f1", "accuracy", "precision", "recall")


def confusion(labels: Sequence[int], predicted: Sequence[int]) -> dict[str, int]:
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(predicted, dtype=bool)
    return {"tp": int(np.sum(y & p)), "fp": int(np.sum(~y & p)), "tn": int(np.sum(~y & ~p)), "fn": int(np.sum(y & ~p))}


def auroc(labels: Sequence[int], scores: Sequence[float]) -> tuple[float | None, str | None]:
    """(AUROC, None), or (None, reason) when one class is absent."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None, f"{n_pos} activating and {n_neg} non-activating examples: AUROC needs both"
    ranks = rankdata(s)  # average ranks: ties count one half
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)), None


def classification_metrics(labels: Sequence[int], scores: Sequence[float],
                           threshold: float = 0.5) -> tuple[dict[str, float | None], dict[str, str]]:
    """(metrics, notes) of scores against labels; a score above `threshold` predicts "activating"."""
    y = np.asarray(labels, dtype=int)
    pred = (np.asarray(scores, dtype=np.float64) > threshold).astype(int)
    c = confusion(y, pred)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    metrics: dict[str, float | None] = {}
    notes: dict[str, str] = {}

    def ratio(name: str, num: int, den: int, why: str) -> float | None:
        if den == 0:
            notes[name] = why
            return None
        return num / den

    metrics["auroc"], why = auroc(y, scores)
    if why:
        notes["auroc"] = why
    recall = ratio("recall", tp, tp + fn, "no activating examples")
    specificity = tn / (tn + fp) if tn + fp else None
    metrics["balanced_accuracy"] = None if recall is None or specificity is None else (recall + specificity) / 2
    if metrics["balanced_accuracy"] is None:
        notes["balanced_accuracy"] = "needs activating and non-activating examples"
    metrics["f1"] = ratio("f1", 2 * tp, 2 * tp + fp + fn, "no activating example and none predicted")
    metrics["accuracy"] = ratio("accuracy", tp + tn, len(y), "no examples")
    metrics["precision"] = ratio("precision", tp, tp + fp, "no example was predicted activating")
    metrics["recall"] = recall
    return metrics, notes


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, str | None]:
    """Spearman's ρ: the Pearson correlation of average ranks; (None, reason) when undefined."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} values against {len(y)}")
    if len(x) < 3:
        return None, f"only {len(x)} paired values"
    return pearson(rankdata(np.asarray(x, dtype=np.float64)), rankdata(np.asarray(y, dtype=np.float64)))
