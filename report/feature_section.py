"""The report's feature pages, from the run: which cache to summarise, the summaries, and the index's table section.

Why the cache is looked up rather than required: the demo's run folder
holds `cache_frags.h5` (the explanation set), and an `explain` run records
the cache it read in its config.json, so `cli.py report --run RUN` finds
one by itself; `--features-cache` overrides both, and with none found the
report says how to get the pages instead of failing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from common.errors import UserError
from common.notes import clipped_line
from report.feature_assets import TABLE_JS
from report.feature_pages import FeatureTable
from report.html import esc
from report.layout import FRAGMENT_CACHE, RunContents

TABLE_CSS = ("<style>.dl-controls { display: flex; flex-wrap: wrap; gap: 6px 14px; align-items: center; margin: 6px 0; "
             "font-size: 13px; } .dl-controls input, .dl-controls select { font: inherit; } "
             "#dl-table th[data-key] { cursor: pointer; user-select: none; } "
             "#dl-table th[aria-sort=ascending]::after { content: ' \\25B2'; } "
             "#dl-table th[aria-sort=descending]::after { content: ' \\25BC'; } "
             "#dl-table td.x { text-align: left; max-width: 420px; overflow: hidden; text-overflow: ellipsis; "
             "unicode-bidi: isolate; } #dl-table td:nth-child(3) { text-align: left; } "
             "#dl-table td:nth-child(1), #dl-table td:nth-child(2) { text-align: left; }</style>")


@dataclass
class FeatureSource:
    """The cache the feature pages are computed from, or why there is none (shown in the report)."""

    cache: Path | None
    how: str  # "given" | "run folder" | "explanation run"
    missing_note: str = ""


def find_features_cache(contents: RunContents, given: str | Path | None) -> FeatureSource:
    """--features-cache, else RUN/cache_frags.h5, else the cache an explanation run read (when it still exists)."""
    if given:
        path = Path(given)
        if not path.is_file():
            raise UserError(f"--features-cache {str(given)!r} is not a file: pass an activation cache (.h5) with the "
                            "dictionaries' hooks, e.g. RUN/cache_frags.h5 from `cli.py cache --fragments`")
        return FeatureSource(path, "given")
    own = contents.root / FRAGMENT_CACHE
    if own.is_file():
        return FeatureSource(own, "run folder")
    for run in contents.explanation_runs:
        config = run / "config.json"
        try:
            recorded = json.loads(config.read_text(encoding="utf-8")).get("cache") if config.is_file() else None
        except (OSError, ValueError, AttributeError):
            recorded = None
        if isinstance(recorded, str) and Path(recorded).is_file():
            return FeatureSource(Path(recorded), "explanation run")
    return FeatureSource(None, "", "no activation cache found (no cache_frags.h5 in the run folder, and no explanation "
                                   "run's config.json names a cache that exists here)")


def pages_limit(summaries: Sequence[Any], max_features: int | None) -> int | None:
    """--max-features as the pages were made: None (every feature) when it is more than every dictionary has, said
    in one line, so that the page does not claim "the first 1000 features" of dictionaries of 32."""
    widest = max((len(s.features) for s in summaries), default=0)
    if max_features is None or not summaries or max_features <= widest:
        return max_features
    print(clipped_line("--max-features", max_features, widest, "features of the widest dictionary (pages for every "
                                                                "feature)"))
    return None


def summarise(source: FeatureSource, dictionaries: Sequence[Path], max_features: int | None,
              progress: bool = True, allow_model_mismatch: bool = False, pairings: list[dict] | None = None
              ) -> tuple[list[Any], list[tuple[str, str]]]:
    """`report.feature_stats.summarize_dictionaries` over every dictionary of the run (UserError on bad input,
    a dictionary of another model than the cache's included unless `allow_model_mismatch`)."""
    if source.cache is None or not dictionaries or max_features == 0:
        return [], []
    from report.feature_stats import summarize_dictionaries

    return summarize_dictionaries(source.cache, list(dictionaries), features=max_features, progress=progress,
                                  allow_model_mismatch=allow_model_mismatch, pairings=pairings)


def table_section(table: FeatureTable | None, note: str) -> str:
    """The index's "Feature table" section: controls, an empty table the inline script fills, and its data."""
    head = '<h2 id="features-table">Feature table</h2>'
    if table is not None and not table.n_rows:
        note = "no dictionary of the run could be summarised from the cache (see below)"
    if table is None or not table.n_rows:
        return (head + f'<p class="notrun">No feature pages: {esc(note.rstrip("."))}. Pass <code>--features-cache CACHE</code> '
                '(an activation cache holding the dictionaries\' hooks, e.g. <code>cli.py cache --fragments</code> '
                'output, as the demo writes to RUN/cache_frags.h5) to get one page per feature with its density, '
                'activation histogram, top and quantile examples, logit effects and neighbours.</p>'
                + _skipped(table))
    headers = [("basis", "basis"), ("layer", "layer"), ("dictionary", "dictionary"), ("feature", "feature"),
               ("density", "density"), ("max", "max act"), ("explanation", "explanation")]
    headers += [(s, s) for s in table.scorers]
    ths = "".join(f'<th data-key="{esc(k)}" title="click to sort">{esc(label)}</th>' for k, label in headers)
    intro = (f'<p class="muted small">{table.n_rows} features ({table.n_pages} with a page of their own: density, '
             'activation histogram, top and quantile examples, promoted and suppressed tokens, decoder neighbours, '
             'every explanation and score). Click a header to sort, a feature to open its page; the search box '
             'looks for every word in the explanations and descriptors. The view is kept in the address '
             '(e.g. <code>#sort=density&amp;dir=desc&amp;q=word</code>), so it can be linked to. '
             f'{esc(note)}</p>')
    controls = ('<div class="dl-controls"><label>search explanations <input id="dl-q" type="search" '
                'placeholder="words"></label><label>basis <select id="dl-basis"><option value="">all</option>'
                '</select></label><label>layer <select id="dl-layer"><option value="">all</option></select></label>'
                '<label>dictionary <select id="dl-dict"><option value="">all</option></select></label>'
                '<label>min density <input id="dl-min" type="number" step="any" min="0" max="1" '
                'placeholder="0.001"></label></div><p id="dl-count" class="small"></p>')
    return (head + TABLE_CSS + intro + controls
            + f'<table id="dl-table"><thead><tr>{ths}</tr></thead><tbody id="dl-rows"></tbody></table>'
            + '<button id="dl-more" type="button">show all</button>'
            + f'<script type="application/json" id="dl-table-data">{table.data}</script>' + _skipped(table))


def table_scripts(table: FeatureTable | None) -> tuple[str, ...]:
    """The inline scripts index.html needs (their hashes go into its Content-Security-Policy)."""
    return (TABLE_JS,) if table is not None and table.n_rows else ()


def _skipped(table: FeatureTable | None) -> str:
    if table is None or not table.skipped:
        return ""
    items = "".join(f"<li><code>{esc(name)}</code>: {esc(why)}</li>" for name, why in table.skipped)
    return f'<p class="small">Dictionaries without feature pages:</p><ul class="small">{items}</ul>'
