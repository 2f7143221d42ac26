"""The report's PNGs, drawn by the stages' own plot functions so the dashboard matches the CLI's plots.

Each function writes its PNG beside index.html and returns the bytes to
embed (None when there is nothing to draw).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_comparison(rows: list[dict[str, Any]], path: Path) -> bytes | None:
    """Rows of `explain.compare.summarise`. Over many layers, compare's own line plot (score against layer);
    over one or two, bars per basis, since a line plot of one layer is a column of dots."""
    layers = {r.get("layer") for r in rows if r.get("layer") is not None}
    if not layers:
        return None
    if len(layers) > 2:
        from explain.compare import plot

        return Path(plot(rows, path)).read_bytes()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from explain.compare import dictionary_label

    # one bar group per dictionary (not per kind: an α-sweep's SAEs are different bases), in basis order
    from sae.registry import kind_order

    order = {dictionary_label(r): (kind_order(str(r["kind"])), str(r["kind"]), dictionary_label(r)) for r in rows}
    kinds = sorted(order, key=order.__getitem__)
    series: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r.get("layer") is None:
            continue
        mode = "" if r.get("mode") in ("logprobs", "none", None) else f" ({r['mode']})"
        label = f"{r['scorer']}{mode} · layer {r['layer']}" + (f" {r['site']}" if len({x['site'] for x in rows}) > 1 else "")
        series.setdefault(label, {})[dictionary_label(r)] = r
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    width = 0.8 / max(1, len(series))
    for ax, key, title in zip(axes, ("top_and_random", "random"), ("top-and-random", "random-only")):
        for j, (label, by_kind) in enumerate(sorted(series.items())):
            xs, ys, errs = [], [], []
            for i, kind in enumerate(kinds):
                stats = by_kind.get(kind, {}).get(key) or {}
                if stats.get("mean") is None:
                    continue
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(stats["mean"])
                errs.append(stats.get("ci") or 0.0)
            ax.bar(xs, ys, width=width * 0.92, yerr=errs, capsize=3, label=label)
        ax.set_xticks(range(len(kinds)))
        ax.set_xticklabels(kinds)
        ax.axhline(0.0, color="0.5", lw=0.8)
        ax.set_title(f"{title} correlation")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("mean score (95% CI)")
    axes[1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path).read_bytes()


def plot_frontier_png(rows: list[dict[str, Any]], path: Path) -> bytes:
    from sae.plot import plot_frontier

    return Path(plot_frontier(rows, path, title="Reconstruction vs sparsity")).read_bytes()


def plot_ioi(result: dict[str, Any], path: Path) -> bytes | None:
    entries = result.get("dictionaries") or {}
    if not entries or not isinstance(result.get("kl_clean_vs_counterfactual"), (int, float)):
        return None
    from causal.plot import plot_curves

    clean = {**result, "dictionaries": {name: {**e, "kind": e.get("kind") or "?", "curve": e.get("curve") or []}
                                        for name, e in entries.items()}}
    return Path(plot_curves(clean, path)).read_bytes()
