"""One page per feature, and the index's feature table: from `DictionarySummaries`, explanations and descriptors.

Layout under the report folder (relative links only, so it opens from
file:// with no server and no network)::

    OUT/index.html                 summary sections + the feature table (its data inline)
    OUT/features/feature.js        the script that draws every feature page (`report.feature_assets`)
    OUT/features/feature.css
    OUT/features/<dict>/fragments.js   token strings of every fragment an example of this dictionary uses, once
    OUT/features/<dict>/<i>.html       feature i: a small shell holding its numbers as JSON

Why the folder is written without an fsync per file: 10,000 pages would
cost seconds of fsyncs for an output that `cli.py report` rebuilds from the
run at any time. It is written into a hidden temporary folder and renamed
onto OUT/features in one step, so a reader (or a crash) sees the old pages
or the new ones, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from common.errors import UserError
from common.runstate import remove_atomically, replace_atomically, staging_folder
from report.feature_assets import FEATURE_CSS, FEATURE_JS
from report.feature_data import (FeatureNotes, clean_text, feature_json, fnum, fragments_js, join_notes, js_json,
                                 layer_of, score_columns, search_text)
from report.html import esc

FEATURES_DIR = "features"
MARKER = ".dictlens-pages"  # in OUT/features: this folder was written by the report, which may replace it
MARKER_VERSION = 1
PAGE_SIZE = 500  # table rows drawn at once; "show all" draws the rest
FEATURE_CSP = ("default-src 'none'; img-src data:; style-src 'self'; script-src 'self' file:; "
               "base-uri 'none'; form-action 'none'")  # 'self' is how Chromium matches file:// scripts; file: for others


@dataclass
class FeatureTable:
    """What the index needs: the table's data (a JSON string), its score columns, and what was left out."""

    data: str = ""
    scorers: list[str] = field(default_factory=list)
    n_rows: int = 0
    n_pages: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (dictionary, why it has no pages)
    hrefs: dict[tuple[str, int], str] = field(default_factory=dict)  # (dictionary, feature) -> its page, from OUT


def slugs(names: Sequence[str]) -> list[str]:
    """A folder name per dictionary: its name where that is a safe, unique file name, else name + short hash."""
    out, used = [], set()
    for i, name in enumerate(names):
        slug = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80].lstrip(".") or "dictionary"
        if slug != name or slug.lower() in used:
            slug = f"{slug}-{hashlib.sha256(f'{i}:{name}'.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
        used.add(slug.lower())
        out.append(slug)
    return out


def feature_page(title: str, data: str) -> str:
    """The shell of one feature page: its data as a JSON block, drawn by ../feature.js with fragments.js."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{FEATURE_CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{esc(title)}</title><link rel="stylesheet" href="../feature.css"></head>\n<body>'
            '<main id="dl-root"><noscript>This page draws its feature with JavaScript; allow scripts for this '
            'file.</noscript></main>\n'
            f'<script type="application/json" id="dl-data">{data}</script>\n'
            '<script src="fragments.js"></script><script src="../feature.js"></script>\n</body></html>\n')


def write_feature_pages(out: Path, summaries: Sequence[Any], records: Sequence[dict[str, Any]],
                        described: Any = None, skipped: Sequence[tuple[str, str]] = (),
                        scrub: Callable[[str], str] = lambda text: text) -> FeatureTable:
    """Write OUT/features (replacing an old one) and return the index's table data.

    `summaries`: `report.feature_summary.DictionarySummaries`, one per dictionary; `records`: explanation
    records (joined by dictionary name and feature); `described`: `report.descriptors.DescriptorResults`;
    `scrub`: applied to every page's text (the report's own folders made relative, `report.paths.PathScrubber.final`).
    """
    columns = score_columns(records)
    notes = join_notes(records, columns, described)
    names = [str(s.name) for s in summaries]
    dict_slugs = slugs(names)
    with staging_folder(out / FEATURES_DIR) as tmp:  # removed unless it is moved into place
        (tmp / MARKER).write_text(json.dumps({"format": "dictlens feature pages", "version": MARKER_VERSION}) + "\n",
                                  encoding="ascii")
        (tmp / "feature.js").write_text(FEATURE_JS, encoding="ascii")
        (tmp / "feature.css").write_text(FEATURE_CSS, encoding="ascii")
        dicts, rows, n_pages, hrefs = [], [], 0, {}
        for d_index, (summary, slug) in enumerate(zip(summaries, dict_slugs)):
            folder = tmp / slug
            folder.mkdir()
            hook = str(summary.hook)
            dictionary = {"name": clean_text(summary.name), "kind": clean_text(summary.kind), "hook": clean_text(hook),
                          "layer": layer_of(hook), "slug": slug, "n_tokens": int(summary.n_tokens)}
            dicts.append(dictionary)
            (folder / "fragments.js").write_text(scrub(fragments_js(summary.fragments)), encoding="ascii")
            indices = [int(f.index) for f in summary.features]
            has_page = set(indices)
            for pos, f in enumerate(summary.features):
                note = notes.get((summary.name, int(f.index)))
                prev_next = (indices[pos - 1] if pos else None, indices[pos + 1] if pos + 1 < len(indices) else None)
                data = feature_json(f, dictionary, note, has_page, prev_next)
                (folder / f"{int(f.index)}.html").write_text(
                    scrub(feature_page(f"{clean_text(summary.name)} #{f.index} · dictlens", data)), encoding="utf-8")
                rows.append(_row(d_index, int(f.index), fnum(f.density), fnum(f.max_act), note, columns, True))
                hrefs[(str(summary.name), int(f.index))] = f"{FEATURES_DIR}/{slug}/{int(f.index)}.html"
            n_pages += len(indices)
            # explained features that have no page (beyond --max-features): still in the table
            for (name, feature), note in sorted(notes.items()):
                if name == summary.name and feature not in has_page and note.explanations:
                    rows.append(_row(d_index, feature, None, None, note, columns, False))
        check_features_folder(out)  # checked up front by build_report; again here, for other callers
        replace_atomically(tmp, out / FEATURES_DIR)
    data = scrub(js_json({"dicts": dicts, "scorers": columns, "rows": rows, "page_size": PAGE_SIZE}))
    return FeatureTable(data=data, scorers=columns, n_rows=len(rows), n_pages=n_pages, hrefs=hrefs,
                        skipped=[(clean_text(n), clean_text(w)) for n, w in skipped])


def remove_feature_pages(out: Path) -> None:
    """Remove OUT/features left by an older build (this one has no pages); nothing else under OUT is touched."""
    check_features_folder(out)
    remove_atomically(out / FEATURES_DIR)


def check_features_folder(out: Path) -> None:
    """Refuse, before anything is written, to replace or remove an OUT/features the report did not write.

    Why: `--out` may be a project folder (or the run folder) whose own `features/` holds user files or a
    dictionary; a report rebuilds its pages at any time, those files cannot be rebuilt. Ours: it holds the
    marker file, or (pages written before the marker existed) feature.js and feature.css and otherwise
    only folders of *.html pages and fragments.js.
    """
    target = Path(out) / FEATURES_DIR
    if not os.path.lexists(target) or _is_ours(target):
        return
    raise UserError(f"{str(target)!r} exists and was not written by `cli.py report` (it would be replaced): "
                    "pass another --out, or move that folder away")


def _is_ours(target: Path) -> bool:
    if target.is_symlink() or not target.is_dir():
        return False
    if (target / MARKER).is_file():
        return True
    names = {p.name: p for p in target.iterdir()}
    if not {"feature.js", "feature.css"} <= names.keys():
        return False
    for name, path in names.items():
        if name in ("feature.js", "feature.css"):
            continue
        if path.is_symlink() or not path.is_dir():
            return False
        for inner in path.iterdir():
            if inner.is_symlink() or not inner.is_file() or not (inner.suffix == ".html" or inner.name == "fragments.js"):
                return False
    return True


def _row(d_index: int, feature: int, density: float | None, max_act: float | None, note: FeatureNotes | None,
         columns: Sequence[str], page: bool) -> list[Any]:
    explanation = ""
    if note is not None:
        explanation = next((e["explanation"] for e in note.explanations if e.get("explanation")), "")
    scores = [note.headline.get(c) if note is not None else None for c in columns]
    return [d_index, feature, density, max_act, explanation, search_text(note), scores, 1 if page else 0]
