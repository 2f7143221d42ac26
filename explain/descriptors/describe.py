"""`cli.py describe`: descriptors for every feature of any dictionary, with consistency and precision@K.

Joins a pooled cache (one vector per document) with a descriptors folder by
document id, encodes the pooled vectors with each dictionary (neuron, SAE,
PCA, ICA, random, probe: all through `encode`), assigns descriptors
(`explain.descriptors.assign`), and measures:

* consistency: the corpus is split 50/50 (seeded, balanced over
  descriptors), assignment runs on each half alone, and each feature's two
  descriptor sets are compared by Jaccard (NaN, left out of the mean, when
  both are empty);
* precision@K / recall@K for `probe` dictionaries, whose features' true
  labels are known: a descriptor counts as correct when its majority gold
  label in the corpus is the feature's label;
* with `--judge`, precision@K from an LLM's yes/no on whether each top-K
  descriptor fits the feature's top documents (`explain.descriptors.judge`).

Writes `OUT/descriptors.jsonl` (one record per (dictionary, feature)) and
`OUT/summary.json` (per dictionary), and prints the per-basis table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from activations.errors import UserError
from activations.options import identity_fields
from activations.pooled_reader import PooledCache
from activations.runstate import (check_output_folder, output_lock, read_json, require_same_settings,
                                  write_json_atomic, write_text_atomic)
from explain.descriptors.assign import (TopTracker, assign_top, balanced_halves, descriptor_matrix, jaccard_rows,
                                        majority_labels, mean_ci, n_top, precision_recall_at_k)
from explain.descriptors.build import read_descriptors
from explain.descriptors.plot import label_of
from explain.descriptors.settings import DescribeSettings

_ENCODE_ROWS = 4096


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


def track_top(dictionary, x: np.ndarray, first: np.ndarray, top_percent: float) -> list[TopTracker]:
    """Top documents of every feature in the whole corpus and in each half, from one encoding pass in row blocks."""
    check_width(dictionary, x)
    trackers = [TopTracker(n_top(len(x), top_percent)), TopTracker(n_top(int(first.sum()), top_percent)),
                TopTracker(n_top(int((~first).sum()), top_percent))]
    with torch.no_grad():
        for i in range(0, len(x), _ENCODE_ROWS):
            acts = dictionary.encode(torch.from_numpy(x[i:i + _ENCODE_ROWS])).float()
            rows = torch.arange(i, i + acts.shape[0])
            half = torch.from_numpy(first[i:i + acts.shape[0]])
            trackers[0].update(acts, rows)
            trackers[1].update(acts[half], rows[half])
            trackers[2].update(acts[~half], rows[~half])
    return trackers


def describe_command(settings: DescribeSettings) -> dict:
    """Assign, measure and write (see the module docstring); returns the summary."""
    import sae

    settings.validate()
    out = check_output_folder(settings.out)
    record = {**identity_fields(settings), "dictionaries": [str(Path(d).resolve()) for d in settings.dictionaries]}
    with output_lock(out, folder=True):
        if (out / "settings.json").exists() and not settings.overwrite:
            old = read_json(out / "settings.json", "describe settings", "delete the folder or pass --overwrite")
            require_same_settings(old, record, out, "rerun with the same settings, pass --overwrite, or choose "
                                                    "another --out")
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
        counts = np.asarray(matrix.sum(0)).ravel()
        first = balanced_halves(doc_desc, counts.tolist(), settings.seed)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "settings.json", record)
        lines, summary = [], {"documents": len(docs), "descriptors": len(names), "dictionaries": []}
        if any(p["status"].startswith("mismatch") for p in pairing):
            summary["model_mismatch_allowed"] = pairing
        for dictionary in dictionaries:
            trackers = track_top(dictionary, pooled[dictionary.hook], first, settings.top_percent)
            recs, stats = _describe_one(dictionary, trackers, matrix, first, names, docs, doc_desc, settings)
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


def _describe_one(dictionary, trackers: list[TopTracker], matrix, first: np.ndarray, names: list[str],
                  docs: list[dict], doc_desc: list[list[int]], settings: DescribeSettings) -> tuple[list[dict], dict]:
    knobs = dict(threshold=settings.threshold, min_lift=settings.min_lift, min_exemplars=settings.min_exemplars)
    bases = [np.asarray(matrix[m].mean(0)).ravel() for m in (np.ones(len(first), dtype=bool), first, ~first)]
    whole, *halves = [assign_top(t.values, t.rows, matrix, base, **knobs) for t, base in zip(trackers, bases)]
    consistency = jaccard_rows(halves[0].assigned, halves[1].assigned)
    truth = [str(x) for x in dictionary.config.get("labels", [])] if dictionary.kind == "probe" else None
    records, ranked_names = [], []
    for j in range(dictionary.n_features):
        ranked = whole.ranked(j, names)
        ranked_names.append([r["descriptor"] for r in ranked])
        rec = {"dictionary": dictionary.name, "kind": dictionary.kind, "hook": dictionary.hook, "feature": j,
               "status": "ok" if ranked else "none", "descriptors": ranked,
               "n_exemplars": int(whole.n_exemplars[j]),
               "consistency": None if np.isnan(consistency[j]) else round(float(consistency[j]), 4),
               "halves": [[names[v] for v in np.flatnonzero(h.assigned[j])] for h in halves]}
        if not ranked:
            rec["reason"] = (f"active on {int(whole.n_exemplars[j])} documents (< {settings.min_exemplars})"
                             if whole.n_exemplars[j] < settings.min_exemplars else
                             f"no descriptor reaches frequency {settings.threshold} with lift {settings.min_lift}")
        if truth is not None:
            rec["truth"] = truth[j]
        records.append(rec)
    stats = {"dictionary": dictionary.name, "kind": dictionary.kind, "hook": dictionary.hook, "basis": label_of(
                 {"kind": dictionary.kind, "hook": dictionary.hook}),
             "n_features": dictionary.n_features,
             "fraction_described": float(np.mean([bool(r) for r in ranked_names])),
             "descriptors_per_feature": float(np.mean([len(r) for r in ranked_names])),
             "consistency": mean_ci(consistency.tolist())}
    if settings.judge is not None:
        from explain.descriptors.judge import judge_features

        stats["judge"], verdicts = judge_features(
            settings.judge, Path(settings.out) / "llm_cache.sqlite", trackers[0].rows, ranked_names,
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
    return records, stats


def _print_table(summary: dict) -> None:
    print(f"{'dictionary':<28} {'basis':<14} {'features':>8} {'described':>9} {'desc/feat':>9} {'consistency (95% CI)':<26}"
          f" {'P@K':>6} {'R@K':>6} {'judge P@K':>9}")
    for s in summary["dictionaries"]:
        c = s["consistency"]
        cons = "-" if c["mean"] is None else f"{c['mean']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}] n={c['n']}"
        at = s.get("at_k", {})
        p = "-" if at.get("precision") is None else f"{at['precision']:.2f}"
        r = "-" if at.get("recall") is None else f"{at['recall']:.2f}"
        judged = s.get("judge", {}).get("precision")
        j = "-" if judged is None else f"{judged:.2f}"
        print(f"{s['dictionary'][:28]:<28} {s['basis'][:14]:<14} {s['n_features']:>8} {s['fraction_described']:>9.2f} "
              f"{s['descriptors_per_feature']:>9.2f} {cons:<26} {p:>6} {r:>6} {j:>9}")
