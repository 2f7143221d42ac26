"""The FVU-vs-L0 frontier: one point per dictionary, sweeps joined by lines."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from sae.registry import kind_names, kind_spec


def _marker(kind: str) -> str:
    """The kind's plot marker (its registry row); "o" for a kind this version does not know."""
    return kind_spec(kind).marker if kind in kind_names() else "o"


def plot_frontier(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """rows: dicts with name, kind, hook, ratio (SAEs), fvu, l0. Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    series: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        ratio = row.get("ratio")
        label = f"{row['kind']} R={ratio:g}" if ratio is not None else row["kind"]
        hooks = {r.get("hook") for r in rows}
        if len(hooks) > 1:
            label = f"{row.get('hook')}: {label}"
        series[(label, row["kind"])].append(row)
    fig, ax = plt.subplots(figsize=(7, 5))
    for (label, kind), points in sorted(series.items()):
        points = sorted(points, key=lambda r: r["l0"])
        xs = [max(p["l0"], 1e-3) for p in points]
        ys = [p["fvu"] for p in points]
        style = "-" if len(points) > 1 else ""
        ax.plot(xs, ys, style, marker=_marker(kind), label=label)
    ax.set_xscale("log")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a log axis overlap
    ax.set_xlabel("mean L0 (active features per token)")
    ax.set_ylabel("FVU (fraction of variance unexplained)")
    ax.set_title(title or "Reconstruction vs sparsity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_density(rows: list[dict], path: str | Path) -> Path:
    """Feature-density histograms (log10 firing rate on held-out tokens), one line per dictionary (SAEBench)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        density = row.get("density")
        if not density:
            continue
        bins = density["log10_bins"]
        centres = [(a + b) / 2 for a, b in zip(bins[:-1], bins[1:])]
        label = f"{row['name']} ({density['never_fired']} never fired)"
        ax.step(centres, density["counts"], where="mid", label=label)
    ax.set_xlabel("log10 firing rate (fraction of held-out tokens on which the feature is active)")
    ax.set_ylabel("features")
    ax.set_title("Feature density")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
