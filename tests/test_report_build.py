"""`cli.py report` on a small synthetic run folder with hostile corpus strings: static HTML and headless Chromium.

The run folder follows the formats the stages write (explanations.jsonl
records, ioi.json, dictionary folders made by the real `save`), so the
report is tested on what it will read, without running any model. The
corpus strings include a <script> that would mark <body> if it ever ran.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

import cli
from common.errors import UserError
from report.build import build_report
from tests.support.report_run import HOOK, chromium_args, chromium_path, make_run, parse, table_with


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
    ioi = table_with(page, "features for KL ≤ 25%")
    col = ioi[0].index("features for KL ≤ 25%")
    assert {row[0]: row[col] for row in ioi[1:]} == expected["ioi_threshold_25"]
    dicts = table_with(page, "FVU")
    rows = {row[0]: row for row in dicts[1:]}
    assert set(rows) == {"tied_R2_l1_0.001", "neuron"}
    assert rows["tied_R2_l1_0.001"][dicts[0].index("L0")] == "18.5"
    assert rows["neuron"][dicts[0].index("KL")] == "–"  # not computed, not zero
    scores = table_with(page, "top+random")
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
    assert "neuron" in table_with(page, "FVU")[1]


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
    assert parse(index.read_text(encoding="utf-8")).cards == 7  # a missing --run: tests/test_bad_inputs_earlier.py


@pytest.mark.slow
@pytest.mark.skipif(chromium_path() is None, reason="headless Chromium is not installed (Debian: apt-get install -y chromium)")
def test_report_in_headless_chromium_shows_cards_and_plots_and_runs_no_corpus_script(built, tmp_path):
    index, expected = built
    url = index.resolve().as_uri()
    dom = subprocess.run(chromium_args(tmp_path / "profile") + ["--dump-dom", url], capture_output=True,
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
    subprocess.run(chromium_args(tmp_path / "profile2") + ["--window-size=1200,1600", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_report_out_under_a_file_fails_before_the_run_is_read(tmp_path):
    """From the command line: a row of tests/test_bad_inputs_earlier.py."""
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        build_report(tmp_path / "missing-run", tmp_path / "a_file")
    assert (tmp_path / "a_file").read_text() == "x" and not (tmp_path / "run" / "report").exists()
