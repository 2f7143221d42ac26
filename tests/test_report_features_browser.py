"""Feature pages in headless Chromium: the index's table sorts, filters and searches (from the address and from its
own controls), and a feature page draws its histogram, logit tables and examples as text.

The run, summaries and hostile strings are `test_report_features`' (see its docstring); split from it so each
module stays small.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from report.build import build_report
from tests.support.feature_pages import SAE, WORD, dump_dom, feature_summaries, needs_chromium, table_data
from tests.support.report_run import IMG, chromium_args, make_run, parse

pytestmark = pytest.mark.slow  # headless Chromium


def _rows(dom: str) -> list[tuple[str, int]]:
    return [(d, int(f)) for d, f in re.findall(r'<tr data-dictionary="([^"]*)" data-feature="(\d+)"', dom)]


@needs_chromium
def test_index_table_sorts_filters_and_searches_from_the_address(report, tmp_path):
    url = report["index"].resolve().as_uri()
    density = {(s.name, f.index): f.density for s in report["summaries"] for f in s.features}
    dom = dump_dom(url + "#sort=density&dir=desc", tmp_path / "p1")
    page = parse(dom)
    assert page.body.get("data-table-total") == "25" and "data-pwned" not in page.body
    rows = _rows(dom)
    assert len(rows) == 25 and [r for r in rows if r not in density] == [(SAE, 9)]  # no density: last
    shown = [density[r] for r in rows[:-1]]
    assert shown == sorted(shown, reverse=True)
    assert f'href="features/{SAE}/5.html"' in dom

    dom = dump_dom(url + "#basis=neuron&min=0.05&sort=feature", tmp_path / "p2")
    rows = _rows(dom)
    assert rows == [("neuron", i) for i in range(16) if density[("neuron", i)] >= 0.05] and rows

    dom = dump_dom(url + f"#q={WORD.upper()}", tmp_path / "p3")
    assert _rows(dom) == [(SAE, 5)]
    assert parse(dom).body.get("data-table-matching") == "1"


@needs_chromium
def test_feature_page_draws_histogram_logit_tables_and_examples_as_text(report, tmp_path):
    f5 = report["summaries"][0].features[5]
    page_path = report["index"].parent / "features" / SAE / "5.html"
    dom = dump_dom(page_path.resolve().as_uri(), tmp_path / "p")
    page = parse(dom)
    assert page.body.get("data-rendered") == "1" and "data-error" not in page.body, page.body
    assert page.body.get("data-hist-bars") == str(sum(c > 0 for c in f5.hist_counts))
    assert dom.count("<rect") == sum(c > 0 for c in f5.hist_counts)
    assert page.body.get("data-examples") == str(len(f5.top) + sum(len(q.examples) for q in f5.quantiles))
    promoted = next(t for t in page.tables if t and t[0] == ["token", "logit effect"])
    assert [r[0] for r in promoted[1:]] == [t.strip() for t, _ in f5.promoted]  # (cells are stripped)
    assert len([t for t in page.tables if t and t[0] == ["token", "logit effect"]]) == 2
    # no corpus script ran, none became an element; the hostile strings are text
    assert "data-pwned" not in page.body and len(page.scripts) == 3
    assert not re.search(r"<img|<b>", dom)
    visible = "".join(page.text)
    for text in (" <script>alert(1)</script>", IMG, " שלום", " مرحبا", "\\u202eevil", "\\ud800x", WORD):
        assert text in visible, text
    assert 'title="' in dom and "Quantile 2 of 5" in visible and "\u2190 all features" in visible


@needs_chromium
def test_an_empty_logit_table_says_why_from_the_hook(tmp_path):
    root = tmp_path / "run"
    make_run(root, with_ioi=False)
    summaries = feature_summaries()
    summaries[1].hook = "blocks.3.mlp.hook_post"
    for s in summaries:
        for f in s.features:
            f.promoted, f.suppressed = [], []
    index = build_report(root, root / "report", summaries=(summaries, []))
    for name, expected, wrong in ((SAE, "no logit effects were computed for this dictionary", "residual stream"),
                                  ("neuron", "the hook is not in the residual stream", "were computed")):
        visible = "".join(parse(dump_dom((index.parent / "features" / name / "0.html").resolve().as_uri(),
                                     tmp_path / name)).text)
        assert expected in visible and wrong not in visible, visible


_HARNESS = """<!doctype html><meta charset="utf-8"><title>harness</title><pre id="out">pending</pre>
<iframe id="f" src="index.html" style="width:1200px;height:800px"></iframe>
<script>
// Drives the index's own controls as a user would (clicks on headers, typing in the search box, choosing a
// basis), then writes what the table shows. A test page only: file:// frames share an origin under
// --allow-file-access-from-files, which the test passes to Chromium.
function rows(doc) {
  return Array.prototype.map.call(doc.querySelectorAll('#dl-rows tr'), function (tr) {
    return [tr.getAttribute('data-dictionary'), Number(tr.getAttribute('data-feature'))]; });
}
document.getElementById('f').addEventListener('load', function () {
  var w = this.contentWindow, doc = w.document, seen = {};
  function th(key) { return doc.querySelector('#dl-table th[data-key="' + key + '"]'); }
  th('density').click();
  seen.density_click = {rows: rows(doc), hash: w.location.hash, aria: th('density').getAttribute('aria-sort')};
  th('density').click();
  seen.density_again = {rows: rows(doc), hash: w.location.hash, aria: th('density').getAttribute('aria-sort')};
  var basis = doc.getElementById('dl-basis');
  basis.value = 'neuron'; basis.dispatchEvent(new w.Event('input', {bubbles: true}));
  seen.basis = {rows: rows(doc), hash: w.location.hash};
  basis.value = ''; basis.dispatchEvent(new w.Event('input', {bubbles: true}));
  var q = doc.getElementById('dl-q');
  q.value = '@WORD@'; q.dispatchEvent(new w.Event('input', {bubbles: true}));
  seen.search = {rows: rows(doc), hash: w.location.hash, count: doc.getElementById('dl-count').textContent};
  document.getElementById('out').textContent = JSON.stringify(seen);
});
</script>"""


@needs_chromium
def test_index_controls_sort_filter_and_search_when_clicked_and_typed(report, tmp_path):
    """The headers and controls themselves (not only the address) drive the table, and write the address."""
    out = report["index"].parent
    harness = out / "harness.html"
    harness.write_text(_HARNESS.replace("@WORD@", WORD.upper()), encoding="utf-8")
    try:
        dom = subprocess.run(chromium_args(tmp_path / "p") + ["--allow-file-access-from-files", "--dump-dom",
                                                               harness.resolve().as_uri()],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    finally:
        harness.unlink()
    m = re.search(r'<pre id="out">(.*?)</pre>', dom, re.S)
    assert m and m.group(1) != "pending", dom[-2000:]
    seen = json.loads(m.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"'))
    table = table_data(report["index"])  # the densities as the table holds them (rounded, so ties keep feature order)
    density = {(table["dicts"][r[0]]["name"], r[1]): r[2] for r in table["rows"] if r[2] is not None}

    first = [tuple(r) for r in seen["density_click"]["rows"]]
    shown = [density[r] for r in first if r in density]
    assert len(first) == 25 and shown == sorted(shown, reverse=True)  # a numeric column sorts descending first
    assert seen["density_click"]["aria"] == "descending" and "sort=density" in seen["density_click"]["hash"]
    again = [tuple(r) for r in seen["density_again"]["rows"]]
    shown = [density[r] for r in again if r in density]
    assert shown == sorted(shown) and seen["density_again"]["aria"] == "ascending"  # a second click reverses
    assert seen["density_again"]["hash"] == "#sort=density"  # ascending is the default, left out of the address

    assert [tuple(r) for r in seen["basis"]["rows"]] == sorted(
        ((d, i) for d, i in density if d == "neuron"), key=lambda r: (density[r], r[1]))
    assert "basis=neuron" in seen["basis"]["hash"]

    assert [tuple(r) for r in seen["search"]["rows"]] == [(SAE, 5)]
    assert seen["search"]["count"].startswith("1 of 25")
    assert "q=" in seen["search"]["hash"]
