"""One feature's record: explain on train, pick the best of k on valid, score on test.

Splits and why they are kept apart are in `explain.exemplars`. With k = 1
nothing is selected and the single explanation is scored on test only, so
k = 1 and k > 1 report on the same held-out fragments.

Every scorer's metrics and cost go to `scores[<name>]` (the main scorer's
metrics also stay at the top of `scores`, where readers have always found
them); the sampled test examples of the other scorers are kept in
`scoring_examples`, so each score can be traced to the windows it read.

An LLM failure becomes a `failed` record (retried on the next run), never a
score. The record says which step failed (`failed_step`: "explain" or
"scoring", with `failed_scorer`): a scoring failure keeps the explanation
and candidates the explainer wrote (and any scores already made), so they can
be scored again by another simulator (`explain --rescore`). `mode` says how
the record's LLM answers were read: "logprobs", "text" or "logprobs+text"
(absent when no LLM scored; `explain.scorers.base.record_mode` reads old
records as "logprobs"). `BackendConfigError` is caught here too: it can depend on the feature
(a prompt longer than a local model's context), and one such feature must
not abort a run of hundreds; its message still names the fix.
"""

from __future__ import annotations

from typing import Any, Sequence

from explain.exemplars import FeatureExemplars, Splits
from explain.explainer import Candidate, Explainer
from explain.scorers import Scorer, ScoreResult
from explain.scorers.base import coarse_mode
from explain.settings import ExemplarConfig

NO_SCORES = {"top_and_random": None, "top": None, "random": None}  # a record's `scores` until it is scored


def explain_feature(ex: FeatureExemplars, explainer: Explainer, scorer: Scorer | None,
                    exemplar_config: ExemplarConfig, base: dict[str, Any],
                    extra_scorers: Sequence[Scorer] = ()) -> dict[str, Any]:
    """The record of one feature (`base` holds the fields shared by every feature of a dictionary).

    `scorer` None: the main scorer is not run (not in --scorers); the top-level scores stay null.
    """
    from explain.llm.errors import BackendConfigError, LLMError

    rec: dict[str, Any] = {**base, "feature": ex.feature, "status": "ok", "explanation": None, "candidates": [],
                           "scores": dict(NO_SCORES), "score_notes": {}, "split": "test", "error": None}
    exemplars = ex.to_json(exemplar_config.random_scored)
    if ex.skipped:
        rec.update(status="skipped", error=ex.skipped, exemplars=exemplars)
        return rec
    splits = ex.splits(exemplar_config.random_scored)
    rec["exemplars"] = exemplars
    try:
        cands = explainer.candidates(splits.train, feature_seed=ex.feature)
    except (LLMError, BackendConfigError) as err:
        rec.update(status="failed", error=f"{type(err).__name__}: {err}", failed_step="explain")
        return rec
    cand_json = [{"explanation": c.explanation, "fewshot": c.fewshot, "shown": c.shown, "valid_scores": None}
                 for c in cands]
    rec.update(explanation=cands[0].explanation, candidates=cand_json, best=0)
    if ex.scoring is not None:
        rec["scoring_examples"] = ex.scoring.to_json()
    step = scorer
    done: list[tuple[Scorer, ScoreResult]] = []
    try:
        best = _select(scorer, cands, splits, cand_json, rec["score_notes"]) if len(cands) > 1 and scorer else 0
        rec.update(explanation=cands[best].explanation, best=best)
        test = splits.examples("test")
        for step in ([scorer] if scorer is not None else []) + list(extra_scorers):
            done.append((step, step.score(cands[best].explanation, test)))
    except (LLMError, BackendConfigError) as err:
        rec.update(status="failed", error=f"{type(err).__name__}: {err}", failed_step="scoring",
                   failed_scorer=step.name if step is not None else None)
    if scorer is not None and done and done[0][0] is scorer:
        rec["scores"] = dict(done[0][1].metrics)
        rec["score_notes"].update(done[0][1].notes)
    elif scorer is None:
        rec["score_notes"]["main"] = "the --simulator scorer is not in --scorers: no top-level scores"
    _add_extras(rec, done)
    details = [r.record.get(s.name) for s, r in done]
    modes = {coarse_mode(d.get("mode")) for d in details if isinstance(d, dict)}  # scorers that read LLM answers
    parts = {m for mode in modes if mode for m in mode.split("+")}
    if parts:
        rec["mode"] = "+".join(sorted(parts))
    return rec


def _select(scorer: Scorer, cands: list[Candidate], splits: Splits, cand_json: list[dict[str, Any]],
            notes: dict[str, str]) -> int:
    """Index of the candidate with the largest selection metric on valid (all scored in one batch)."""
    valid = splits.examples("valid")
    results = scorer.score_many([(c.explanation, valid) for c in cands])
    for cj, r in zip(cand_json, results):
        cj["valid_scores"], cj["valid_notes"] = r.metrics, r.notes
    key = scorer.selection_metric
    ranked = [i for i, r in enumerate(results) if r.metrics.get(key) is not None]
    if not ranked:
        notes["selection"] = "no candidate had a defined valid score; the first was kept"
        return 0
    return max(ranked, key=lambda i: results[i].metrics[key])


def _add_extras(rec: dict[str, Any], extras: list[tuple[Scorer, ScoreResult]]) -> None:
    """Each scorer's metrics and cost under scores[<name>], notes under score_notes[<name>], its record fields."""
    for s, r in extras:
        rec["scores"][s.name] = {**r.metrics, **r.cost.to_json()}
        if r.notes:
            rec["score_notes"][s.name] = r.notes
        rec.update(r.record)
