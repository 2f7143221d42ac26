"""Descriptor results of `cli.py describe` in the report: chips on the feature cards and the comparison of bases.

Why a join here rather than in `describe`: descriptors are assigned to every
feature of a dictionary from pooled documents, while the cards exist only
for features that `explain` ran on; the two are computed apart (often on
different corpora and machines), so the report joins them by
(dictionary name, feature) and leaves every other card exactly as before.

Descriptors come from an LLM or a corpus field, so every string read from
`descriptors.jsonl` / `summary.json` goes through `esc`, attributes
included. Everything is read and checked before the report writes a byte
(`load_descriptor_results`), so a bad folder is a one-line error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from common.errors import UserError, refuse_file
from common.runstate import read_json
from report.html import esc, fmt, table

RECORDS_FILE = "descriptors.jsonl"  # explain.descriptors.describe writes these two; repeated to import nothing heavy
SUMMARY_FILE = "summary.json"

# In the section, not in html.CSS, so a report built without --descriptors stays byte-identical to before.
CHIP_CSS = ("<style>.chips { margin: 4px 0; } .chip { display: inline-block; font-size: 11.5px; padding: 1px 7px; "
            "margin: 1px 3px 1px 0; border-radius: 9px; background: #e8f0fb; border: 1px solid #b8cbe6; "
            "overflow-wrap: anywhere; } .chip .freq { color: #555; font-variant-numeric: tabular-nums; }</style>")


@dataclass
class DescriptorResults:
    """What the --descriptors folders hold: per-feature records by (dictionary, feature), and summary rows."""

    folders: list[Path] = field(default_factory=list)
    by_feature: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    summaries: list[dict[str, Any]] = field(default_factory=list)  # summary.json rows, each with "folder"
    missing_summary: list[Path] = field(default_factory=list)


def load_descriptor_results(folders: Sequence[str | Path]) -> DescriptorResults:
    """Read and check every --descriptors folder; raises UserError (one line) before anything is written."""
    results = DescriptorResults()
    origin: dict[tuple[str, int], Path] = {}
    for given in folders:
        folder = Path(given)
        records = folder / RECORDS_FILE
        refuse_file(folder, "--descriptors", "a describe folder", "pass the --out folder of `cli.py describe`")
        if not records.is_file():
            raise UserError(f"--descriptors {str(folder)!r} holds no {RECORDS_FILE}: pass the --out folder of "
                            "`cli.py describe`")
        results.folders.append(folder)
        for number, record in _read_records(records):
            try:
                key = (str(record["dictionary"]), int(record["feature"]))
            except (KeyError, TypeError, ValueError) as err:
                raise UserError(f"{records} line {number} has no dictionary/feature ({type(err).__name__}): "
                                "rerun `cli.py describe`") from err
            if key in origin:
                raise UserError(f"dictionary {key[0]!r} feature {key[1]} is in both {origin[key]} and {records}: "
                                "pass one describe folder per dictionary")
            origin[key] = records
            results.by_feature[key] = record
        summary_path = folder / SUMMARY_FILE
        if not summary_path.is_file():
            results.missing_summary.append(folder)
            continue
        summary = read_json(summary_path, "describe summary", "rerun `cli.py describe`")
        rows = summary.get("dictionaries") if isinstance(summary, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise UserError(f"{summary_path} has no list of dictionaries: rerun `cli.py describe`")
        results.summaries.extend({**r, "folder": folder} for r in rows)
    return results


def _read_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path} cannot be read ({type(err).__name__}): rerun `cli.py describe`") from err
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise UserError(f"{path} line {number} is not JSON: rerun `cli.py describe`") from err
        if not isinstance(record, dict):
            raise UserError(f"{path} line {number} is not a record: rerun `cli.py describe`")
        out.append((number, record))
    return out


def chips_html(results: DescriptorResults | None, dictionary: Any, feature: Any) -> str:
    """The chips of one card ("" when the feature has no descriptor, so its card is unchanged)."""
    if results is None:
        return ""
    try:
        record = results.by_feature.get((str(dictionary), int(feature)))
    except (TypeError, ValueError):
        return ""
    ranked = [d for d in (record or {}).get("descriptors") or [] if isinstance(d, dict) and "descriptor" in d]
    if not ranked:
        return ""
    chips = []
    for d in ranked:
        title = (f"frequency {fmt(d.get('frequency'), '.3f')} among the top documents · "
                 f"lift {fmt(d.get('lift'), '.3g')}")
        chips.append(f'<span class="chip" title="{esc(title)}">{esc(d["descriptor"])} '
                     f'<span class="freq">{fmt(d.get("frequency"), ".0%")}</span></span>')
    consistency = record.get("consistency")
    note = ("" if consistency is None else
            f'<span class="muted small">split-half consistency {fmt(consistency, ".2f")}</span>')
    return f'<div class="chips"><span class="muted small">descriptors:</span> {"".join(chips)} {note}</div>'


def descriptors_section(results: DescriptorResults, shown: Callable[[str], str] = str) -> str:
    """The comparison of bases from each folder's summary.json (the numbers `describe` printed); `shown` turns
    a folder into the text the page shows (`report.paths.PathScrubber.text`: no machine's absolute path)."""
    head = ('<h2 id="descriptors">Descriptors by basis</h2>' + CHIP_CSS +
            '<p class="muted small">From <code>cli.py describe</code> (Mondal et al.): a feature gets a descriptor '
            'that is frequent among its top documents and more frequent there than in the corpus. '
            '<em>described</em>: fraction of features with at least one descriptor; <em>consistency</em>: mean '
            'Jaccard of the descriptors assigned on two disjoint halves of the corpus, with its 95% CI and the '
            'number of features it averages (features empty on both halves are left out); <em>desc/feature</em>: '
            'mean descriptors per feature. Feature cards below show their descriptors as chips (hover one for its '
            'frequency and lift).</p>')
    parts = [head]
    if results.summaries:
        body = []
        for s in results.summaries:
            c = s.get("consistency") if isinstance(s.get("consistency"), dict) else {}
            ci = c.get("ci95") if isinstance(c.get("ci95"), list) and len(c["ci95"]) == 2 else None
            cons = fmt(c.get("mean")) + ("" if ci is None else f" [{fmt(ci[0])}, {fmt(ci[1])}]")
            at_k = s.get("at_k") if isinstance(s.get("at_k"), dict) else {}
            body.append([esc(s.get("basis", "")), esc(s.get("dictionary", "")), esc(s.get("hook", "")),
                         fmt(s.get("n_features"), "d"), fmt(s.get("fraction_described"), ".1%"), cons,
                         fmt(c.get("n"), "d"), fmt(s.get("descriptors_per_feature"), ".2f"),
                         fmt(at_k.get("precision"), ".2f"), fmt(at_k.get("recall"), ".2f"),
                         esc(shown(str(s["folder"])))])
        parts.append(table(["basis", "dictionary", "hook", "features", "described", "consistency (95% CI)",
                            "n", "desc/feature", "P@K", "R@K", "describe folder"], body, "descriptors"))
    for folder in results.missing_summary:
        parts.append(f'<p class="notrun">{esc(shown(str(folder)))} has no {SUMMARY_FILE}: only its chips are shown</p>')
    described = sum(bool(r.get("descriptors")) for r in results.by_feature.values())
    parts.append(f'<p class="small">{described} of {len(results.by_feature)} features in the describe output(s) '
                 'have descriptors; chips appear on the cards of those that were also explained.</p>')
    return "\n".join(parts)
