"""Tables and plots of `bench_frontier.py`: FVU at equal L0 (log-log interpolation), verdicts, per-layer figures."""

from __future__ import annotations

import math
from pathlib import Path

TARGET_L0 = (10, 20, 50, 100)
CONTROL = " (control)"  # series suffix of the fitted top-k controls: shown, never counted as "ours"
EXTRAPOLATE = 1.05  # a target L0 up to 5% outside a sweep's measured range is extrapolated (marked ~)


def hook_of(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def interpolate(points: list[tuple[float, float]], target: float) -> tuple[float | None, bool]:
    """Log-log linear FVU at L0 = target from (L0, FVU) points; (value, extrapolated) or (None, False)."""
    pts = sorted((l0, f) for l0, f in points if l0 > 0 and f > 0)
    if len(pts) < 2:
        return None, False
    lo, hi = pts[0][0], pts[-1][0]
    if target < lo / EXTRAPOLATE or target > hi * EXTRAPOLATE:
        return None, False
    if target <= lo:
        a, b = pts[0], pts[1]
    elif target >= hi:
        a, b = pts[-2], pts[-1]
    else:
        i = max(j for j in range(len(pts)) if pts[j][0] <= target)
        if pts[i][0] == target:
            return pts[i][1], False
        a, b = pts[i], pts[i + 1]
    t = (math.log(target) - math.log(a[0])) / (math.log(b[0]) - math.log(a[0]))
    return math.exp(math.log(a[1]) + t * (math.log(b[1]) - math.log(a[1]))), not (lo <= target <= hi)


def _fmt(v: float | None, extrap: bool = False, digits: int = 4) -> str:
    return "–" if v is None else ("~" if extrap else "") + f"{v:.{digits}f}"


def _verdict_table(series: dict[str, list[tuple[float, float]]], metric: str) -> tuple[list[str], dict]:
    controls = [s for s in series if s.endswith(CONTROL)]
    ours = [s for s in series if not s.startswith("sparsify") and s not in controls]
    refs = [s for s in series if s.startswith("sparsify")]
    lines = [f"{metric} at equal L0:", "", "| L0 | " + " | ".join(ours + refs + controls) + " | our best | best sparsify | "
             "ours ≤ sparsify? |", "|---" * (len(ours) + len(refs) + len(controls) + 4) + "|"]
    verdict = {}
    for t in TARGET_L0:
        vals = {s: interpolate(series[s], t) for s in ours + refs + controls}
        best_ours = min(((vals[s][0], s) for s in ours if vals[s][0] is not None), default=(None, None))
        best_ref = min(((vals[s][0], s) for s in refs if vals[s][0] is not None), default=(None, None))
        holds = None if best_ours[0] is None or best_ref[0] is None else best_ours[0] <= best_ref[0]
        per_ref = {s: (None if vals[s][0] is None or best_ours[0] is None else best_ours[0] <= vals[s][0]) for s in refs}
        verdict[t] = {"best_ours": best_ours, "best_ref": best_ref, "holds": holds, "per_ref": per_ref,
                      "values": {s: vals[s][0] for s in vals}}
        cells = [_fmt(*vals[s]) for s in ours + refs + controls]
        mark = {True: "yes", False: "**no**", None: "n/a"}[holds]
        lines.append(f"| {t} | " + " | ".join(cells) + f" | {_fmt(best_ours[0])} ({best_ours[1]}) | "
                     f"{_fmt(best_ref[0])} ({best_ref[1]}) | {mark} |")
    return lines, verdict


def layer_report(layer: int, rows: list[dict], speeds: dict[str, dict], batch_size: int) -> tuple[str, dict]:
    """The per-layer markdown tables and the verdict data."""
    lines = [f"### Layer {layer} (`{hook_of(layer)}`)", "",
             "| series | sweep | held-out L0 | held-out FVU | FVU incl. sinks | dead % | train s (sweep) | tokens/s per model |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    series: dict[str, list[tuple[float, float]]] = {}
    robust: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if "fvu" not in r:
            continue
        sp = speeds.get(r["series"], {})
        lines.append(f"| {r['series']} | {r['sweep']} | {r['l0']:.1f} | {r['fvu']:.4f} | {r['fvu_all']:.4f} "
                     f"| {100 * r['dead_fraction']:.1f} | {sp.get('seconds', float('nan')):.0f} "
                     f"| {sp.get('tokens_per_s_per_model', float('nan')):,.0f} |")
        series.setdefault(r["series"], []).append((r["l0"], r["fvu"]))
        robust.setdefault(r["series"], []).append((r["l0_all"], r["fvu_all"]))
    r0 = next(r for r in rows if "fvu" in r)
    lines += ["", f"{r0['eval_tokens']:,} held-out tokens: the {r0['sinks_excluded']} held-out tokens whose norm exceeds "
              f"the sink limit ({r0['sink_limit']:.0f}, train-sae's --sink-factor × the training split's median norm) "
              "are left out, as train-sae and evaluate do; \"incl. sinks\" measures on them too.", ""]
    table, verdict = _verdict_table(series, "Held-out FVU")
    table2, verdict2 = _verdict_table(robust, "Held-out FVU including sink tokens")
    lines += table + [""] + table2 + [""]
    lines.append("FVU at each L0 is log-log interpolated between a series' measured points (~: extrapolated up to 5% "
                 "beyond its measured L0 range; –: outside it).")
    refused = [r for r in rows if r.get("load_error")]
    if refused:
        same = [r for r in refused if r.get("sparsify_forward", {}).get("eval_tokens") == r["eval_tokens"]]
        worst = max((abs(r["sparsify_forward"]["fvu"] - r["fvu"]) for r in same), default=None)
        check = (f"sparsify's own forward in its process agrees to {worst:.1e} in FVU." if worst is not None else
                 "sparsify's own forward in its process was measured on another number of held-out tokens "
                 f"({refused[0].get('sparsify_forward', {}).get('eval_tokens')}), so it is not compared.")
        lines.append(f"\n{len(refused)} sparsify saves were refused by `sae.load` (first: \"{refused[0]['load_error']}\"); "
                     "they were measured by `reconstruction_metrics` on sparsify's own maths (TopK of "
                     "ReLU(W_enc(x − b_dec) + b_enc), x̂ = c·W_dec + b_dec) read from sae.safetensors; " + check)
    return "\n".join(lines), {"fvu": verdict, "fvu_all": verdict2}


def plot_layer(layer: int, rows: list[dict], path: Path, tokens: int) -> None:
    """FVU vs L0 (log x), sink tokens left out on the left (the default protocol), all tokens on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    markers = {"tied_sae": "o", "untied_sae": "s", "topk": "P", "batchtopk": "X"}
    series: dict[str, list[dict]] = {}
    for r in rows:
        if "fvu" in r:
            series.setdefault(r["series"], []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, (l0, fvu, title) in zip(axes, [("l0", "fvu", "sink tokens left out (the toolkit's default)"),
                                          ("l0_all", "fvu_all", "all held-out tokens, sinks included")]):
        for name, pts in series.items():
            pts = sorted(pts, key=lambda r: r[l0])
            ref = name.startswith("sparsify")
            ax.plot([p[l0] for p in pts], [p[fvu] for p in pts], "--" if ref else (":" if name.endswith(CONTROL) else "-"),
                    marker="D" if ref else markers.get(name, "o"), label=name,
                    color=({"B=256": "black", "B=4064": "grey"}.get(name.split()[-1]) if ref else None))
        ax.axvspan(10, 100, color="0.93", zorder=0)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("held-out L0 (mean active latents per token)")
        ax.set_ylabel("held-out FVU")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"SmolLM2-135M {hook_of(layer)}: 1,152 latents, {tokens:,} training tokens per model")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
