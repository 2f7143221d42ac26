"""The comparison of bases for descriptor discovery as one PNG (`describe --plot`).

Three panels, one bar per dictionary (labelled basis @ layer): the fraction
of features with at least one descriptor, the mean consistency Jaccard with
its 95 % interval, and descriptors per feature; the same numbers as the
console table and `summary.json`, so a basis that describes many features
inconsistently is told apart from one that describes few consistently.
"""

from __future__ import annotations

from pathlib import Path

from activations.hooknames import parse_hook
from common.runstate import replace_atomically, staging_file


def label_of(stats: dict) -> str:
    """`kind @ L<layer>` (the dictionary's name when two share both)."""
    hook = stats.get("hook") or ""
    try:
        layer = f"L{parse_hook(hook).layer}"
    except ValueError:
        layer = hook or "?"
    return f"{stats['kind']} @ {layer}"


def plot_comparison(summary: dict, path: str | Path) -> Path:
    """Write the PNG of `summary["dictionaries"]` to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    rows = summary["dictionaries"]
    labels = [label_of(s) for s in rows]
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({s['dictionary']})" for label, s in zip(labels, rows)]
    xs = list(range(len(rows)))
    fig, axes = plt.subplots(1, 3, figsize=(max(9, 1.4 * len(rows) * 3), 4.2))
    axes[0].bar(xs, [s["fraction_described"] for s in rows], color="#4c78a8")
    axes[0].set_title("features with >= 1 descriptor")
    axes[0].set_ylim(0, 1)
    means = [s["consistency"]["mean"] or 0.0 for s in rows]
    err = [[m - (s["consistency"]["ci95"] or [m, m])[0] for m, s in zip(means, rows)],
           [(s["consistency"]["ci95"] or [m, m])[1] - m for m, s in zip(means, rows)]]
    axes[1].bar(xs, means, yerr=err, capsize=4, color="#f58518")
    axes[1].set_title("consistency (Jaccard of halves, 95% CI)")
    axes[1].set_ylim(0, 1)
    axes[2].bar(xs, [s["descriptors_per_feature"] for s in rows], color="#54a24b")
    axes[2].set_title("descriptors per feature")
    for ax in axes:
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    fig.suptitle(f"descriptor discovery: {summary['documents']} documents, {summary['descriptors']} descriptors")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with staging_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        replace_atomically(tmp, path)  # a reader never sees a half-written image
    return path
