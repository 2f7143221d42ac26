"""`cli.py report` on a small synthetic run folder with hostile corpus strings: static HTML and headless Chromium.

The run folder follows the formats the stages write (explanations.jsonl
records, ioi.json, dictionary folders made by the real `save`), so the
report is tested on what it will read, without running any model. The
corpus strings include a <script> that would mark <body> if it ever ran.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import cli
from activations.errors import UserError
from report.build import build_report

HOOK = "blocks.3.hook_resid_post"
SCRIPT = "<script>document.body.setAttribute('data-pwned','script')</script>"
IMG = "<img src=x onerror=\"document.body.setAttribute('data-pwned','img')\">"
HOSTILE_TOKENS = [" A", " <script>alert(1)</script>", " <b>bold</b>", " &amp;", "\n", SCRIPT, IMG, " end"]


def _fragment(rng: np.random.Generator, index: int, split: str, hostile: bool) -> dict:
    tokens = list(HOSTILE_TOKENS) if hostile else [f" w{j}" for j in range(8)]
    acts = [round(float(a), 3) for a in np.maximum(rng.normal(0.5, 1.0, size=len(tokens)), 0.0)]
    return {"index": index, "tokens": tokens, "acts": acts, "split": split}


def _record(dictionary: Path, kind: str, feature: int, status: str, rng: np.random.Generator,
            explainer: str = "tokens") -> dict:
    splits = ["train", "calibration", "valid", "test"]
    top = [_fragment(rng, 10 * feature + i, splits[i % 4], hostile=(i == 0)) for i in range(8)]
    rnd = [_fragment(rng, 500 + 10 * feature + i, ("valid", "test")[i % 2], hostile=False) for i in range(4)]
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
        records += [_record(folder, kind, f, "ok", rng) for f in range(3)]
        records.append(_record(folder, kind, 7, "skipped", rng))
    records.append(_record(sae_dir, "tied_sae", 9, "failed", rng))
    runs = {"tokens": records}
    if with_llm:
        runs["llm-tied"] = [_record(sae_dir, "tied_sae", 1, "ok", rng, explainer="local:default")]
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


def _table_with(page: PageParser, header: str) -> list[list[str]]:
    for t in page.tables:
        if t and header in t[0]:
            return t
    raise AssertionError(f"no table with a {header!r} column")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("run")
    expected = make_run(root, with_llm=True)
    index = build_report(root, root / "report")
    return index, expected


def test_report_escapes_every_corpus_string_and_has_one_card_per_explained_feature(built):
    index, expected = built
    text = index.read_text(encoding="utf-8")
    page = parse(text)
    assert page.cards == expected["cards"]
    # the only script is the page's own load check; the corpus's and the explanation's are text
    assert len(page.scripts) == 1 and "data-pwned" not in page.scripts[0]
    assert text.count("<script") == 1
    for raw in ("<script>alert(1)</script>", "<b>bold</b>", "onerror=\"document", "<i>", "<boom>"):
        assert raw not in text
    visible = "".join(page.text)
    assert " <script>alert(1)</script>" in visible  # what a person reads: the literal string
    assert "words like <script>alert(1)</script> and <b>bold</b>" in visible
    assert "&amp;" in visible  # an escaped entity in the corpus stays an entity, not "&"
    assert "LLMError: <boom>" in visible  # the failed feature's card shows its error
    assert "too few active fragments <i>" in visible  # skipped features are listed with the reason
    # the 135M explainer's scores are flagged in plain words
    assert "local:default" in visible and "mean little" in visible


def test_report_embeds_decodable_pngs_and_writes_them_beside_index(built):
    index, _ = built
    page = parse(index.read_text(encoding="utf-8"))
    assert len(page.images) == 3  # scores by basis, FVU-vs-L0 frontier, IOI curves
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in index.parent.glob("*.png")) == ["frontier.png", "ioi_0.png", "scores.png"]


def test_report_tables_hold_the_runs_numbers(built):
    index, expected = built
    page = parse(index.read_text(encoding="utf-8"))
    ioi = _table_with(page, "features for KL ≤ 25%")
    col = ioi[0].index("features for KL ≤ 25%")
    assert {row[0]: row[col] for row in ioi[1:]} == expected["ioi_threshold_25"]
    dicts = _table_with(page, "FVU")
    rows = {row[0]: row for row in dicts[1:]}
    assert set(rows) == {"tied_R2_l1_0.001", "neuron"}
    assert rows["tied_R2_l1_0.001"][dicts[0].index("L0")] == "18.5"
    assert rows["neuron"][dicts[0].index("KL")] == "–"  # not computed, not zero
    scores = _table_with(page, "top+random")
    n_col, basis_col, scorer_col = (scores[0].index(h) for h in ("n", "basis", "scorer"))
    got = {(r[scorer_col], r[basis_col]): int(r[n_col]) for r in scores[1:]}
    assert got == {("tokens/tokens", "tied_sae"): 5, ("tokens/tokens", "neuron"): 4,
                   ("local:default/local:default", "tied_sae"): 1}


def test_report_of_a_partial_run_says_which_stages_did_not_run(tmp_path):
    from sae.dictionaries import NeuronBasis

    NeuronBasis({}, {"d_in": 8, "n_features": 8, "hook": HOOK}).save(tmp_path / "dicts" / "neuron")
    page = parse(build_report(tmp_path, tmp_path / "report").read_text(encoding="utf-8"))
    visible = "".join(page.text)
    assert page.cards == 0 and page.images == []  # no metrics: nothing to plot
    assert "IOI patching (`cli.py patch-ioi`) was not run" in visible
    assert "Explanation (`cli.py explain`) was not run" in visible
    assert "neuron" in _table_with(page, "FVU")[1]


def test_report_refuses_bad_folders_before_writing(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        build_report(tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        build_report(tmp_path, tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"


def test_report_cli_defaults_to_run_report(tmp_path, capsys):
    make_run(tmp_path, with_ioi=False)
    assert cli.main(["report", "--run", str(tmp_path)]) == 0
    index = tmp_path / "report" / "index.html"
    assert str(index.resolve()) in capsys.readouterr().out
    assert parse(index.read_text(encoding="utf-8")).cards == 7
    assert cli.main(["report", "--run", str(tmp_path / "nope")]) == 2  # one-line error, no traceback


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium_args(profile: Path) -> list[str]:
    return [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
            f"--user-data-dir={profile}", "--virtual-time-budget=5000"]


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (Debian: apt-get install -y chromium)")
def test_report_in_headless_chromium_shows_cards_and_plots_and_runs_no_corpus_script(built, tmp_path):
    index, expected = built
    url = index.resolve().as_uri()
    dom = subprocess.run(_chromium_args(tmp_path / "profile") + ["--dump-dom", url], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    page = parse(dom)
    n_images = len(parse(index.read_text(encoding="utf-8")).images)
    # set by the page's own script after load: it ran, and every image decoded
    assert page.body.get("data-cards") == str(expected["cards"]) == str(page.cards)
    assert page.body.get("data-images-total") == str(n_images) and n_images > 0
    assert page.body.get("data-images-loaded") == str(n_images)
    # no corpus script ran and none became an element
    assert "data-pwned" not in page.body
    assert len(page.scripts) == 1 and "data-pwned" not in page.scripts[0]
    assert " <script>alert(1)</script>" in "".join(page.text)
    shot = tmp_path / "shot.png"
    subprocess.run(_chromium_args(tmp_path / "profile2") + ["--window-size=1200,1600", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_report_out_under_a_file_fails_before_the_run_is_read(tmp_path, capsys):
    make_run(tmp_path / "run", with_ioi=False)
    (tmp_path / "a_file").write_text("x")
    rc = cli.main(["report", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "a_file" / "report")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "which is a file" in err
    with pytest.raises(UserError, match="is a file, not a folder"):  # and from Python
        build_report(tmp_path / "missing-run", tmp_path / "a_file")
    assert (tmp_path / "a_file").read_text() == "x" and not (tmp_path / "run" / "report").exists()
