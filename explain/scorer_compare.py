"""Every scorer side by side: mean per basis and layer with 95% CIs, and how much the scorers agree.

`compare`'s first table is the papers' (simulation-style correlations of
the scorer `--simulator` named). When records hold other scorers
(`scores.<name>`, see `explain.feature`), this module adds:

* one row per (explainer, scorer, metric, dictionary, layer): mean ± 1.96·sd/√n
  over the features whose metric is defined (a null is counted, never 0);
  each scorer's headline metric, plus the spec's extra metrics (balanced
  accuracy and F1 for detection and fuzzing), both from its `ScorerSpec`;
* the scorer-agreement table: per explainer, Spearman's ρ between every two
  scorers' headline metrics over the features where both are defined (as
  Paulo et al. compare fuzzing and detection with simulation);
* a PNG: one panel per scorer (mean against layer, one line per basis and
  explainer) and one agreement matrix per explainer.

Records from before `scores.<name>` existed count as their main scorer
(the token-list floor or simulation, from the top-level `scores`). A scorer
whose answers were read as text (`explain.scorers.base.record_mode`) is a
scorer of its own here, "simulation [text]", so its scores are never
averaged or correlated with those read from log-probabilities.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

from explain.scorers.base import COST_KEYS, record_mode
from explain.scorers.metrics import spearman
from explain.scorers.spec import SCORERS
from explain.scorers.stats import mean_ci

MAIN_KEYS = ("top_and_random", "top", "random")


def main_scorer(record: dict[str, Any]) -> str:
    return "tokens" if record.get("simulator") == "tokens" else "simulation"


def scorer_key(record: dict[str, Any], scorer: str) -> str:
    """The scorer's name, with its answer mode when that is not log-probabilities: "simulation [text]"."""
    mode = record_mode(record, scorer)
    return scorer if mode in ("logprobs", "none") else f"{scorer} [{mode}]"


def base_name(key: str) -> str:
    """The registry name in a `scorer_key`."""
    return key.split(" [", 1)[0]


def scorer_metrics(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Scorer key -> its metrics in one record (old records: the main scorer from the top-level scores)."""
    scores = record.get("scores") or {}
    out = {scorer_key(record, k): {m: v for m, v in v.items() if m not in COST_KEYS}
           for k, v in scores.items() if isinstance(v, dict)}
    main = scorer_key(record, main_scorer(record))
    if main not in out and any(scores.get(k) is not None for k in MAIN_KEYS):
        out[main] = {k: scores.get(k) for k in MAIN_KEYS}
    return out


def spec_headline(scorer: str) -> str | None:
    """The headline metric of a `scorer_key`'s registered scorer (None: not registered)."""
    spec = SCORERS.get(base_name(scorer))
    return spec.headline if spec is not None else None


def headline(scorer: str, metrics: dict[str, Any]) -> str | None:
    """The metric shown for `scorer`: its spec's headline, else (a scorer no longer registered) its first number."""
    return spec_headline(scorer) or next((k for k, v in metrics.items() if isinstance(v, (int, float))), None)


def has_scorers(records: list[dict[str, Any]]) -> bool:
    """Whether any record holds a `scores.<name>` entry (otherwise the first table says everything)."""
    return any(isinstance(v, dict) for r in records for v in (r.get("scores") or {}).values())


def _layer_site(record: dict[str, Any]) -> tuple[int | None, str]:
    from activations.hooknames import layer_and_site

    return layer_and_site(record.get("hook", ""))


def by_feature(records: list[dict[str, Any]]) -> dict[tuple, tuple[dict[str, Any], dict[str, dict[str, Any]]]]:
    """(explainer, dictionary path, feature) -> (its first `ok` record, every scorer's metrics over all records).

    One feature explained by one explainer is one row even when its scorers
    come from several runs (a token-list run scored by embedding, and an LLM
    run over a subset of its features scored by detection): the first value
    of each scorer is kept, so nothing is counted twice.
    """
    out: dict[tuple, tuple[dict[str, Any], dict[str, dict[str, Any]]]] = {}
    for r in records:
        if r.get("status") != "ok":
            continue
        key = (str(r.get("explainer")), r.get("dictionary_path"), r.get("feature"))
        first, scores = out.setdefault(key, (r, {}))
        if r is not first and r.get("explanation") != first.get("explanation"):
            continue  # another explanation of the feature (another seed or setting): not the same row
        for scorer, metrics in scorer_metrics(r).items():
            scores.setdefault(scorer, metrics)
    return out


def summarise_scorers(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (explainer, scorer, metric, dictionary, site, layer) over the features of `by_feature`."""
    groups: dict[tuple, list[Any]] = defaultdict(list)
    for r, scores in by_feature(records).values():
        layer, site = _layer_site(r)
        name = r.get("dictionary") or r.get("kind")
        for scorer, metrics in scores.items():
            main = headline(scorer, metrics)
            spec = SCORERS.get(base_name(scorer))
            for metric in ([main] if main else []) + list(spec.extra_metrics if spec is not None else ()):
                key = (str(r.get("explainer")), scorer, metric, name, r.get("kind"), site, layer)
                groups[key].append(metrics.get(metric))
    rows = []
    for (explainer, scorer, metric, name, kind, site, layer), values in groups.items():
        stats = mean_ci([v for v in values if v is not None])
        rows.append({"explainer": explainer, "scorer": scorer, "metric": metric, "dictionary": name, "kind": kind,
                     "site": site, "layer": layer, "n_records": len(values),
                     "n_null": sum(v is None for v in values), **stats})
    rows.sort(key=lambda r: (r["explainer"], r["scorer"], r["metric"] != spec_headline(r["scorer"]), r["metric"],
                             r["site"], -1 if r["layer"] is None else r["layer"], str(r["kind"]), str(r["dictionary"])))
    return rows


def agreement(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per explainer, Spearman's ρ between each two scorers' headline metrics over the features both scored."""
    per: dict[str, dict[tuple, dict[str, float]]] = defaultdict(dict)
    for (explainer, path, feature), (_, scores) in by_feature(records).items():
        values = {}
        for scorer, metrics in scores.items():
            key = headline(scorer, metrics)
            if key and metrics.get(key) is not None:
                values[scorer] = float(metrics[key])
        per[explainer][(path, feature)] = values
    rows = []
    for explainer, features in sorted(per.items()):
        scorers = sorted({s for v in features.values() for s in v})
        for a, b in combinations(scorers, 2):
            pairs = [(v[a], v[b]) for v in features.values() if a in v and b in v]
            rho, why = spearman([p[0] for p in pairs], [p[1] for p in pairs])
            rows.append({"explainer": explainer, "a": a, "b": b, "n": len(pairs), "rho": rho, "note": why})
    return rows


def _table(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in [head] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_scorer_table(rows: list[dict[str, Any]]) -> str:
    def cell(r: dict[str, Any]) -> str:
        if r["mean"] is None:
            return "n/a"
        return f"{r['mean']:.3f}" + ("" if r["ci"] is None else f" ± {r['ci']:.3f}")

    body = [[r["explainer"], r["scorer"], r["metric"], r["site"], "-" if r["layer"] is None else str(r["layer"]),
             str(r["kind"]), str(r["dictionary"]), str(r["n"]), str(r["n_null"]), cell(r)] for r in rows]
    return _table(["explainer", "scorer", "metric", "site", "layer", "basis", "dictionary", "n", "null",
                   "mean (95% CI)"], body)


def format_agreement(rows: list[dict[str, Any]]) -> str:
    body = [[r["explainer"], r["a"], r["b"], str(r["n"]), "n/a" if r["rho"] is None else f"{r['rho']:+.3f}"]
            for r in rows]
    return _table(["explainer", "scorer", "scorer", "features", "Spearman rho"], body)


def plot_scorers(rows: list[dict[str, Any]], agree: list[dict[str, Any]], path: str | Path) -> Path:
    """Headline metric per scorer against layer (one line per basis and explainer) + one agreement matrix each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    heads = [r for r in rows if r["metric"] == (spec_headline(r["scorer"]) or r["metric"]) and r["layer"] is not None]
    scorers = sorted({r["scorer"] for r in heads})
    explainers = sorted({a["explainer"] for a in agree})
    n = max(1, len(scorers)) + len(explainers)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.8), squeeze=False)
    for ax, scorer in zip(axes[0], scorers):
        lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in heads:
            if r["scorer"] == scorer:
                lines[f"{r['kind']} [{r['explainer']}]"].append(r)
        for j, (label, rs) in enumerate(sorted(lines.items())):
            rs = [r for r in sorted(rs, key=lambda r: r["layer"]) if r["mean"] is not None]
            offset = (j - (len(lines) - 1) / 2) * 0.05
            ax.errorbar([r["layer"] + offset for r in rs], [r["mean"] for r in rs], yerr=[r["ci"] or 0 for r in rs],
                        marker="o", capsize=2, label=label)
        ax.set_title(f"{scorer} ({spec_headline(scorer) or ''})", fontsize=9)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if scorers:
        axes[0][0].legend(fontsize=6, loc="best")
    for ax, explainer in zip(axes[0][len(scorers) or 1:], explainers):
        pairs = [a for a in agree if a["explainer"] == explainer]
        names = sorted({a["a"] for a in pairs} | {a["b"] for a in pairs})
        mat = np.eye(len(names))
        for a in pairs:
            i, k = names.index(a["a"]), names.index(a["b"])
            mat[i, k] = mat[k, i] = np.nan if a["rho"] is None else a["rho"]
        ax.imshow(mat, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(names)), names, rotation=45, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        for i in range(len(names)):
            for k in range(len(names)):
                ax.text(k, i, "" if np.isnan(mat[i, k]) else f"{mat[i, k]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_title(f"Spearman rho [{explainer}]", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
