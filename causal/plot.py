"""KL(patched ‖ counterfactual) against the number of patched features, one line per dictionary."""

from __future__ import annotations

from pathlib import Path


def plot_curves(result: dict, path: str | Path) -> Path:
    """Writes a PNG from an ioi.json result; the dashed line is KL(clean ‖ counterfactual) (nothing patched).

    Dotted lines with crosses are the screen's top-m states (`screen_curve`), where a run used --candidates.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, entry in result["dictionaries"].items():
        points = sorted((n, kl) for n, kl, _ in entry["curve"])
        xs = [max(n, 0.8) for n, _ in points]  # log axis: draw "0 features" just left of 1
        (line,) = ax.plot(xs, [kl for _, kl in points], marker=".", label=f"{name} ({entry['kind']})")
        if entry.get("screen_curve"):  # top-m by the attribution screen, joined to the all-patched point
            ladder = sorted([(n, kl) for n, kl, _ in entry["screen_curve"]] + [points[-1]])
            ax.plot([n for n, _ in ladder], [kl for _, kl in ladder], linestyle=":", marker="x", markersize=4,
                    color=line.get_color())
    ax.axhline(result["kl_clean_vs_counterfactual"], color="black", linestyle="--", linewidth=1,
               label="KL(clean ‖ counterfactual)")
    from causal.settings import REACH_FRACTIONS

    for fraction in REACH_FRACTIONS:  # the thresholds ioi.json's features_to_reach counts against
        ax.axhline(fraction * result["kl_clean_vs_counterfactual"], color="grey", linestyle=":", linewidth=0.8)
        ax.annotate(f"{fraction:.0%}", (1.0, fraction * result["kl_clean_vs_counterfactual"]),
                    xycoords=("axes fraction", "data"), fontsize=7, color="grey", ha="right", va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("number of patched features")
    ax.set_ylabel("KL(patched ‖ counterfactual), mean over prompts")
    ax.set_title(f"IOI feature patching at {result.get('hook', '')}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
