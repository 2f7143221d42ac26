"""`build_report(run_dir, out_dir)`: one static, self-contained index.html for a run folder.

Why static and self-contained: a newcomer opens it from disk, mails it, or
serves it from anywhere, with no network and no server. Plots are PNGs
written beside index.html *and* embedded as data: URIs (so index.html alone
is complete); per-feature histograms are inline SVG; the only scripts are the
page's own load check (see `report.html`) and, with feature pages, the feature
table's (`report.feature_assets`), each allowed by its hash. Sections whose inputs are missing
say that the stage was not run, instead of failing: a partial run still
gets a report.

Feature pages (`report.feature_pages`, from `report.feature_stats` over the
run's fragments cache) are the one exception to "index.html alone": they
live in OUT/features/ beside it, one small page per feature, drawn by one
shared script from compact data, because 10,000 features do not fit in one
page. The index's feature table (its data inline) links to them. A build
without pages (--max-features 0, no cache) removes an older build's
OUT/features, once every input has been checked. An OUT/features that the
report did not write (no `.dictlens-pages` marker, not shaped like older
pages) is never replaced nor removed: the build is refused up front.

No absolute path of the machine reaches a page: `report.paths.PathScrubber`
rewrites the shown data (settings, record fields, skipped reasons, describe
folders) before it is escaped, and its `final` pass checks the written text.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from common.errors import UserError
from common.runstate import check_output_folder, claim_output, write_text_atomic
from report.cards import feature_card, skipped_table
from report.descriptors import (DescriptorResults, chips_html, descriptors_section,
                                load_descriptor_results)
from report.feature_pages import FeatureTable, check_features_folder, remove_feature_pages, write_feature_pages
from report.feature_section import (FeatureSource, find_features_cache, pages_limit, summarise, table_scripts,
                                    table_section)
from report.html import esc, fmt, page, png_img, table
from report.layout import RunContents, RunFolderError, check_run_folder, discover, read_json
from report.paths import PathScrubber, shown_path
from report.plots import plot_comparison, plot_frontier_png, plot_ioi
from sae.registry import kind_order

CARDS_ABOVE_THRESHOLD = 200  # a (scorer, dictionary) group with more cards than this of features with a page ...
CARDS_WITH_PAGES = 24  # ... draws only the best 24 of those (the table lists them); cards without a page: all
KEEP_AS_WRITTEN = ("exemplars", "explanation", "candidates")  # record fields of corpus / LLM text: not path-scrubbed

OFFLINE_NOTE = (
    "Scores from the offline explainer and simulator <code>local:default</code> (SmolLM2-135M-Instruct, "
    "the only instruction model that installs offline) mean little: a 135M-parameter model explains and "
    "simulates features near chance, so its numbers only show that the pipeline runs end to end. "
    "The <code>tokens</code> scorer is a deterministic token-list floor (no LLM). For scores that mean "
    "something, run <code>explain</code> with <code>--explainer openai:gpt-4o-mini --simulator "
    "openai:gpt-4o-mini</code>, or a local vLLM / llama.cpp server with <code>--base-url</code>.")


def _is_offline_llm(spec: Any) -> bool:
    s = str(spec or "")
    return s.startswith("local:") and ("default" in s or "smollm2" in s.lower())


def build_report(run_dir: str | Path, out_dir: str | Path, descriptors: Sequence[str | Path] = (), *,
                 features_cache: str | Path | None = None, max_features: int | None = None,
                 progress: bool = True, summaries: tuple[Sequence[Any], Sequence[tuple[str, str]]] | None = None,
                 allow_model_mismatch: bool = False) -> Path:
    """Write OUT/index.html (and its PNGs, and OUT/features/) from whatever stages of the run exist; returns the path.

    `descriptors`: `cli.py describe` output folders whose chips and comparison of bases join the report
    (read and checked here, before anything is written); none leaves the report as it was.
    Feature pages (`report.feature_pages`) are computed from `features_cache` (default: see
    `report.feature_section.find_features_cache`) for the first `max_features` features of every dictionary
    (None: all; 0: no pages). `summaries`: (DictionarySummaries list, skipped list) as
    `report.feature_stats.summarize_dictionaries` returns them, computed by the caller (a benchmark, a notebook):
    then no cache is read. `allow_model_mismatch`: summarise dictionaries of another model than the cache's
    anyway (the feature table's note says so).
    """
    if Path(run_dir).is_file():  # said before OUT (RUN/report by default) is named: the user named no --out
        check_run_folder(run_dir)
    out = check_output_folder(out_dir)  # before the run folder is read, and before anything is written
    check_run_folder(run_dir)  # before the lock on OUT, which would make a missing RUN
    if max_features is not None and max_features < 0:
        raise UserError(f"--max-features {max_features} is negative: pass 0 (no feature pages) or more")
    described = load_descriptor_results(descriptors) if descriptors else None
    check_features_folder(out)  # an OUT/features the report did not write is never replaced nor removed
    with claim_output(out, None, None, record=None):  # no settings record: a report is rebuilt from its inputs
        return _build_report_locked(run_dir, out, described, features_cache, max_features, progress, summaries,
                                    allow_model_mismatch)


def _build_report_locked(run_dir: str | Path, out: Path, described: DescriptorResults | None = None,
                         features_cache: str | Path | None = None, max_features: int | None = None,
                         progress: bool = True,
                         given: tuple[Sequence[Any], Sequence[tuple[str, str]]] | None = None,
                         allow_model_mismatch: bool = False) -> Path:
    contents = discover(run_dir, skip=out)
    if not (contents.dictionaries or contents.explanation_runs or contents.ioi_results or contents.stages
            or contents.settings):
        raise RunFolderError(f"--run {str(run_dir)!r} holds nothing to report: no dictionary folder (config.json + "
                             "weights.safetensors), explanations.jsonl, ioi.json or demo stage under it; pass the "
                             "folder given to `cli.py demo --out`, or one holding train-sae / explain / patch-ioi outputs")
    scrub = PathScrubber(contents.root, out)  # paths are scrubbed in the data, before anything is escaped
    records = scrub.data(_load_records(contents), keep=KEEP_AS_WRITTEN)
    contents.settings = scrub.data(contents.settings)
    contents.stages = scrub.data(contents.stages)
    # the feature summaries are the slow part and may refuse the cache (UserError): all before anything is written
    pairings: list[dict] = []
    if given is not None:
        source, (summaries, skipped) = FeatureSource(None, "given by the caller"), given
    else:
        source = find_features_cache(contents, features_cache)
        summaries, skipped = summarise(source, contents.dictionaries, max_features, progress, allow_model_mismatch,
                                       pairings)
    skipped = [(str(name), scrub.text(str(why))) for name, why in skipped]
    out.mkdir(parents=True, exist_ok=True)
    feature_table: FeatureTable | None = None
    if summaries:
        feature_table = write_feature_pages(out, summaries, records, described, skipped, scrub=scrub.final)
    elif skipped:  # no dictionary could be summarised: the table section says which and why
        feature_table = FeatureTable(skipped=skipped)
    note = _features_note(source, contents, out, pages_limit(summaries, max_features)) + _mismatch_note(pairings)
    sections = [
        _header(contents, records, described is not None, out),
        _scores_section(records, out),
        _dictionaries_section(contents, out),
        *([descriptors_section(described, scrub.text)] if described is not None else []),
        _ioi_section(contents, out),
        table_section(feature_table, note),
        _features_section(records, described, feature_table),
        _run_section(contents),
        _footer(),
    ]
    html_text = page(f"dictlens report: {contents.root.resolve().name}", "\n".join(sections), table_scripts(feature_table))
    index = out / "index.html"
    write_text_atomic(index, scrub.final(html_text))
    if not summaries:  # every check has passed: an older build's pages would contradict "No feature pages"
        remove_feature_pages(out)
    return index


def _mismatch_note(pairings: list[dict]) -> str:
    """What the feature table says when --allow-model-mismatch let another model's dictionary be summarised."""
    allowed = [p["dictionary"] for p in pairings if p["status"].startswith("mismatch")]
    if not allowed:
        return ""
    return (f" --allow-model-mismatch: {', '.join(allowed)} {'was' if len(allowed) == 1 else 'were'} trained on "
            "another model than the cache's.")


def _features_note(source: Any, contents: RunContents, out: Path, max_features: int | None) -> str:
    if max_features == 0:
        return "--max-features 0 was given"
    if source.how == "given by the caller":
        return "Summaries computed by the caller of build_report."
    if source.cache is None:
        return source.missing_note
    if not contents.dictionaries:
        return "no dictionary folder under the run folder"
    limit = "every feature" if max_features is None else f"the first {max_features} features"
    return f"Computed from {shown_path(source.cache, out)} ({source.how}), {limit} of each dictionary."


# -- data ---------------------------------------------------------------------------------------------

def _load_records(contents: RunContents) -> list[dict[str, Any]]:
    if not contents.explanation_runs:
        return []
    from explain.compare import load_all

    return load_all(contents.explanation_runs)


def _dictionary_rows(contents: RunContents) -> list[dict[str, Any]]:
    rows = []
    for folder in contents.dictionaries:
        config = read_json(folder / "config.json")
        if "kind" not in config:
            continue  # a config.json of something else that happens to sit beside weights
        rows.append({"folder": folder, "name": config.get("name") or folder.name, **config,
                     "metrics": config.get("metrics") or {}})
    rows.sort(key=lambda r: (str(r.get("hook")), kind_order(str(r.get("kind"))), float(r.get("l1") or 0),
                             float(r.get("k") or 0), r["name"]))
    return rows


# -- sections -----------------------------------------------------------------------------------------

def _header(contents: RunContents, records: list[dict[str, Any]], with_descriptors: bool = False,
            out: Path | None = None) -> str:
    settings = contents.settings or {}
    model = settings.get("model")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    where = shown_path(contents.root, out) if out is not None else contents.root.resolve().name
    parts = [f"<h1>dictlens report</h1><p class=\"muted\">run folder <code>{esc(contents.root.resolve().name)}</code> "
             f"(<code>{esc(where)}</code> from this page)"
             + (f" · model <code>{esc(model)}</code>" if model else "") + f" · written {esc(when)}</p>",
             '<nav><a href="#scores">Explanation scores</a><a href="#dictionaries">Dictionaries</a>'
             + ('<a href="#descriptors">Descriptors</a>' if with_descriptors else '')
             + '<a href="#ioi">IOI patching</a><a href="#features-table">Feature table</a><a href="#features">Features</a>'
             '<a href="#run">Run</a></nav>']
    if any(_is_offline_llm(r.get("explainer")) or _is_offline_llm(r.get("simulator")) for r in records):
        parts.append('<div class="banner"><b>Read the LLM scores with care:</b> this run has scores from the offline '
                     '135M explainer <code>local:default</code>, which mean little (see '
                     '<a href="#scores">Explanation scores</a>).</div>')
    return "\n".join(parts)


def _not_run(what: str, how: str) -> str:
    return f'<p class="notrun">{esc(what)} was not run for this folder: {esc(how)}</p>'


def _scores_section(records: list[dict[str, Any]], out: Path) -> str:
    head = ('<h2 id="scores">Explanation scores by basis</h2>'
            '<p class="muted small">Mean Pearson correlation between simulated and true activations on held-out '
            'fragments (top-and-random, random-only, top-only), with 95% CIs (1.96·sd/√n), per scorer '
            '(explainer/simulator), basis and layer. Failed and skipped features are counted, never scored as 0. '
            '<em>mode</em>: how the simulator\'s answers were read, from log-probabilities (an expected value over 0–10) '
            'or, for a server without them, from text (one written integer per token); the two are shown apart.</p>'
            f'<p class="small">{OFFLINE_NOTE}</p>')
    if not records:
        return head + _not_run("Explanation (`cli.py explain`)", "run `cli.py explain ... --out RUN/explanations/NAME`")
    from explain.compare import summarise

    rows = summarise(records)

    def ci(stats: dict[str, Any]) -> str:
        if stats.get("mean") is None:
            return "n/a"
        return fmt(stats["mean"]) + ("" if stats.get("ci") is None else f" ± {fmt(stats['ci'])}")

    body = [[esc(r["scorer"]), esc(r.get("mode", "logprobs")), esc(r["site"]), "–" if r["layer"] is None else esc(r["layer"]), esc(r["kind"]),
             esc(r.get("dictionary", "")), fmt(r["n"], "d"), ci(r["top_and_random"]), ci(r["random"]),
             ci(r["top"]), fmt(r["frac_skipped"], ".0%"), fmt(r["frac_failed"], ".0%")] for r in rows]
    html_table = table(["scorer", "mode", "site", "layer", "basis", "dictionary", "n", "top+random", "random-only",
                        "top-only", "skipped", "failed"], body, "scores")
    png = plot_comparison(rows, out / "scores.png")
    img = png_img(png, "mean explanation score by basis and layer") if png else ""
    return head + html_table + img


_TRUTH_COLUMNS = (("true MMCS", "truth_mmcs"), ("F1", "truth_f1"), ("MCC", "truth_mcc"))


def _dictionaries_section(contents: RunContents, out: Path) -> str:
    head = ('<h2 id="dictionaries">Dictionaries</h2><p class="muted small">FVU: fraction of variance unexplained; '
            'L0: mean active features per token; dead: never active on the evaluation tokens; KL and ΔCE: next-token '
            'KL divergence and cross-entropy increase with the reconstruction spliced in at the hook '
            '(from <code>cli.py evaluate</code>; “–” where it was not computed). On a cache that records its true '
            'features (planted or synthetic), true MMCS, F1 and MCC say how well they were recovered '
            '(SynthSAEBench\'s definitions, <code>sae.ground_truth</code>).</p>')
    rows = _dictionary_rows(contents)
    if not rows:
        return head + _not_run("Dictionary training (`cli.py train-sae` / `cli.py baselines`)",
                               "put dictionary folders (config.json + weights.safetensors) under the run folder")
    # recovery of the true features, only where a dictionary was evaluated on a cache that records them
    truth = [c for c in _TRUTH_COLUMNS if any(c[1] in r["metrics"] for r in rows)]
    body = []
    for r in rows:
        m = r["metrics"]
        body.append([esc(r["name"]), esc(r.get("kind")), esc(r.get("hook")), fmt(r.get("n_features"), "d"),
                     fmt(r.get("ratio"), "g"), fmt(r.get("l1"), "g"), fmt(m.get("fvu"), ".4f"),
                     fmt(m.get("l0"), ".1f"), fmt(m.get("dead_fraction"), ".1%"),
                     fmt(m.get("twin_l0_share"), ".1%"), fmt(m.get("kl"), ".4f"),
                     fmt(m.get("ce_increase"), ".4f"), fmt(m.get("mmcs"), ".3f")]
                    + [fmt(m.get(key), ".3f") for _, key in truth])
    html_table = table(["name", "kind", "hook", "features", "R", "α", "FVU", "L0", "dead", "twin L0", "KL", "ΔCE",
                        "MMCS"] + [label for label, _ in truth], body, "dicts")
    plotted = [{"name": r["name"], "kind": r.get("kind"), "hook": r.get("hook"), "ratio": r.get("ratio"),
                "fvu": r["metrics"]["fvu"], "l0": r["metrics"]["l0"]} for r in rows
               if isinstance(r["metrics"].get("fvu"), (int, float)) and isinstance(r["metrics"].get("l0"), (int, float))]
    img = ""
    if plotted:
        img = png_img(plot_frontier_png(plotted, out / "frontier.png"), "FVU against mean L0 for every dictionary")
    return head + html_table + img


def _ioi_section(contents: RunContents, out: Path) -> str:
    head = ('<h2 id="ioi">IOI feature patching</h2><p class="muted small">At the dictionary\'s hook, the features in F '
            'take their counterfactual values (indirect object replaced by a third name), keeping the reconstruction '
            'error; the curve is KL(patched ‖ counterfactual) at the last position against |F|, from greedy '
            'un-patching over τ. Fewer features to reach a low KL = the IOI information is more localised. '
            'Where the run used --candidates K, the greedy starts from the K features with the largest attribution, '
            'and the dotted lines (and the "screen\'s top-m" counts) are the measured KL of the top K, 2K, 4K, … '
            'features by that ranking.</p>')
    if not contents.ioi_results:
        return head + _not_run("IOI patching (`cli.py patch-ioi`)", "run `cli.py patch-ioi ... --out RUN/ioi`")
    from causal.commands import features_to_reach  # the same count patch-ioi prints

    parts = [head]
    for i, path in enumerate(contents.ioi_results):
        result = read_json(path)
        kl0 = result.get("kl_clean_vs_counterfactual")
        parts.append(f"<h3>{esc(result.get('hook', ''))} <span class=\"muted small\">"
                     f"({esc(path.relative_to(contents.root))}, {fmt(result.get('n_prompts'), 'd')} prompts)</span></h3>"
                     f"<p>Before patching: mean logit difference IO − S <b>{fmt(result.get('clean_logit_diff'))}</b>, "
                     f"accuracy (IO &gt; S) <b>{fmt(result.get('clean_accuracy'), '.1%')}</b>, "
                     f"KL(clean ‖ counterfactual) <b>{fmt(kl0, '.4f')}</b>.</p>")
        if result.get("warning"):
            parts.append(f'<div class="banner">{esc(result["warning"])}</div>')
        dictionaries = result.get("dictionaries") or {}
        if not dictionaries:
            parts.append('<p class="notrun">no dictionary curves in this file</p>')
            continue
        body = []
        for name, entry in dictionaries.items():
            curve = entry.get("curve") or []
            kls = [c[1] for c in curve if c[1] is not None]
            row = [esc(name), esc(entry.get("kind")), fmt(entry.get("n_features"), "d"),
                   fmt(min(kls) if kls else None, ".4f")]
            screen = entry.get("screen_curve") or []
            if not isinstance(kl0, (int, float)):
                row += ["–", "–"]
            else:  # computed from the curves, so ioi.json files older than its features_to_reach work too
                reach, reach_screen = features_to_reach(curve, kl0), features_to_reach(screen, kl0)
                for key in reach:
                    cell = fmt(reach[key], "d", "never")
                    if screen:  # --candidates runs: the measured top-m states of the attribution screen
                        cell += f" (screen's top-m: {fmt(reach_screen[key], 'd', 'never')})"
                    row.append(cell)
            body.append(row)
        parts.append(table(["dictionary", "kind", "features", "min KL", "features for KL ≤ 25%",
                            "features for KL ≤ 10%"], body, "ioi"))
        png = plot_ioi(result, out / f"ioi_{i}.png")
        if png:
            parts.append(png_img(png, f"KL against number of patched features at {result.get('hook', '')}"))
    return "\n".join(parts)


def _features_section(records: list[dict[str, Any]], described: DescriptorResults | None = None,
                      pages: FeatureTable | None = None) -> str:
    """The explained features' cards; with feature pages, each links to its page, and a group with more than
    CARDS_ABOVE_THRESHOLD cards of features *that have a page* draws only the best CARDS_WITH_PAGES of those
    (10,000 cards would make index.html unusable; the table has them all, with their pages). A feature without a
    page (its dictionary was skipped, or beyond --max-features) has no other view: its card is always drawn.
    Smaller groups, the usual run, draw every card as before the pages existed."""
    head = ('<h2 id="features">Features</h2><p class="muted small">One card per explained feature, best score first '
            'within each basis. Token backgrounds: the feature\'s activation relative to its largest activation in '
            'the shown fragments (hover a token for its value). Top fragments are ranked by maximum activation; '
            '“train” ones were shown to the explainer, the others are held out. Random fragments are drawn '
            'among fragments where the feature is active (or all fragments, with <code>--random any</code>).</p>')
    if not records:
        return head + _not_run("Explanation (`cli.py explain`)", "no explanations.jsonl under the run folder")
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        key = (f"{r.get('explainer')}/{r.get('simulator')}", str(r.get("hook")), str(r.get("kind")),
               str(r.get("dictionary")))
        groups.setdefault(key, []).append(r)
    parts = [head]
    for (scorer, hook, kind, name), rs in sorted(groups.items()):
        shown = [r for r in rs if r.get("status") in ("ok", "failed")]
        shown.sort(key=lambda r: (r.get("status") != "ok", -_score(r), int(r.get("feature", 0))))
        skipped = [r for r in rs if r.get("status") == "skipped"]
        parts.append(f"<h3>{esc(name)} <span class=\"muted small\">{esc(kind)} · {esc(hook)} · scorer "
                     f"{esc(scorer)} · {len(shown)} card(s), {len(skipped)} skipped</span></h3>")
        hrefs = pages.hrefs if pages is not None else {}
        paged = [r for r in shown if _href(hrefs, r)]  # only these are in the table with a page: only these are cut
        cut = {id(r) for r in paged[CARDS_WITH_PAGES:]} if len(paged) > CARDS_ABOVE_THRESHOLD else set()
        drawn = [r for r in shown if id(r) not in cut]
        parts.append('<div class="cards">' + "".join(
            feature_card(r, chips_html(described, r.get("dictionary"), r.get("feature")) + _page_link(hrefs, r))
            for r in drawn) + "</div>")
        if cut:
            parts.append(f'<p class="small">{len(cut)} more card(s) of this group are not drawn here: each of these '
                         'features has a page of its own and a row in the <a href="#features-table">feature table</a>'
                         '; every card of a feature without a page is drawn above.</p>')
        if skipped:
            parts.append(skipped_table(skipped))
    return "\n".join(parts)


def _href(hrefs: dict[tuple[str, int], str], record: dict[str, Any]) -> str | None:
    try:
        return hrefs.get((str(record.get("dictionary")), int(record.get("feature"))))
    except (TypeError, ValueError):
        return None


def _page_link(hrefs: dict[tuple[str, int], str], record: dict[str, Any]) -> str:
    href = _href(hrefs, record)
    return f'<div class="small"><a href="{esc(href)}">feature page →</a></div>' if href else ""


def _score(record: dict[str, Any]) -> float:
    value = (record.get("scores") or {}).get("top_and_random")
    return float(value) if isinstance(value, (int, float)) else float("-inf")


def _run_section(contents: RunContents) -> str:
    head = '<h2 id="run">Run</h2>'
    parts = [head]
    if contents.stages:
        body = [[esc(s.get("stage")), fmt(s.get("seconds"), ".1f"), esc(s.get("finished_at", "")),
                 esc(s.get("note", ""))] for s in contents.stages]
        total = sum(float(s.get("seconds") or 0) for s in contents.stages)
        parts.append(table(["stage", "wall time (s)", "finished", "note"], body, "stages"))
        parts.append(f"<p class=\"small\">Total {total / 60:.1f} min (each stage's last completed invocation; "
                     "a resumed stage counts only its final part).</p>")
    else:
        parts.append('<p class="muted small">No stage markers (this folder was not made by <code>cli.py demo</code>).</p>')
    if contents.settings:
        parts.append("<details><summary>demo settings</summary><pre>"
                     + esc(json.dumps(contents.settings, indent=2, ensure_ascii=False)) + "</pre></details>")
    return "\n".join(parts)


def _footer() -> str:
    return ('<p class="muted small" style="margin-top:40px">Written by <code>python cli.py report</code> '
            '(dictlens). Self-contained: no network is needed to view this page.</p>')
