"""The feature pages' data: per-feature summaries joined with explanations and descriptors, written compactly.

Why a module of its own: the numbers come from `report.feature_stats`
(`report.feature_summary.DictionarySummaries`), the explanations from
explanations.jsonl records and the descriptors from `cli.py describe`; they
join here by (dictionary name, feature index), and leave as JSON that the
pages' own scripts draw (`report.feature_assets`). 10,000 features must fit
in well under 200 MB, so activations are rounded to 3 significant digits,
whole numbers are written without ".0", and token strings are never stored
per example (a fragment's tokens live once per dictionary, in fragments.js).

Every string a page shows passes through `clean_text` here (control and
bidirectional-override characters as visible escapes, lone surrogates too),
and every JSON blob is ASCII with `<`, `>`, `&` escaped, so it is valid JS
(U+2028 included) and can sit inside a <script type="application/json">
block without ever closing it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from report.html import display_token, visible

SIG_DIGITS = 3


def clean_text(value: Any) -> str:
    """Text as a page may show it: controls, lone surrogates and bidi overrides as visible escapes."""
    return visible(str(value))


def clean_token(token: Any) -> str:
    """A token as shown in an example: whitespace made visible as the cards show it, then `clean_text`."""
    return clean_text(display_token(str(token)))


def js_json(data: Any) -> str:
    """JSON that is also valid JS and safe inside a <script> element (ASCII; <, >, & as \\u escapes)."""
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def round_sig(values: np.ndarray) -> np.ndarray:
    """Round to SIG_DIGITS significant digits; the result's repr is short (e.g. 0.123, not 0.12300000000000001)."""
    a = np.asarray(values, dtype=np.float64)
    out = np.zeros_like(a)
    nz = (a != 0) & np.isfinite(a)
    if not nz.any():
        return out
    x = a[nz]
    k = (SIG_DIGITS - 1 - np.floor(np.log10(np.abs(x)))).astype(np.int64)
    k = np.clip(k, -300, 300)
    up = k >= 0
    r = np.empty_like(x)
    # integer / power of ten (both exact) is the double nearest the decimal: its repr is the short decimal
    scale_up = 10.0 ** k[up]
    r[up] = np.round(x[up] * scale_up) / scale_up
    scale_down = 10.0 ** (-k[~up])
    r[~up] = np.round(x[~up] / scale_down) * scale_down
    out[nz] = r
    return out


def fnum(x: Any) -> float | None:
    """A finite float for JSON, else None (JSON has no NaN)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return float(f"{v:.{SIG_DIGITS}g}") if math.isfinite(v) else None


def layer_of(hook: str) -> int | None:
    from activations.hooknames import layer_and_site

    return layer_and_site(hook)[0]


# -- explanations and descriptors ------------------------------------------------------------------------------

@dataclass
class FeatureNotes:
    """What explain and describe say about one feature (all of it is shown on its page)."""

    explanations: list[dict[str, Any]] = field(default_factory=list)
    headline: dict[str, float | None] = field(default_factory=dict)  # score column -> value, for the index table
    descriptors: dict[str, Any] | None = None


def _metrics_json(metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) and v is not None:
            continue
        out[clean_text(k)] = None if v is None else fnum(v)
    return out


def score_columns(records: Sequence[dict[str, Any]]) -> list[str]:
    """The index table's score columns: each scorer's headline metric, per explainer when there are several."""
    from explain.scorer_compare import headline, scorer_metrics

    several = len({str(r.get("explainer")) for r in records if r.get("status") == "ok"}) > 1
    seen: dict[str, None] = {}
    for r in records:
        if r.get("status") != "ok":
            continue
        for scorer, metrics in scorer_metrics(r).items():
            if headline(scorer, metrics) is not None:
                seen.setdefault(_column(scorer, r, several), None)
    # the papers' scorer (simulation, or its token-list floor) first, then the others by name
    return sorted(seen, key=lambda c: (not c.startswith(("simulation", "tokens")), c))


def _column(scorer: str, record: dict[str, Any], several: bool) -> str:
    return clean_text(f"{scorer} · {record.get('explainer')}" if several else scorer)


def join_notes(records: Iterable[dict[str, Any]], columns: Sequence[str], described: Any = None
               ) -> dict[tuple[str, int], FeatureNotes]:
    """(dictionary name, feature) -> its explanations (every record, every scorer's metrics) and descriptors."""
    from explain.scorer_compare import headline, scorer_metrics

    records = list(records)
    several = len({str(r.get("explainer")) for r in records if r.get("status") == "ok"}) > 1
    notes: dict[tuple[str, int], FeatureNotes] = {}
    for r in records:
        try:
            key = (str(r.get("dictionary")), int(r.get("feature")))
        except (TypeError, ValueError):
            continue
        note = notes.setdefault(key, FeatureNotes())
        scores = {clean_text(s): _metrics_json(m) for s, m in scorer_metrics(r).items()}
        note.explanations.append({
            "explainer": clean_text(r.get("explainer")), "simulator": clean_text(r.get("simulator")),
            "status": clean_text(r.get("status")), "mode": clean_text(r.get("mode") or ""),
            "explanation": None if r.get("explanation") is None else clean_text(r.get("explanation")),
            "error": None if not r.get("error") else clean_text(r.get("error")),
            "candidates": [clean_text(c.get("explanation")) for c in r.get("candidates") or []
                           if isinstance(c, dict) and c.get("explanation") not in (None, r.get("explanation"))],
            "scores": scores})
        if r.get("status") == "ok":
            for scorer, metrics in scorer_metrics(r).items():
                metric = headline(scorer, metrics)
                col = _column(scorer, r, several)
                if metric is not None and col in columns and col not in note.headline:
                    note.headline[col] = fnum(metrics.get(metric)) if metrics.get(metric) is not None else None
    if described is not None:
        for (name, feature), record in described.by_feature.items():
            ranked = [d for d in record.get("descriptors") or [] if isinstance(d, dict) and "descriptor" in d]
            if not ranked:
                continue
            note = notes.setdefault((name, feature), FeatureNotes())
            note.descriptors = {"consistency": fnum(record.get("consistency")),
                                "items": [{"text": clean_text(d["descriptor"]), "frequency": fnum(d.get("frequency")),
                                           "lift": fnum(d.get("lift"))} for d in ranked]}
    return notes


def search_text(note: FeatureNotes | None) -> str:
    """What the index's search box looks in: every explanation and descriptor of the feature, lower case."""
    if note is None:
        return ""
    parts = [e["explanation"] for e in note.explanations if e.get("explanation")]
    if note.descriptors:
        parts += [d["text"] for d in note.descriptors["items"]]
    return " | ".join(parts)


# -- one feature --------------------------------------------------------------------------------------------

def examples_json(summary: Any) -> tuple[str, str]:
    """(top, quantiles) as JSON: [[fragment, [acts]], ...] and [[lo, hi, [[fragment, [acts]], ...]], ...].

    Numbers only, so whole floats can lose their ".0" by a plain replace; every activation of the feature is rounded in one numpy call (this is the writer's hot loop).
    """
    groups = [summary.top] + [q.examples for q in summary.quantiles]
    examples = [e for g in groups for e in g]
    acts: list[Any] = []
    if examples:
        flat = round_sig(np.concatenate([np.asarray(e.acts, dtype=np.float64) for e in examples])).tolist()
        start = 0
        for e in examples:
            acts.append(flat[start:start + len(e.acts)])
            start += len(e.acts)
    it = iter(acts)
    top = [[int(e.fragment), next(it)] for e in summary.top]
    quantiles = [[fnum(q.lo), fnum(q.hi), [[int(e.fragment), next(it)] for e in q.examples]]
                 for q in summary.quantiles]
    return _numbers(top), _numbers(quantiles)


def _numbers(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=False).replace(".0,", ",").replace(".0]", "]")


def feature_json(summary: Any, dictionary: dict[str, Any], note: FeatureNotes | None, has_page: set[int],
                 prev_next: tuple[int | None, int | None]) -> str:
    """The page data of one feature (a JS/JSON object, see `report.feature_assets.FEATURE_JS` for its reader)."""
    meta = {  # the placeholders come first, so a corpus string equal to one is never the one replaced
        "top": "@TOP@", "quantiles": "@QUANTILES@", "dictionary": dictionary, "index": int(summary.index), "density": fnum(summary.density),
        "max": fnum(summary.max_act),
        "hist": {"edges": [fnum(x) for x in summary.hist_edges], "counts": [int(c) for c in summary.hist_counts]},
        "promoted": [[clean_token(t), fnum(v)] for t, v in summary.promoted],
        "suppressed": [[clean_token(t), fnum(v)] for t, v in summary.suppressed],
        "neighbours": [[int(i), fnum(c), int(i) in has_page] for i, c in summary.neighbours],
        "explanations": note.explanations if note else [],
        "descriptors": note.descriptors if note else None,
        "prev": prev_next[0], "next": prev_next[1],
    }
    text = js_json(meta)
    top, quantiles = examples_json(summary)
    return text.replace('"@TOP@"', top, 1).replace('"@QUANTILES@"', quantiles, 1)


def fragments_js(fragments: dict[int, list[str]]) -> str:
    """fragments.js of one dictionary: every example's tokens, once (file:// pages cannot fetch JSON)."""
    data = {str(int(k)): [clean_token(t) for t in v] for k, v in sorted(fragments.items())}
    return "window.DL_FRAGMENTS=" + js_json(data) + ";\n"
