"""A hand-made `describe --out` folder (descriptors.jsonl + summary.json in the format `cli.py describe` writes) for
the synthetic run of tests/support/report_run.py, with descriptors that include a <script> and an onerror= attribute,
as an LLM or a corpus field could.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.report_run import HOOK, IMG

SAE = "tied_R2_l1_0.001"
HOSTILE = ["<script>alert('chip')</script>", "x\" onerror=\"alert(1)", IMG]


def write_describe_folder(folder: Path) -> dict:
    """A describe --out folder: tied SAE feature 1 gets three hostile descriptors, feature 0 none; neuron 2 one."""
    folder.mkdir(parents=True)
    records = [
        {"dictionary": SAE, "kind": "tied_sae", "hook": HOOK, "feature": 1, "status": "ok", "consistency": 0.5,
         "descriptors": [{"descriptor": HOSTILE[0], "frequency": 0.625, "lift": 3.1},
                         {"descriptor": HOSTILE[1], "frequency": 0.4, "lift": 2.5},
                         {"descriptor": HOSTILE[2], "frequency": 0.25, "lift": 2.0}]},
        {"dictionary": SAE, "kind": "tied_sae", "hook": HOOK, "feature": 0, "status": "none", "descriptors": [],
         "consistency": None, "reason": "no descriptor reaches frequency 0.2 with lift 2.0"},
        {"dictionary": "neuron", "kind": "neuron", "hook": HOOK, "feature": 2, "status": "ok", "consistency": 1.0,
         "descriptors": [{"descriptor": "Family of birds", "frequency": 0.8, "lift": 12.0}]},
    ]
    (folder / "descriptors.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    summary = {"documents": 400, "descriptors": 12, "dictionaries": [
        {"dictionary": SAE, "kind": "tied_sae", "hook": HOOK, "basis": "tied_sae @ L3", "n_features": 32,
         "fraction_described": 0.40625, "descriptors_per_feature": 1.21875,
         "consistency": {"mean": 0.6123, "ci95": [0.5012, 0.7234], "n": 13}},
        {"dictionary": "neuron", "kind": "neuron", "hook": HOOK, "basis": "neuron @ L3 <b>", "n_features": 16,
         "fraction_described": 0.0625, "descriptors_per_feature": 0.0625,
         "consistency": {"mean": None, "ci95": None, "n": 0}},
    ]}
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return summary
