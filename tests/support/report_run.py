"""A small synthetic run folder with hostile corpus strings, and what the report tests read back from its pages.

The run folder follows the formats the stages write (explanations.jsonl records, ioi.json, dictionary folders made by
the real `save`), so the report is tested on what it will read, without running any model. The corpus strings
include a <script> that would mark <body> if it ever ran. Also: an HTML parser for pages, and headless Chromium's
command line (the tests that need it are skipped where there is none).
"""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

HOOK = "blocks.3.hook_resid_post"
SCRIPT = "<script>document.body.setAttribute('data-pwned','script')</script>"
IMG = "<img src=x onerror=\"document.body.setAttribute('data-pwned','img')\">"
HOSTILE_TOKENS = [" A", " <script>alert(1)</script>", " <b>bold</b>", " &amp;", "\n", SCRIPT, IMG, " end"]


def make_fragment(rng: np.random.Generator, index: int, split: str, hostile: bool) -> dict:
    tokens = list(HOSTILE_TOKENS) if hostile else [f" w{j}" for j in range(8)]
    acts = [round(float(a), 3) for a in np.maximum(rng.normal(0.5, 1.0, size=len(tokens)), 0.0)]
    return {"index": index, "tokens": tokens, "acts": acts, "split": split}


def make_record(dictionary: Path, kind: str, feature: int, status: str, rng: np.random.Generator,
            explainer: str = "tokens") -> dict:
    splits = ["train", "calibration", "valid", "test"]
    top = [make_fragment(rng, 10 * feature + i, splits[i % 4], hostile=(i == 0)) for i in range(8)]
    rnd = [make_fragment(rng, 500 + 10 * feature + i, ("valid", "test")[i % 2], hostile=False) for i in range(4)]
    ok = status == "ok"
    score = float(rng.uniform(-0.1, 0.9))
    return {
        "dictionary": dictionary.name, "dictionary_path": str(dictionary.resolve()), "kind": kind, "hook": HOOK,
        "explainer": explainer, "simulator": explainer, "feature": feature, "status": status,
        "explanation": f"words like <script>alert({feature})</script> and <b>bold</b>" if ok else None,
        "candidates": [], "scores": {"top_and_random": score if ok else None, "top": score / 2 if ok else None,
                                     "random": score / 3 if ok else None},
        "score_notes": {}, "split": "test",
        "error": None if ok else ("too few active fragments <i>" if status == "skipped" else "LLMError: <boom>"),
        "exemplars": {"n_fragments": 100, "n_active": 40, "max_activation": 3.0, "top": top, "random": rnd},
    }


def make_run(root: Path, with_ioi: bool = True, with_llm: bool = False) -> dict:
    """Write a run folder; returns what was written (counts the tests compare against)."""
    from sae.dictionaries import NeuronBasis, TiedSAE
    from sae.io import update_metrics

    import torch

    dicts = root / "dicts"
    d = 16
    sae_dir = TiedSAE({"M": torch.randn(32, d, generator=torch.Generator().manual_seed(0)), "b": torch.zeros(32)},
                      {"d_in": d, "n_features": 32, "hook": HOOK, "ratio": 2.0, "l1": 1e-3}).save(dicts / "tied_R2_l1_0.001")
    neuron_dir = NeuronBasis({}, {"d_in": d, "n_features": d, "hook": HOOK}).save(dicts / "neuron")
    update_metrics(sae_dir, {"fvu": 0.12, "l0": 18.5, "dead_fraction": 0.05, "kl": 0.031, "ce_increase": 0.04})
    update_metrics(neuron_dir, {"fvu": 0.0, "l0": 8.0, "dead_fraction": 0.0})

    rng = np.random.default_rng(0)
    records = []
    for folder, kind in ((sae_dir, "tied_sae"), (neuron_dir, "neuron")):
        records += [make_record(folder, kind, f, "ok", rng) for f in range(3)]
        records.append(make_record(folder, kind, 7, "skipped", rng))
    records.append(make_record(sae_dir, "tied_sae", 9, "failed", rng))
    runs = {"tokens": records}
    if with_llm:
        runs["llm-tied"] = [make_record(sae_dir, "tied_sae", 1, "ok", rng, explainer="local:default")]
    for name, recs in runs.items():
        folder = root / "explanations" / name
        folder.mkdir(parents=True)
        (folder / "explanations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    if with_ioi:
        (root / "ioi").mkdir()
        curve = [[32, 0.001, 5.0], [10, 0.02, 3.0], [3, 0.2, 1.0], [0, 0.5, 0.0]]
        result = {"hook": HOOK, "n_prompts": 5, "clean_logit_diff": 1.5, "clean_accuracy": 0.8,
                  "kl_clean_vs_counterfactual": 0.5, "model_does_ioi": True, "warning": None,
                  "dictionaries": {"tied_R2_l1_0.001": {"kind": "tied_sae", "hook": HOOK, "curve": curve, "candidates": 4,
                                                        "screen_curve": [[4, 0.3, 1.0], [8, 0.1, 2.0], [16, 0.01, 4.0]]},
                                   "neuron": {"kind": "neuron", "hook": HOOK,
                                              "curve": [[16, 0.0, 4.0], [8, 0.1, 2.0], [0, 0.5, 0.0]]}}}
        (root / "ioi" / "ioi.json").write_text(json.dumps(result), encoding="utf-8")
    all_records = [r for recs in runs.values() for r in recs]
    return {"cards": sum(r["status"] in ("ok", "failed") for r in all_records),
            "skipped": sum(r["status"] == "skipped" for r in all_records),
            # KL ≤ 0.125: the greedy curve first at 10 features, the screen's top-m states at 8
            "ioi_threshold_25": {"tied_R2_l1_0.001": "10 (screen's top-m: 8)", "neuron": "8"}}


class PageParser(HTMLParser):
    """What a test needs from a page: cards, scripts, images, <body> attributes, visible text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.cards = 0
        self.scripts: list[str] = []
        self.images: list[str] = []
        self.body: dict[str, str | None] = {}
        self.text: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._in_script = False
        self._in_style = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "feature-card" in (a.get("class") or "").split():
            self.cards += 1
        if tag == "script":
            self._in_script = True
            self.scripts.append("")
        elif tag == "style":
            self._in_style = True
        elif tag == "img":
            self.images.append(a.get("src") or "")
        elif tag == "body":
            self.body = a
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False
        elif tag == "style":
            self._in_style = False
        elif tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self.tables:
            self.tables[-1].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        elif not self._in_style:
            self.text.append(data)
            if self._cell is not None:
                self._cell.append(data)


def parse(text: str) -> PageParser:
    p = PageParser()
    p.feed(text)
    p.close()
    return p


def table_with(page: PageParser, header: str) -> list[list[str]]:
    for t in page.tables:
        if t and header in t[0]:
            return t
    raise AssertionError(f"no table with a {header!r} column")


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_args(profile: Path) -> list[str]:
    return [chromium_path(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
            f"--user-data-dir={profile}", "--virtual-time-budget=5000"]
