"""Feature pages of `cli.py report`: one page per feature, the index's sortable/filterable table, search, safety.

The per-feature numbers are hand-made `DictionarySummaries` (the contract of
`report.feature_stats`), with hostile corpus tokens: a <script> and an
<img onerror> that would mark <body> if they ever ran, broken UTF-8 (U+FFFD,
a lone surrogate), right-to-left text, a U+202E override and U+2028. The run
folder is the synthetic one of tests/support/report_run.py, plus an explanation run
with a distinctive word and several scorers, so the joins are checked on known data
(the `report` fixture, built by tests/support/feature_pages.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import cli
from report.build import build_report
from report.feature_data import round_sig
from tests.support.feature_pages import SAE, WORD, dump_dom, feature_summaries, page_data, table_data
from tests.support.report_run import chromium_path, make_run, parse


def test_one_page_per_feature_with_its_numbers_joined_to_explanations_and_scores(report):
    out = report["index"].parent / "features"
    for s in report["summaries"]:
        pages = sorted(int(p.stem) for p in (out / s.name).glob("*.html"))
        assert pages == [f.index for f in s.features]
    sae = report["summaries"][0]
    f5 = sae.features[5]
    data = page_data(out / SAE / "5.html")
    assert data["index"] == 5 and data["dictionary"]["kind"] == "tied_sae" and data["dictionary"]["layer"] == 3
    assert data["density"] == pytest.approx(f5.density, rel=1e-2)
    assert data["hist"]["counts"] == f5.hist_counts
    assert [e[0] for e in data["top"]] == [0, 3, 7]
    assert data["top"][0][1] == round_sig(np.array(f5.top[0].acts)).tolist()
    assert [len(q[2]) for q in data["quantiles"]] == [len(q.examples) for q in f5.quantiles]
    assert data["promoted"][0] == [" <b>up0</b>", 2.0]
    assert data["suppressed"][0][0] == "\\u202edown0"  # the override is shown, not obeyed
    assert data["neighbours"] == [[6, 0.5, True], [11, 0.25, False]]
    assert (data["prev"], data["next"]) == (4, 6)
    # both explanation runs joined by (dictionary, feature), every scorer with every metric, costs left out
    explanations = {e["explanation"]: e for e in data["explanations"]}
    extra = explanations[f"long-necked {WORD} <img src=x onerror=alert(5)>"]
    assert extra["scores"]["detection"] == {"auroc": 0.81, "balanced_accuracy": 0.7, "f1": 0.66}
    assert extra["scores"]["embedding"] == {"auroc": 0.62}
    table = table_data(report["index"])
    assert table["scorers"] == ["tokens", "detection", "embedding"]
    rows = {(table["dicts"][r[0]]["name"], r[1]): r for r in table["rows"]}
    assert len(rows) == len(table["rows"]) == 8 + 16 + 1  # + SAE feature 9: explained (failed), no page
    assert rows[(SAE, 5)][6][1:] == [0.81, 0.62] and rows[(SAE, 5)][7] == 1
    assert rows[(SAE, 9)][7] == 0 and rows[(SAE, 9)][2] is None
    index = report["index"].read_text(encoding="utf-8")
    assert f'<a href="features/{SAE}/5.html">feature page' in index  # the explained feature's card links its page
    assert f'<a href="features/{SAE}/9.html">' not in index  # no page, no link


def test_examples_are_stored_once_and_the_folder_is_compact(report):
    folder = report["index"].parent / "features" / SAE
    pages = list(folder.glob("*.html"))
    token = " w7_3"
    assert sum(p.read_text(encoding="utf-8").count(token) for p in pages) == 0  # tokens never per page
    assert (folder / "fragments.js").read_text(encoding="ascii").count(token) == 1
    assert max(p.stat().st_size for p in pages) < 8_000


def test_every_written_file_escapes_corpus_strings_and_holds_no_absolute_path(report):
    root, out = report["root"], report["index"].parent
    secrets = {str(root.resolve()), str(Path.home()) + "/"}
    for path in [p for p in out.rglob("*") if p.is_file()]:
        text = path.read_text(encoding="utf-8", errors="replace")
        for secret in secrets:
            assert secret not in text, (path, secret)
        if path.suffix == ".png":
            continue
        assert "<script>alert" not in text and "<img src" not in text and "<b>up" not in text, path
        assert "\u2028" not in text and "\u202e" not in text, path
        if path.suffix == ".js" and path.name != "feature.js":
            json.loads(text[text.index("=") + 1:].rstrip().rstrip(";"))  # valid JSON, hence valid JS
        if path.suffix == ".html" and path.parent.name == SAE:
            assert text.count("<script") == 3  # the data block, fragments.js, feature.js: nothing else
    visible = "".join(parse(report["index"].read_text(encoding="utf-8")).text)
    assert "run folder" in visible and "(.. from this page)" in visible
    assert "ica_x: hook blocks.9.hook_resid_post is not in cache_frags.h5" in visible  # skipped dictionaries said


def test_feature_pages_need_a_cache_and_refuse_bad_options_before_writing(tmp_path, capsys):
    make_run(tmp_path, with_ioi=False)
    index = build_report(tmp_path, tmp_path / "report")  # no cache anywhere: no pages, and the report says how
    visible = "".join(parse(index.read_text(encoding="utf-8")).text)
    assert "No feature pages: no activation cache found" in visible and "--features-cache CACHE" in visible
    assert not (tmp_path / "report" / "features").exists()
    index = build_report(tmp_path, tmp_path / "r3", summaries=([], [("neuron", "hook blocks.3.hook_resid_post "
                                                                           "is not in the cache")]))
    visible = "".join(parse(index.read_text(encoding="utf-8")).text)
    assert "no dictionary of the run could be summarised" in visible
    assert "neuron: hook blocks.3.hook_resid_post is not in the cache" in visible
    # a --features-cache that does not exist, --max-features -1: rows of tests/test_bad_inputs_earlier.py


def test_a_rebuilt_report_replaces_its_feature_pages_at_once(report, tmp_path):
    summaries = feature_summaries(seed=3)
    summaries[0].features = summaries[0].features[:4]
    out = tmp_path / "rep"
    build_report(report["root"], out, summaries=(summaries, []))
    build_report(report["root"], out, summaries=(summaries[:1], []))
    assert sorted(p.name for p in (out / "features").iterdir()) == [".dictlens-pages", "feature.css", "feature.js", SAE]
    assert sorted(int(p.stem) for p in (out / "features" / SAE).glob("*.html")) == [0, 1, 2, 3]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


# -- end to end: the real summariser on a tiny model's cache ---------------------------------------------------

@pytest.mark.slow
def test_cli_report_summarises_the_runs_cache_and_writes_every_dictionarys_pages(tmp_path):
    """`cli.py report --run RUN` finds RUN/cache_frags.h5 by itself; --max-features limits the pages."""
    import torch

    from activations.cache_writer import cache_activations
    from sae.kinds.neuron import NeuronBasis
    from sae.kinds.topk import TopKSAE

    from tests.support.tiny_models import make_tiny_model, make_tokenizer

    tokenizer = make_tokenizer(add_bos=True)  # one tiny Llama (BOS prepended), not every family's
    model_dir = tmp_path / "model"
    make_tiny_model("llama", len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rng = np.random.default_rng(0)
    words = ["Paris", "river", "<script>alert(1)</script>", "onerror=", "שלום", "fox", "dog", "42"]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(rng.choice(words, 30))}) + "\n" for _ in range(40)),
                      encoding="utf-8")
    run = tmp_path / "run"
    hook = "blocks.1.hook_resid_post"
    cache_activations(model=str(model_dir), corpus=str(corpus), hooks=[hook], context_length=12, max_tokens=12 * 40,
                      batch_size=8, dtype="float32", out=run / "cache_frags.h5", fragments=True, progress=False)
    g = torch.Generator().manual_seed(0)
    d = 32
    w = torch.randn(24, d, generator=g)
    base = {"hook": hook, "model_id": str(model_dir), "d_in": d}
    TopKSAE({"W_e": w, "b_e": torch.zeros(24), "W_d": w.clone(), "b_d": torch.zeros(d)},
            {**base, "n_features": 24, "k": 4}).save(run / "dicts" / "topk")
    NeuronBasis({}, {**base, "n_features": d}).save(run / "dicts" / "neuron")
    assert cli.main(["report", "--run", str(run), "--max-features", "6"]) == 0
    out = run / "report" / "features"
    for name in ("topk", "neuron"):
        assert sorted(int(p.stem) for p in (out / name).glob("*.html")) == list(range(6))
    data = page_data(out / "topk" / "2.html")
    assert len(data["promoted"]) == len(data["suppressed"]) == 10  # residual stream: logit effects present
    assert len(data["neighbours"]) == 5 and data["max"] > 0 and 0 < data["density"] <= 1
    fragments = json.loads((out / "topk" / "fragments.js").read_text(encoding="ascii")[len("window.DL_FRAGMENTS="):-2])
    for example in data["top"] + [e for q in data["quantiles"] for e in q[2]]:
        assert len(fragments[str(example[0])]) == len(example[1])  # tokens and activations align
    maxima = [max(e[1]) for e in data["top"]]
    assert maxima == sorted(maxima, reverse=True) and maxima[0] == pytest.approx(data["max"], rel=1e-2)
    assert len(table_data(run / "report" / "index.html")["rows"]) == 12
    if chromium_path() is not None:  # the real data draws without a script error
        page = parse(dump_dom((out / "topk" / "2.html").resolve().as_uri(), tmp_path / "p"))
        assert page.body.get("data-rendered") == "1" and "data-error" not in page.body
        assert page.body.get("data-examples") == str(len(data["top"]) + sum(len(q[2]) for q in data["quantiles"]))


def test_descriptors_join_the_pages_and_the_search(report, tmp_path):
    from tests.support.descriptors import HOSTILE as CHIPS, write_describe_folder

    write_describe_folder(tmp_path / "described")
    index = build_report(report["root"], tmp_path / "rep", [tmp_path / "described"],
                         summaries=(report["summaries"], []))
    data = page_data(index.parent / "features" / SAE / "1.html")
    assert [d["text"] for d in data["descriptors"]["items"]] == CHIPS
    assert data["descriptors"]["items"][0]["frequency"] == 0.625 and data["descriptors"]["consistency"] == 0.5
    assert page_data(index.parent / "features" / SAE / "0.html")["descriptors"] is None  # "none": no chips
    rows = {(t["dicts"][r[0]]["name"], r[1]): r for t in [table_data(index)] for r in t["rows"]}
    assert "Family of birds" in rows[("neuron", 2)][5]  # the search box looks in descriptors too
    assert "<script>alert('chip')" not in (index.parent / "features" / SAE / "1.html").read_text(encoding="utf-8")


def test_dictionary_folders_get_safe_unique_names():
    from report.feature_pages import slugs

    names = ["tied_R2_l1_0.001", "a/../b", "A", "a", "..", "<script>", "a"]
    got = slugs(names)
    assert got[0] == "tied_R2_l1_0.001" and got[2] == "A"  # safe names are kept
    assert len({g.lower() for g in got}) == len(got)  # unique, also on case-insensitive file systems
    assert all(re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", g) for g in got)
