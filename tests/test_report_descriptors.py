"""`cli.py report --descriptors`: `describe` results joined to the feature cards, the comparison of bases, escaping.

Uses the synthetic run folder of tests/support/report_run.py and a hand-made describe
folder (tests/support/descriptors.py: descriptors.jsonl + summary.json in the format `cli.py describe`
writes), so the report is tested on known numbers without running a model.
The descriptors include a <script> and an onerror= attribute, as an LLM or a
corpus field could.
"""

from __future__ import annotations

import re
import subprocess

import pytest

import cli
from common.errors import UserError
from report.build import build_report
from tests.support.descriptors import HOSTILE, SAE, write_describe_folder
from tests.support.report_run import IMG, SCRIPT, chromium_args, chromium_path, make_run, parse, table_with


def _cards(text: str) -> dict[tuple[str, str], list[str]]:
    """Each card's HTML by (dictionary, feature); a feature explained by two scorers has two cards."""
    cards: dict[tuple[str, str], list[str]] = {}
    pieces = re.split(r'(?=<div class="feature-card)', text)
    for piece in pieces[1:]:
        m = re.match(r'<div class="feature-card[^"]*" data-dictionary="([^"]*)" data-feature="([^"]*)"', piece)
        assert m, piece[:200]
        cards.setdefault((m.group(1), m.group(2)), []).append(piece.split("\n")[0])
    return cards


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("run")
    make_run(root, with_llm=True)
    summary = write_describe_folder(root / "described")
    plain = build_report(root, root / "report_plain").read_text(encoding="utf-8")
    with_desc = build_report(root, root / "report_desc", [root / "described"]).read_text(encoding="utf-8")
    return {"root": root, "plain": plain, "desc": with_desc, "summary": summary}


def test_chips_appear_on_the_right_cards_with_their_frequency(reports):
    cards = _cards(reports["desc"])
    tied_1 = cards[(SAE, "1")]
    assert len(tied_1) == 2  # explained by two scorers: both cards get the chips
    for card in tied_1:
        page = parse(card)
        visible = "".join(page.text)
        assert visible.count("descriptors:") == 1
        assert HOSTILE[0] + " 62%" in visible and "40%" in visible and "25%" in visible
        assert 'title="frequency 0.625 among the top documents · lift 3.1"' in card
        assert "consistency 0.50" in visible
    neuron_2 = cards[("neuron", "2")][0]
    assert "Family of birds 80%" in "".join(parse(neuron_2).text)
    assert 'title="frequency 0.800 among the top documents · lift 12"' in neuron_2
    # no descriptors (status none, or not in the describe output): the card is exactly as without --descriptors
    plain = _cards(reports["plain"])
    for key in [(SAE, "0"), (SAE, "2"), (SAE, "9"), ("neuron", "0"), ("neuron", "1")]:
        assert cards[key] == plain[key]
    assert cards[(SAE, "1")] != plain[(SAE, "1")]


def test_summary_table_has_the_describe_numbers(reports):
    page = parse(reports["desc"])
    t = table_with(page, "consistency (95% CI)")
    head = t[0]
    rows = {r[head.index("dictionary")]: dict(zip(head, r)) for r in t[1:]}
    assert set(rows) == {SAE, "neuron"}
    sae = rows[SAE]
    assert (sae["basis"], sae["features"], sae["described"], sae["consistency (95% CI)"], sae["n"],
            sae["desc/feature"]) == ("tied_sae @ L3", "32", "40.6%", "0.612 [0.501, 0.723]", "13", "1.22")
    neuron = rows["neuron"]
    assert (neuron["basis"], neuron["described"], neuron["consistency (95% CI)"], neuron["n"]) == \
        ("neuron @ L3 <b>", "6.2%", "–", "0")  # no consistency: a dash, not 0
    assert "2 of 3 features in the describe output(s) have descriptors" in "".join(page.text)
    assert '<a href="#descriptors">' in reports["desc"]


def test_descriptor_strings_are_escaped(reports):
    text = reports["desc"]
    page = parse(text)
    assert len(page.scripts) == 1 and "alert" not in page.scripts[0] and text.count("<script") == 1
    assert "alert('chip')" in "".join(page.text)  # shown as text
    assert "<script>alert('chip')" not in text and "neuron @ L3 &lt;b&gt;" in text
    assert 'onerror="alert(1)' not in text and "onerror=\"document" not in text
    assert SCRIPT not in text and IMG not in text


def test_report_without_descriptors_has_no_descriptor_markup(reports):
    plain = reports["plain"]
    for marker in ('class="chip', "chips", 'id="descriptors"', "#descriptors", ".chip {", "Family of birds"):
        assert marker not in plain
    # everything but the descriptor parts is unchanged: same cards, same other sections
    assert parse(plain).cards == parse(reports["desc"]).cards


def test_bad_descriptors_folder_is_one_line_error_before_writing(tmp_path, capsys):
    make_run(tmp_path / "run", with_ioi=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no descriptors.jsonl"):
        build_report(tmp_path / "run", tmp_path / "out", [tmp_path / "empty"])
    assert not (tmp_path / "out").exists()  # from the command line: a row of tests/test_bad_inputs_earlier.py
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "descriptors.jsonl").write_text('{"dictionary": "x", "feature": 0}\nnot json\n', encoding="utf-8")
    with pytest.raises(UserError, match="line 2 is not JSON"):
        build_report(tmp_path / "run", tmp_path / "out", [bad])
    assert not (tmp_path / "out").exists()


def test_report_cli_descriptors_option(tmp_path):
    make_run(tmp_path, with_ioi=False)
    write_describe_folder(tmp_path / "described")
    assert cli.main(["report", "--run", str(tmp_path), "--descriptors", str(tmp_path / "described")]) == 0
    text = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert "Family of birds" in text and 'id="descriptors"' in text


@pytest.mark.slow
@pytest.mark.skipif(chromium_path() is None, reason="headless Chromium is not installed (Debian: apt-get install -y chromium)")
def test_descriptor_report_in_headless_chromium_runs_no_descriptor_script(reports, tmp_path):
    index = reports["root"] / "report_desc" / "index.html"
    dom = subprocess.run(chromium_args(tmp_path / "profile") + ["--dump-dom", index.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    page = parse(dom)
    assert "data-pwned" not in page.body and page.body.get("data-cards") == str(page.cards) != "0"
    assert len(page.scripts) == 1 and "alert" not in page.scripts[0]
    assert "alert('chip')" in "".join(page.text)
