"""Markdown tables of `describe` runs (issue 25): one row per dictionary, the paper's rule and ours side by side.

    python benchmarks/describe_tables.py runs/i25/wiki_minilm_cls_described [more *_described folders ...]

For each folder F it also reads F_lift (the same run under our rule) when it exists.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _cons(s: dict) -> str:
    c = s["consistency"]
    if c["mean"] is None:
        return "–"
    return f"{c['mean']:.2f} [{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}] n={c['n']}"


def _at(s: dict) -> str:
    at = s.get("at_k")
    if not at or at.get("precision") is None:
        return ""
    return f"{at['precision']:.2f} / {at['recall']:.2f}"


def rows(folder: Path) -> list[str]:
    paper = json.loads((folder / "summary.json").read_text())
    lift_path = folder.with_name(folder.name + "_lift") / "summary.json"
    lift = json.loads(lift_path.read_text()) if lift_path.exists() else None
    out = []
    for i, s in enumerate(paper["dictionaries"]):
        o = lift["dictionaries"][i] if lift else None
        spread = s["consistency_over_splits"]
        splits = ("–" if spread["mean"] is None else
                  f"{spread['mean']:.2f} [{spread['ci95'][0]:.2f}, {spread['ci95'][1]:.2f}]")
        cells = [folder.name.replace("_described", ""), s["basis"], str(s["n_features"]),
                 f"{s['fraction_described']:.2f}", _cons(s), splits, str(s["empty_both_halves"]["every_split"]), _at(s)]
        if o is not None:
            cells += [f"{o['fraction_described']:.2f}", _cons(o), str(o["empty_both_halves"]["every_split"]), _at(o)]
        out.append("| " + " | ".join(cells) + " |")
    return out


def main() -> None:
    head = ("| run | basis | features | described | consistency [95 % CI over features] | mean of the 5 splits [CI] | "
            "empty in every split | P@2 / R@2 | ours: described | ours: consistency | ours: empty | ours: P@2 / R@2 |")
    print(head)
    print("|" + "|".join(["---"] * (head.count("|") - 1)) + "|")
    for folder in sys.argv[1:]:
        print("\n".join(rows(Path(folder))))


if __name__ == "__main__":
    main()
