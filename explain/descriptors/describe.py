"""`cli.py describe`: descriptors for every feature of any dictionary, with consistency and precision@K.

Joins a pooled cache (one vector per document) with a descriptors folder by
document id, encodes the pooled vectors with each dictionary (neuron, SAE,
PCA, ICA, random, probe: all through `encode`), assigns descriptors
(`explain.descriptors.assign`), and measures:

* consistency: the corpus is split 50/50 `--splits` times (seeded
  iterative stratification, balanced on every descriptor), assignment runs
  on each half alone, and each feature's two descriptor sets are compared by
  Jaccard; a feature's consistency is its mean over the splits where at
  least one half describes it, and the summary gives the mean with a 95 %
  interval over features, the mean of each split, and the features empty in
  both halves (per split, and in every split) as counts of their own;
* precision@K / recall@K for `probe` dictionaries, whose features' true
  labels are known: a descriptor counts as correct when its majority gold
  label in the corpus is the feature's label;
* with `--judge`, precision@K from an LLM's yes/no on whether each top-K
  descriptor fits the feature's top documents (`explain.descriptors.judge`);
  on `probe` dictionaries also the judge's agreement with the annotations
  (its calibration: accuracy, Cohen's kappa, confusion counts).

The rule is the paper's by default (top k %, f(c) >= T, f(c) the share of
descriptor occurrences among the exemplars); `--min-lift`, `--min-exemplars`
and `--frequency documents` are options, and `summary.json`'s `assignment`
and the console say which rule and frequency were used.

Writes `OUT/descriptors.jsonl` (one record per (dictionary, feature)) and
`OUT/summary.json` (per dictionary), and prints the per-basis table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.errors import UserError
from common.notes import clipped_line
from common.options import identity_fields
from activations.pooled_reader import PooledCache
from common.runstate import check_output_folder, claim_output, write_json_atomic, write_text_atomic
from explain.descriptors.assign import (TopTracker, assign_top, base_rate, descriptor_matrix, half_tops, jaccard_rows,
                                        majority_labels, mean_ci, n_top, precision_recall_at_k, repeated_halves)
from explain.descriptors.build import read_descriptors
from explain.descriptors.plot import label_of
from explain.descriptors.settings import DescribeSettings
from explain.llm.backends import check_local_paths

_ENCODE_ROWS = 4096
#: the whole corpus's top list holds this many times a feature's exemplars, so that each half's top documents of
#: every split are read from it; a feature for which one half falls short gets an exact second pass
OVERSAMPLE = 3


@dataclass
class Tops:
    """Top documents ([m, F] values and rows, largest first) of the whole corpus and of both halves of every split."""

    whole: tuple[torch.Tensor, torch.Tensor]
    halves: list[list[tuple[torch.Tensor, torch.Tensor]]]
    exact: int  # features whose half tops needed the second pass


def joined(cache: PooledCache, documents: list[dict]) -> tuple[np.ndarray, list[dict]]:
    """Rows of the cache that have a descriptors record (cache order), and those records; none in common: error."""
    by_id = {d["id"]: d for d in documents}
    ids = cache.doc_ids()
    rows = np.asarray([i for i, doc_id in enumerate(ids) if doc_id in by_id], dtype=np.int64)
    if rows.size == 0:
        raise UserError(f"{cache.path} and the descriptors folder share no document id: build both from the same "
                        "--corpus (and --max-documents)")
    return rows, [by_id[ids[i]] for i in rows]


def check_width(dictionary, x: np.ndarray) -> None:
    if x.shape[1] != dictionary.d_in:
        raise UserError(f"dictionary {dictionary.name!r} takes width {dictionary.d_in}, the pooled cache's hook "
                        f"{dictionary.hook!r} has {x.shape[1]}: use a dictionary of this model and hook")


def _encoded(dictionary, x: np.ndarray):
    """(row offset, [b, F] activations) over `x` in row blocks."""
    with torch.no_grad():
        for i in range(0, len(x), _ENCODE_ROWS):
            yield i, dictionary.encode(torch.from_numpy(x[i:i + _ENCODE_ROWS])).float()


def track_top(dictionary, x: np.ndarray, splits: list[np.ndarray], top_percent: float,
              oversample: int = OVERSAMPLE) -> Tops:
    """Top documents of every feature in the whole corpus and in both halves of every split, from one encoding pass.

    The halves are read from an oversampled top list of the whole corpus
    (`half_tops`); features for which that list does not hold a half's top
    documents (rare: the half would have to be much less than half of the
    feature's top documents) get them from a second pass over those features only.
    """
    check_width(dictionary, x)
    n = len(x)
    m = n_top(n, top_percent)
    sizes = [(n_top(int(f.sum()), top_percent), n_top(int((~f).sum()), top_percent)) for f in splits]
    tracker = TopTracker(min(n, max([m] + [oversample * (a + b) for a, b in sizes])))
    for i, acts in _encoded(dictionary, x):
        tracker.update(acts, torch.arange(i, i + acts.shape[0]))
    values, rows = tracker.values, tracker.rows
    halves, short = [], np.zeros(values.shape[1], dtype=bool)
    for first, (a, b) in zip(splits, sizes):
        tops, lacking = half_tops(values, rows, first, a, b, n)
        halves.append(tops)
        short |= lacking
    if short.any():
        feats = torch.from_numpy(np.flatnonzero(short))
        exact = [[TopTracker(a), TopTracker(b)] for a, b in sizes]
        masks = [(torch.from_numpy(f), torch.from_numpy(~f)) for f in splits]
        for i, acts in _encoded(dictionary, x):
            acts, block_rows = acts[:, feats], torch.arange(i, i + acts.shape[0])
            for trackers, pair in zip(exact, masks):
                for tracker_h, mask in zip(trackers, pair):
                    part = mask[i:i + acts.shape[0]]
                    tracker_h.update(acts[part], block_rows[part])
        for tops, trackers in zip(halves, exact):
            for h, tracker_h in enumerate(trackers):
                vals, found = tops[h][0].clone(), tops[h][1].clone()
                vals[:, feats], found[:, feats] = tracker_h.values, tracker_h.rows
                tops[h] = (vals, found)
    return Tops((values[:m], rows[:m]), halves, int(short.sum()))


def describe_command(settings: DescribeSettings) -> dict:
    """Assign, measure and write (see the module docstring); returns the summary."""
    import sae

    settings.validate()
    out = check_output_folder(settings.out)
    record = {**identity_fields(settings), "dictionaries": [str(Path(d).resolve()) for d in settings.dictionaries]}
    with claim_output(out, record, settings.overwrite, what="describe run") as claim:
        documents, vocabulary = read_descriptors(settings.descriptors)
        dictionaries = [sae.load(d) for d in settings.dictionaries]
        names = [v["name"] for v in vocabulary]
        if not names:
            raise UserError(f"{settings.descriptors} has no descriptors (its documents.jsonl says why per document): "
                            "rerun `cli.py descriptors` with another --generator")
        index = {n: i for i, n in enumerate(names)}
        with PooledCache(settings.cache) as cache:
            rows, docs = joined(cache, documents)
            pooled = {h: cache.pooled(h)[rows] for h in {d.hook for d in dictionaries} if h}
            missing = [d.name for d in dictionaries if d.hook not in pooled]
            if missing:
                raise UserError(f"dictionaries {missing} name no hook of {cache.path} ({', '.join(cache.hooks)}): "
                                "pass dictionaries of a cached hook")
            pairing = _pairing(dictionaries, cache, settings.allow_model_mismatch)
        print(f"{len(docs)} documents of {settings.cache} have descriptors ({len(documents)} in "
              f"{settings.descriptors})")
        doc_desc = [[index[n] for n in d["descriptors"] if n in index] for d in docs]
        matrix = descriptor_matrix(doc_desc, len(names))
        splits = repeated_halves(doc_desc, len(names), settings.splits, settings.seed)
        assignment = assignment_record(settings, len(docs), splits)
        _check_exemplar_counts(settings, assignment, len(docs))
        check_local_paths([settings.judge])
        claim.write_record()
        lines, summary = [], {"documents": len(docs), "descriptors": len(names),
                              "documents_with_descriptors": int(sum(bool(v) for v in doc_desc)),
                              "assignment": assignment, "dictionaries": []}
        print(rule_line(summary["assignment"]))
        if any(p["status"].startswith("mismatch") for p in pairing):
            summary["model_mismatch_allowed"] = pairing
        for dictionary in dictionaries:
            tops = track_top(dictionary, pooled[dictionary.hook], splits, settings.top_percent)
            recs, stats = _describe_one(dictionary, tops, matrix, splits, names, docs, doc_desc, settings)
            lines.extend(json.dumps(r, ensure_ascii=False) for r in recs)
            summary["dictionaries"].append(stats)
        write_text_atomic(out / "descriptors.jsonl", "\n".join(lines) + "\n")
        write_json_atomic(out / "summary.json", summary)
    _print_table(summary)
    if settings.plot:
        from explain.descriptors.plot import plot_comparison

        print(f"wrote {plot_comparison(summary, settings.plot)}")
    return summary


def _pairing(dictionaries: list, cache: PooledCache, allow: bool) -> list[dict]:
    """Each dictionary against the pooled cache's model (`activations.provenance`), before any encoding."""
    from activations.provenance import check_pairing

    return [check_pairing(d, cache.model, f"pooled cache {cache.path}", allow=allow) for d in dictionaries]


def assignment_record(settings: DescribeSettings, n_documents: int, splits: list[np.ndarray]) -> dict:
    """Which rule and frequency were used, and the exemplar counts they give (`summary.json`'s `assignment`)."""
    lift = settings.min_lift is not None
    return {"rule": "lift (ours)" if lift else "paper", "frequency": settings.frequency,
            "top_percent": settings.top_percent, "threshold": settings.threshold, "min_lift": settings.min_lift,
            "min_exemplars": settings.min_exemplars, "splits": len(splits), "seed": settings.seed,
            "exemplars_whole": n_top(n_documents, settings.top_percent),
            "exemplars_per_half": min(n_top(int(f.sum()), settings.top_percent) for f in splits)}


def _check_exemplar_counts(settings: DescribeSettings, a: dict, n_documents: int) -> None:
    """--min-exemplars counts a feature's active exemplars, which are at most its top --top-percent documents: above
    that no feature can be described (refused); above the exemplars of a half, no half can (said)."""
    if settings.min_exemplars > a["exemplars_whole"]:
        raise UserError(f"--min-exemplars {settings.min_exemplars} is more than the {a['exemplars_whole']} exemplars "
                        f"a feature has (the top {settings.top_percent:g} % of {n_documents} documents): no feature "
                        f"could be described; pass at most {a['exemplars_whole']}, or raise --top-percent")
    if settings.min_exemplars > a["exemplars_per_half"]:
        print(f"note: --min-exemplars {settings.min_exemplars} is more than the {a['exemplars_per_half']} exemplars of "
              "a half: no half can describe a feature, so consistency is undefined (summary.json: assignment)")


def rule_line(a: dict) -> str:
    """The assignment rule in one line, as the console and the RESULTS tables state it."""
    freq = ("f(c) = share of descriptor occurrences among the exemplars" if a["frequency"] == "occurrences" else
            "f(c) = share of exemplar documents carrying c")
    extra = [f"lift >= {a['min_lift']:g}"] if a["min_lift"] is not None else []
    if a["min_exemplars"] > 1:
        extra.append(f">= {a['min_exemplars']} active exemplars")
    rule = "the paper's rule" if not extra else "our rule"
    return (f"assignment: {rule}: top {a['top_percent']:g} % ({a['exemplars_whole']} exemplars; "
            f"{a['exemplars_per_half']} per half), f(c) >= {a['threshold']:g}{''.join(', ' + e for e in extra)}; "
            f"{freq}; consistency over {a['splits']} stratified splits (seed {a['seed']})")


def _describe_one(dictionary, tops: Tops, matrix, splits: list[np.ndarray], names: list[str],
                  docs: list[dict], doc_desc: list[list[int]], settings: DescribeSettings) -> tuple[list[dict], dict]:
    knobs = dict(threshold=settings.threshold, min_lift=settings.min_lift, min_exemplars=settings.min_exemplars,
                 frequency=settings.frequency)
    whole = assign_top(*tops.whole, matrix, base_rate(matrix, settings.frequency), **knobs)
    per_split, first_halves = [], []
    for first, (a, b) in zip(splits, tops.halves):
        pair = [assign_top(*a, matrix, base_rate(matrix, settings.frequency, np.flatnonzero(first)), **knobs),
                assign_top(*b, matrix, base_rate(matrix, settings.frequency, np.flatnonzero(~first)), **knobs)]
        per_split.append(jaccard_rows(pair[0].assigned, pair[1].assigned))
        if not first_halves:
            first_halves = pair
    jac = np.stack(per_split)  # [splits, F], NaN: both halves empty
    defined = ~np.isnan(jac)
    with np.errstate(invalid="ignore"):
        consistency = np.where(defined.any(0), np.nansum(jac, 0) / np.maximum(defined.sum(0), 1), np.nan)
    truth = [str(x) for x in dictionary.config.get("labels", [])] if dictionary.kind == "probe" else None
    records, ranked_names = [], []
    for j in range(dictionary.n_features):
        ranked = whole.ranked(j, names)
        ranked_names.append([r["descriptor"] for r in ranked])
        rec = {"dictionary": dictionary.name, "kind": dictionary.kind, "hook": dictionary.hook, "feature": j,
               "status": "ok" if ranked else "none", "descriptors": ranked,
               "n_exemplars": int(whole.n_exemplars[j]),
               "consistency": None if np.isnan(consistency[j]) else round(float(consistency[j]), 4),
               "consistency_splits": [None if np.isnan(v) else round(float(v), 4) for v in jac[:, j]],
               "halves": [[names[v] for v in np.flatnonzero(h.assigned[j])] for h in first_halves]}
        if not ranked:
            rec["reason"] = ("active on no document" if whole.n_exemplars[j] == 0 else
                             f"active on {int(whole.n_exemplars[j])} documents (< {settings.min_exemplars})"
                             if whole.n_exemplars[j] < settings.min_exemplars else
                             f"no descriptor reaches frequency {settings.threshold}" +
                             ("" if settings.min_lift is None else f" with lift {settings.min_lift}"))
        if truth is not None:
            rec["truth"] = truth[j]
        records.append(rec)
    stats = {"dictionary": dictionary.name, "kind": dictionary.kind, "hook": dictionary.hook, "basis": label_of(
                 {"kind": dictionary.kind, "hook": dictionary.hook}),
             "n_features": dictionary.n_features,
             "fraction_described": float(np.mean([bool(r) for r in ranked_names])),
             "descriptors_per_feature": float(np.mean([len(r) for r in ranked_names])),
             "consistency": mean_ci(consistency.tolist()),
             "consistency_per_split": [None if not d.any() else float(np.nanmean(j)) for j, d in zip(jac, defined)],
             "consistency_over_splits": mean_ci([float(np.nanmean(j)) for j, d in zip(jac, defined) if d.any()]),
             "empty_both_halves": {"per_split": (~defined).sum(1).tolist(),
                                   "every_split": int((~defined).all(0).sum())},
             "exact_second_pass": tops.exact}
    if settings.judge is not None:
        from explain.descriptors.judge import judge_features

        described = sum(bool(r) for r in ranked_names)
        if settings.judge_features > described:  # the judge summary records the features judged
            print(clipped_line("--judge-features", settings.judge_features, described,
                               f"described features of {dictionary.name}"))
        stats["judge"], verdicts = judge_features(
            settings.judge, Path(settings.out) / "llm_cache.sqlite", tops.whole[1], ranked_names,
            [d.get("text", "") for d in docs], k=settings.top_k, n_features=settings.judge_features,
            seed=settings.seed, base_url=settings.base_url)
        for j, v in verdicts.items():
            records[j]["judge"] = v
    if truth is not None:
        field = settings.gold_field or dictionary.config.get("label_field")
        labels = [None if d.get("fields", {}).get(field) is None else str(d["fields"][field]) for d in docs]
        gold_of = dict(zip(names, majority_labels(doc_desc, labels, len(names))))
        stats["gold_field"] = field
        stats["at_k"] = precision_recall_at_k(ranked_names, truth, gold_of, settings.top_k)
        if settings.judge is not None:
            from explain.descriptors.judge import judge_calibration

            stats["judge"]["calibration"] = judge_calibration(verdicts, truth, gold_of)
    return records, stats


def _print_table(summary: dict) -> None:
    print(f"{'dictionary':<28} {'basis':<14} {'features':>8} {'described':>9} {'desc/feat':>9} {'consistency (95% CI)':<26}"
          f" {'empty':>6} {'P@K':>6} {'R@K':>6} {'judge P@K':>9}")
    for s in summary["dictionaries"]:
        c = s["consistency"]
        cons = "-" if c["mean"] is None else f"{c['mean']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}] n={c['n']}"
        at = s.get("at_k", {})
        p = "-" if at.get("precision") is None else f"{at['precision']:.2f}"
        r = "-" if at.get("recall") is None else f"{at['recall']:.2f}"
        judged = s.get("judge", {}).get("precision")
        j = "-" if judged is None else f"{judged:.2f}"
        print(f"{s['dictionary'][:28]:<28} {s['basis'][:14]:<14} {s['n_features']:>8} {s['fraction_described']:>9.2f} "
              f"{s['descriptors_per_feature']:>9.2f} {cons:<26} {s['empty_both_halves']['every_split']:>6} {p:>6} "
              f"{r:>6} {j:>9}")
    print("empty: features with no descriptor in either half of every split (not in the consistency mean)")
