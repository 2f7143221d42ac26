"""Hand-made per-feature numbers for the feature-page tests, and what those tests read back from the pages.

The numbers are `DictionarySummaries` (the contract of `report.feature_stats`) with hostile corpus tokens: a
<script> and an <img onerror> that would mark <body> if they ever ran, broken UTF-8 (U+FFFD, a lone surrogate),
right-to-left text, a U+202E override and U+2028. `build_feature_report` makes the report of the `report` fixture
(tests/conftest.py): the synthetic run of tests/support/report_run.py plus an explanation run with a distinctive word
and several scorers, so the joins are checked on known data.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from report.feature_summary import DictionarySummaries, Example, FeatureSummary, Quantile
from report.build import build_report
from tests.support.report_run import HOOK, IMG, SCRIPT, chromium_args, chromium_path, make_record, make_run

SAE = "tied_R2_l1_0.001"
HOSTILE = [" <script>alert(1)</script>", SCRIPT, IMG, " \ufffd\ufffd", "\ud800x", " שלום", " مرحبا",
           " \u202eevil", " a\u2028b", "\n"]
WORD = "giraffe"  # only the explanation of SAE feature 5 has it


def feature_summaries(seed: int = 0, n_neuron: int = 16) -> list[DictionarySummaries]:
    rng = np.random.default_rng(seed)
    out = []
    for name, kind, n in ((SAE, "tied_sae", 8), ("neuron", "neuron", n_neuron)):  # the SAE's first 8 of 32 features
        fragments = {0: list(HOSTILE)} | {k: [f" w{k}_{j}" for j in range(len(HOSTILE))] for k in (3, 7, 11)}
        features = []
        for i in range(n):
            acts = lambda: [round(float(a), 4) for a in np.maximum(rng.normal(0.3, 1.0, len(HOSTILE)), 0)]
            top = [Example(int(k), acts()) for k in (0, 3, 7)]
            mx = max(max(e.acts) for e in top)
            counts = [int(c) for c in rng.integers(0, 5, 24)]
            features.append(FeatureSummary(
                index=i, density=float(rng.uniform(0.001, 0.2)), max_act=mx,
                hist_edges=[mx * b / 24 for b in range(25)], hist_counts=counts, top=top,
                quantiles=[Quantile(mx * q / 5, mx * (q + 1) / 5, [Example(11, acts())] if q % 2 else [])
                           for q in range(5)],
                promoted=[(f" <b>up{j}</b>", 2.0 - j / 10) for j in range(10)],
                suppressed=[(f"\u202edown{j}", -1.0 - j / 10) for j in range(10)],
                neighbours=[((i + 1) % n, 0.5), (n + 3, 0.25)]))  # n + 3: a feature without a page
        out.append(DictionarySummaries(name=name, kind=kind, hook=HOOK, n_tokens=640, fragments=fragments,
                                       features=features))
    return out


def write_extra_explanations(root: Path) -> None:
    """An explanation run with a distinctive word and detection + embedding scores for SAE feature 5."""
    rng = np.random.default_rng(1)
    record = make_record(root / "dicts" / SAE, "tied_sae", 5, "ok", rng, explainer="tokens")
    record["explanation"] = f"long-necked {WORD} <img src=x onerror=alert(5)>"
    record["scores"]["detection"] = {"auroc": 0.81, "balanced_accuracy": 0.7, "f1": 0.66, "n_prompts": 3}
    record["scores"]["embedding"] = {"auroc": 0.62, "n_tokens": 100}
    folder = root / "explanations" / "extra"
    folder.mkdir(parents=True)
    (folder / "explanations.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")


def page_data(page: Path) -> dict:
    text = page.read_text(encoding="utf-8")
    m = re.search(r'<script type="application/json" id="dl-data">(.*?)</script>', text, re.S)
    assert m, page
    return json.loads(m.group(1))


def table_data(index: Path) -> dict:
    m = re.search(r'<script type="application/json" id="dl-table-data">(.*?)</script>',
                  index.read_text(encoding="utf-8"), re.S)
    assert m
    return json.loads(m.group(1))


def dump_dom(url: str, profile: Path) -> str:
    return subprocess.run(chromium_args(profile) + ["--dump-dom", url], capture_output=True, text=True,
                          timeout=120, check=True).stdout


needs_chromium = pytest.mark.skipif(chromium_path() is None,
                                    reason="headless Chromium is not installed (Debian: apt-get install -y chromium)")


def build_feature_report(root: Path) -> dict:
    """The report of the `report` fixture: a synthetic run under `root`, the extra explanations, feature pages."""
    make_run(root, with_llm=False)
    write_extra_explanations(root)
    summaries = feature_summaries()
    index = build_report(root, root / "report", summaries=(summaries, [("ica_x", "hook blocks.9.hook_resid_post "
                                                                         "is not in cache_frags.h5")]))
    return {"root": root, "index": index, "summaries": summaries}
