"""`bench_synth.py`'s tables and item-4 verdicts: F1 compared at equal L0, interpolated between sweep points.

A k or an L1 / L0 coefficient does not land an SAE exactly on a target L0
(BatchTopK's inference threshold, an L1 penalty, a JumpReLU threshold all
drift), so each (library, kind) is read at the target L0 by linear
interpolation of F1 in L0 between its two nearest sweep points on either side
of the target. A target no sweep point brackets is not interpolated: the
verdict then says "not bracketed" and shows the nearest point instead of
guessing beyond the measured range.
"""

from __future__ import annotations

from synth_saelens import family

TOLERANCE = 0.05  # an L0 this close to the target counts as on it (a k of 10 averages 10.0 up to rounding)


def f1_at(rows: list[dict], target: float) -> dict | None:
    """F1 (and MCC) of one (library, kind)'s sweep at L0 = `target`, linear in L0 between the bracketing points."""
    below = [r for r in rows if r["l0"] <= target + TOLERANCE]
    above = [r for r in rows if r["l0"] >= target - TOLERANCE]
    if not below or not above:
        return None
    a, b = max(below, key=lambda r: r["l0"]), min(above, key=lambda r: r["l0"])
    w = 0.0 if b["l0"] <= a["l0"] else min(1.0, max(0.0, (target - a["l0"]) / (b["l0"] - a["l0"])))
    return {"f1": a["f1"] + w * (b["f1"] - a["f1"]), "mcc": a["mcc"] + w * (b["mcc"] - a["mcc"]),
            "from": f"{a['l0']:.1f}-{b['l0']:.1f}" if a is not b else f"{a['l0']:.1f}"}


def nearest(rows: list[dict], target: float) -> dict:
    return min(rows, key=lambda r: abs(r["l0"] - target))


def groups(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Rows by (library, kind)."""
    out: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        out.setdefault((r["library"], r["kind"]), []).append(r)
    return out


def table(rows: list[dict]) -> str:
    """Every SAE measured, by family, library and L0."""
    head = (f"{'kind':20s} {'library':8s} {'name':34s} {'value':>7s} {'L0':>6s} {'F1':>6s} {'MCC':>6s} {'uniq':>6s} "
            f"{'EV':>6s} {'dead':>5s}")
    lines = [head, "-" * len(head)]
    key = (lambda r: (family(r["kind"]) if r["library"] == "dictlens" else r["kind"], r["library"] != "SAELens",
                      r["kind"], r["l0"]))
    for r in sorted(rows, key=key):
        lines.append(f"{r['kind']:20s} {r['library']:8s} {r['name'][:34]:34s} {r['value']:7g} {r['l0']:6.1f} "
                     f"{r['f1']:6.3f} {r['mcc']:6.3f} {r['uniqueness']:6.3f} {r['explained_variance']:6.3f} "
                     f"{r['dead']:5d}")
    return "\n".join(lines)


def equal_l0_table(rows: list[dict], l0s: list[int]) -> tuple[str, list[dict]]:
    """F1 / MCC of every (library, kind) at each target L0, and ours / SAELens's of the same family."""
    by = groups(rows)
    cells = []
    for (library, kind), members in sorted(by.items(), key=lambda kv: (family(kv[0][1]) if kv[0][0] == "dictlens"
                                                                         else kv[0][1], kv[0][0] != "SAELens")):
        fam = family(kind) if library == "dictlens" else kind
        for t in l0s:
            cells.append({"library": library, "kind": kind, "family": fam, "target": t, "at": f1_at(members, t),
                          "nearest": nearest(members, t), "members": members})
    theirs = {(c["family"], c["target"]): c for c in cells if c["library"] == "SAELens"}
    head = (f"{'kind':20s} {'library':8s} {'L0':>4s} {'F1':>6s} {'MCC':>6s} {'from L0':>12s} {'ours-theirs':>11s} "
            f"{'ours/theirs':>11s}")
    lines = [head, "-" * len(head)]
    for c in cells:
        other = theirs.get((c["family"], c["target"])) if c["library"] == "dictlens" else None
        both = bool(other and c["at"] and other["at"])
        c["diff"] = c["at"]["f1"] - other["at"]["f1"] if both else None
        c["ratio"] = c["at"]["f1"] / other["at"]["f1"] if both and other["at"]["f1"] > 0 else None
        if c["at"]:
            f1, mcc, src = f"{c['at']['f1']:6.3f}", f"{c['at']['mcc']:6.3f}", c["at"]["from"]
        else:
            n = c["nearest"]
            f1, mcc, src = "  -   ", "  -   ", f"near {n['l0']:.1f}: {n['f1']:.3f}"
        diff = f"{c['diff']:+.3f}" if c["diff"] is not None else "-"
        ratio = f"{c['ratio']:.3f}" if c["ratio"] is not None else "-"
        lines.append(f"{c['kind']:20s} {c['library']:8s} {c['target']:4d} {f1} {mcc} {src:>12s} {diff:>11s} {ratio:>11s}")
    return "\n".join(lines), cells


def check_targets(cells: list[dict], l0s: list[int]) -> list[str]:
    """Issue 29 item 4 at this scale, at equal L0: our F1 ≥ SAELens's − 0.01 per shared kind and target L0;
    our best kind ≥ SAELens's Matryoshka."""
    out = []
    theirs = {(c["family"], c["target"]): c for c in cells if c["library"] == "SAELens"}
    for c in cells:
        other = theirs.get((c["family"], c["target"])) if c["library"] == "dictlens" else None
        if other is None:
            continue
        what = f"{c['kind']} vs SAELens {other['kind']} at L0 {c['target']}"
        if c["at"] is None or other["at"] is None:
            n, m = c["nearest"], other["nearest"]
            line = (f"not bracketed: {what} (nearest: ours F1 {n['f1']:.3f} at L0 {n['l0']:.1f}, SAELens "
                    f"{m['f1']:.3f} at L0 {m['l0']:.1f})")
            ours_there = f1_at(c["members"], m["l0"]) if other["at"] is None else None
            if ours_there is not None:  # equal L0 after all, at the L0 SAELens reached instead of the target
                line += f"; at SAELens's L0 {m['l0']:.1f} ours is {ours_there['f1']:.3f}"
            out.append(line)
            continue
        ok = c["at"]["f1"] >= other["at"]["f1"] - 0.01
        out.append(f"{'met' if ok else 'NOT met'}: {what}: F1 {c['at']['f1']:.3f} vs {other['at']['f1']:.3f}")
    for t in l0s:
        ours = [c for c in cells if c["library"] == "dictlens" and c["target"] == t and c["at"]]
        mat = theirs.get(("matryoshka", t))
        if ours and mat and mat["at"]:
            best = max(ours, key=lambda c: c["at"]["f1"])
            out.append(f"{'met' if best['at']['f1'] >= mat['at']['f1'] else 'NOT met'}: our best at L0 {t} is "
                       f"{best['kind']} F1 {best['at']['f1']:.3f} vs SAELens Matryoshka {mat['at']['f1']:.3f}")
    return out
