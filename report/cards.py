"""One card per explained feature: explanation, scores, highlighted fragments, activation histogram.

Reads the record format of `explain.pipeline` (explanations.jsonl): the
exemplars are `{"top": [...], "random": [...]}` with `tokens` and `acts`
per fragment (`activations` is accepted too), plus `n_fragments`,
`n_active` and `max_activation`.
"""

from __future__ import annotations

from typing import Any, Sequence

from report.html import esc, fmt, highlighted_fragment, svg_histogram, table

TOP_SHOWN = 5
RANDOM_SHOWN = 3
TOP_COLOUR = "#d9661f"
RANDOM_COLOUR = "#3f7fbf"


def _acts(fragment: dict[str, Any]) -> list[float]:
    values = fragment.get("acts", fragment.get("activations")) or []
    return [float(v) for v in values]


def _fragments_html(fragments: Sequence[dict[str, Any]], scale: float) -> str:
    items = []
    for f in fragments:
        acts = _acts(f)
        split = f.get("split")
        label = f" · {esc(split)}" if split else ""
        items.append(f'<li><span class="max">max {fmt(max(acts) if acts else None, ".3g")}{label}</span>'
                     f"{highlighted_fragment(f.get('tokens') or [], acts, scale)}</li>")
    return f'<ul class="frags">{"".join(items)}</ul>'


def feature_card(record: dict[str, Any], chips: str = "") -> str:
    """One card; `chips` (HTML from `report.descriptors.chips_html`, "" for none) goes under the explanation."""
    ex = record.get("exemplars") or {}
    top = list(ex.get("top") or [])
    rnd = list(ex.get("random") or [])
    shown_top, shown_rnd = top[:TOP_SHOWN], rnd[:RANDOM_SHOWN]
    all_acts = [a for f in shown_top + shown_rnd for a in _acts(f)]
    scale = max(all_acts, default=0.0)
    status = str(record.get("status"))
    scores = record.get("scores") or {}
    explanation = record.get("explanation")
    if status == "failed":
        step = f' ({esc(record["failed_step"])})' if record.get("failed_step") else ""
        body_expl = f'<div class="explanation">failed{step}: {esc(record.get("error") or "unknown error")}</div>'
        if explanation:  # a scoring failure keeps what the explainer wrote
            body_expl += f'<div class="explanation">{esc(explanation)}</div>'
    elif explanation:
        body_expl = f'<div class="explanation">{esc(explanation)}</div>'
    else:
        body_expl = '<div class="explanation muted">(empty explanation)</div>'
    score_html = (f'<div class="scores">score top+random <b>{fmt(scores.get("top_and_random"))}</b> · '
                  f'top <b>{fmt(scores.get("top"))}</b> · random <b>{fmt(scores.get("random"))}</b> '
                  f'<span class="muted">({esc(record.get("explainer"))} → {esc(record.get("simulator"))}'
                  f'{", mode " + esc(record["mode"]) if record.get("mode") else ""})</span></div>')
    stats = (f'<div class="muted small">active in {fmt(ex.get("n_active"), "d")} of {fmt(ex.get("n_fragments"), "d")} '
             f'fragments · max activation {fmt(ex.get("max_activation"), ".3g")}</div>')
    hist = svg_histogram([("top", TOP_COLOUR, [a for f in top for a in _acts(f) if a > 0]),
                          ("random", RANDOM_COLOUR, [a for f in rnd for a in _acts(f) if a > 0])])
    css = "feature-card" + (" status-failed" if status == "failed" else "")
    badge = f'<span class="badge">{esc(status)}</span>' if status != "ok" else ""
    return (f'<div class="{css}" data-dictionary="{esc(record.get("dictionary"))}" data-feature="{esc(record.get("feature"))}">'
            f'<header><span class="fid">{esc(record.get("dictionary"))} #{esc(record.get("feature"))} {badge}</span>'
            f'<span class="where">{esc(record.get("kind"))} · {esc(record.get("hook"))}</span></header>'
            f"{body_expl}{chips}{score_html}"
            f'<div class="top-row"><div>{hist}</div><div>{stats}</div></div>'
            f'<div class="fraglabel">top fragments ({len(shown_top)} of {len(top)})</div>{_fragments_html(shown_top, scale)}'
            f'<div class="fraglabel">random fragments ({len(shown_rnd)} of {len(rnd)})</div>{_fragments_html(shown_rnd, scale)}'
            "</div>")


def skipped_table(records: Sequence[dict[str, Any]]) -> str:
    rows = [[esc(r.get("feature")), f'<span class="l">{esc(r.get("error") or "")}</span>'] for r in records]
    return "<details><summary>skipped features</summary>" + table(["feature", "reason"], rows, "skipped") + "</details>"
