"""The paper's comparison of bases (Cunningham et al., Fig. 2): mean score per basis per layer, 95% CIs.

Groups are (scorer, dictionary, hook site, layer), with the dictionary's kind
kept as a label: grouping by kind would average an α-sweep's SAEs, or several
pca_topk_k* controls, at one layer into one meaningless row. The dictionary is
its folder name, so the same name at several layers (one sweep per layer) is
one line across layers. The scorer is "explainer/simulator" from each record,
so a `tokens` run and an LLM run over the same features stay apart instead of
being averaged together; so do scores read from log-probabilities and from
text answers (`mode`, see `explain.scorers.base.record_mode`: an expected
value over 0..10 and one written integer are different measurements). Means and CIs use `ok` records with
a defined score (a null score is counted as `n_null`, never as 0); failed and
skipped features are reported as fractions of all records of the group.
CI half-width = 1.96 · sd / √n with the sample sd (ddof = 1).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from common.errors import UserError
from activations.hooknames import layer_and_site
from common.runstate import check_output_file, write_json_atomic
from explain.records_file import RESULTS_FILE, read_records
from explain.scorers.base import record_mode
from explain.scorers.stats import mean_ci

REPORTED = ("top_and_random", "random", "top")


def _results_path(p: str | Path) -> Path:
    p = Path(p)
    path = p / RESULTS_FILE if p.is_dir() else p
    if not path.exists():
        raise UserError(f"no {RESULTS_FILE} at {p}: pass the --out folder of `cli.py explain`")
    return path


def load_all(paths: list[str | Path]) -> list[dict[str, Any]]:
    """Records of every run; a feature present in two runs with the same scorer is counted once.

    When the second copy has the same explanation and scorers the first lacks
    (`scores.<name>`: e.g. an embedding-only run over the same features), those
    are added to the first, so each feature is one row with all its scores.
    """
    seen: dict[tuple, dict[str, Any]] = {}
    out = []
    for p in paths:
        path = _results_path(p)
        records = read_records(path)
        odd = next((n for n, r in enumerate(records, 1) if not {"feature", "status"} <= set(r)), None)
        if odd is not None:  # e.g. a corpus .jsonl: its rows would be counted as features of no run
            raise UserError(f"{path} record {odd} is not an explanation record (no feature / status): pass the --out "
                            f"folder of `cli.py explain` or its {RESULTS_FILE}")
        for r in _with_run_mode(records):
            key = (r.get("explainer"), r.get("simulator"), record_mode(r), r.get("dictionary_path"), r.get("feature"))
            if key in seen:
                _merge_scorers(seen[key], r)
                continue
            seen[key] = r
            out.append(r)
    return out


def _with_run_mode(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records of one run, its skipped and failed ones given the mode its scored ones share (in memory only),
    so that they are counted in the row of that mode instead of in a row of their own."""
    modes: dict[tuple, set[str]] = {(r.get("explainer"), r.get("simulator")): set() for r in records}
    for r in records:
        if r.get("status") == "ok":
            modes[(r.get("explainer"), r.get("simulator"))].add(record_mode(r, "simulation"))
    out = []
    for r in records:
        run = modes[(r.get("explainer"), r.get("simulator"))]
        out.append({**r, "mode": next(iter(run))} if r.get("status") != "ok" and not r.get("mode") and len(run) == 1
                   else r)
    return out


def _merge_scorers(kept: dict[str, Any], other: dict[str, Any]) -> None:
    if kept.get("status") != "ok" or other.get("status") != "ok" or kept.get("explanation") != other.get("explanation"):
        return
    scores = kept.setdefault("scores", {})
    for name, value in (other.get("scores") or {}).items():
        if isinstance(value, dict) and name not in scores:
            scores[name] = value


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (scorer, mode, dictionary, site, layer), sorted by scorer, mode, site, kind, dictionary, layer."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        layer, site = layer_and_site(r.get("hook", ""))
        scorer = f"{r.get('explainer')}/{r.get('simulator')}"
        name = r.get("dictionary") or r.get("kind")
        groups[(scorer, record_mode(r, "simulation"), name, r.get("kind"), site, layer)].append(r)
    rows = []
    for (scorer, mode, name, kind, site, layer), rs in groups.items():
        n = len(rs)
        status = {s: sum(r.get("status") == s for r in rs) for s in ("ok", "skipped", "failed")}
        row: dict[str, Any] = {"scorer": scorer, "mode": mode, "dictionary": name, "kind": kind, "site": site,
                               "layer": layer, "n": n,
                               "n_ok": status["ok"], "n_skipped": status["skipped"], "n_failed": status["failed"],
                               "frac_skipped": status["skipped"] / n, "frac_failed": status["failed"] / n}
        ok = [r for r in rs if r.get("status") == "ok"]
        for kind_name in REPORTED:
            values = [r["scores"].get(kind_name) for r in ok]
            stats = mean_ci([v for v in values if v is not None])
            stats["n_null"] = sum(v is None for v in values)
            row[kind_name] = stats
        rows.append(row)
    rows.sort(key=lambda r: (r["scorer"], r["mode"], r["site"], r["kind"] or "", str(r["dictionary"]),
                             -1 if r["layer"] is None else r["layer"]))
    return rows


def dictionary_label(row: dict[str, Any]) -> str:
    """The dictionary's name, with its kind when the name does not already say it (e.g. an SAE of a sweep)."""
    name, kind = str(row.get("dictionary")), str(row.get("kind"))
    return name if name == kind or name.startswith(kind) else f"{name} ({kind})"


def _fmt(stats: dict[str, Any]) -> str:
    if stats["mean"] is None:
        return "n/a"
    ci = "" if stats["ci"] is None else f" ± {stats['ci']:.3f}"
    return f"{stats['mean']:.3f}{ci}"


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ["scorer", "mode", "site", "layer", "basis", "dictionary", "n", "top+random (95% CI)",
            "random-only (95% CI)", "top-only (95% CI)", "skipped", "failed"]
    body = [[r["scorer"], r.get("mode", "logprobs"), r["site"], "-" if r["layer"] is None else str(r["layer"]), str(r["kind"]),
             str(r["dictionary"]), str(r["n"]),
             _fmt(r["top_and_random"]), _fmt(r["random"]), _fmt(r["top"]),
             f"{r['frac_skipped']:.0%}", f"{r['frac_failed']:.0%}"] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in [head] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Two panels (top-and-random, random-only): x = layer, one line with error bars per basis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    scorers = {r["scorer"] + ("" if r.get("mode") in ("logprobs", "none", None) else f" ({r['mode']})")
               for r in rows}
    sites = {r["site"] for r in rows}
    for r in rows:
        if r["layer"] is None:
            continue
        label = dictionary_label(r)
        if len(sites) > 1:
            label += f" ({r['site']})"
        mode = "" if r.get("mode") in ("logprobs", "none", None) else f" ({r['mode']})"
        if len(scorers) > 1:
            label += f" [{r['scorer']}{mode}]"
        series[label].append(r)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, title in zip(axes, ("top_and_random", "random"), ("top-and-random", "random-only")):
        for j, (label, rs) in enumerate(sorted(series.items())):
            rs = [r for r in sorted(rs, key=lambda r: r["layer"]) if r[key]["mean"] is not None]
            if not rs:
                continue
            offset = (j - (len(series) - 1) / 2) * 0.06  # spread markers so bars do not overlap
            ax.errorbar([r["layer"] + offset for r in rs], [r[key]["mean"] for r in rs],
                        yerr=[r[key]["ci"] or 0.0 for r in rs], marker="o", capsize=3, label=label)
        ax.set_title(f"{title} correlation")
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.axhline(0.0, color="0.7", lw=0.8)
    axes[0].set_ylabel("mean explanation score (95% CI)")
    fig.suptitle(f"explainer/simulator: {', '.join(sorted(scorers))}", fontsize=9)
    legend_axis = axes[1] if axes[1].get_legend_handles_labels()[0] else axes[0]  # random-only may be all null
    if legend_axis.get_legend_handles_labels()[0]:
        legend_axis.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare(explanations: list[str | Path], plot_path: str | Path | None = None,
            json_path: str | Path | None = None, scorers_plot: str | Path | None = None) -> list[dict[str, Any]]:
    """Print the table of every group (and, with several scorers, theirs and their agreement); optionally
    write the plots and the tables as JSON (`groups`, plus `scorer_groups` and `agreement`)."""
    from explain import scorer_compare as sc

    for path, flag in ((plot_path, "--plot"), (json_path, "--json"), (scorers_plot, "--scorers-plot")):
        if path:
            check_output_file(path, flag)  # before reading anything: a bad path fails at once
    records = load_all(explanations)
    if not records:
        raise UserError(f"no records in {', '.join(map(str, explanations))}: run `cli.py explain` first")
    rows = summarise(records)
    print(format_table(rows))
    doc: dict[str, Any] = {"sources": [str(x) for x in explanations], "groups": rows}
    if sc.has_scorers(records) or scorers_plot:
        doc["scorer_groups"], doc["agreement"] = sc.summarise_scorers(records), sc.agreement(records)
        print("\nevery scorer (headline metric first; null = undefined for that feature, not counted)")
        print(sc.format_scorer_table(doc["scorer_groups"]))
        print("\nscorer agreement over features (Spearman rho of headline metrics)")
        print(sc.format_agreement(doc["agreement"]))
    if plot_path:
        print(f"wrote {plot(rows, plot_path)}")
    if scorers_plot:
        print(f"wrote {sc.plot_scorers(doc['scorer_groups'], doc['agreement'], scorers_plot)}")
    if json_path:
        p = Path(json_path)
        p.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(p, doc)
        print(f"wrote {p}")
    return rows
