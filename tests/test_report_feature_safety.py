"""Feature pages that must not harm the machine or the user's files: no absolute path in any written file, paths
rewritten only as whole paths (never inside tags, commands, URLs or images), an OUT/features the report did not
write never replaced or removed, stale pages removed, and every explanation kept visible when cards are capped.

Split from `test_report_features` (whose run, summaries and helpers these tests reuse) so each module stays small.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from common.errors import UserError
from report.build import build_report
from tests.support.feature_pages import SAE, feature_summaries, page_data
from tests.support.report_run import make_record, make_run, parse


# -- review of issue 16: paths, stale pages, card caps, logit-table message ---------------------------------------

def _without_images(text: str) -> str:
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)


def test_no_absolute_path_reaches_any_written_file_even_with_quotes_and_ampersands(tmp_path):
    """Paths are scrubbed in the data, before escaping: a run folder named with ' and & is found too, and
    paths outside the run (settings, errors) are cut to their last component."""
    root = tmp_path / "o'brien & co" / "run"
    root.mkdir(parents=True)
    make_run(root, with_ioi=False)
    (root / "demo_settings.json").write_text(json.dumps(
        {"model": "/models/p", "corpus": "/data/x.jsonl", "out": str(root), "cache": f"{root}/cache_frags.h5"}),
        encoding="utf-8")
    record = make_record(root / "dicts" / SAE, "tied_sae", 3, "failed", np.random.default_rng(2), explainer="other")
    record["error"] = f"OSError: cannot read {root}/dicts/{SAE}/weights.safetensors nor /srv/llm/cache/q.json"
    folder = root / "explanations" / "errors"
    folder.mkdir(parents=True)
    (folder / "explanations.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    from tests.support.descriptors import write_describe_folder

    write_describe_folder(tmp_path / "described")  # outside the run: shown by its name
    index = build_report(root, root / "report", [tmp_path / "described"],
                         summaries=(feature_summaries(),
                                    [("ica_x", f"{root}/cache_frags.h5 has no hook blocks.9.hook_resid_post")]))
    secrets = {str(root), str(tmp_path), "/models/p", "/data/x.jsonl", "/srv/llm", str(Path.home()) + "/"}
    written = [p for p in index.parent.rglob("*") if p.is_file() and p.suffix != ".png"]
    assert len(written) > 20
    for path in written:
        text = _without_images(path.read_text(encoding="utf-8", errors="replace"))
        for secret in secrets:
            assert secret not in text, (path, secret)
    visible = "".join(parse(index.read_text(encoding="utf-8")).text)
    assert '"model": "…/p"' in visible and '"corpus": "…/x.jsonl"' in visible  # the names stay readable
    assert '"out": ".."' in visible and '"cache": "../cache_frags.h5"' in visible  # under the run: relative
    assert f"cannot read ../dicts/{SAE}/weights.safetensors nor …/q.json" in visible  # under the run: relative
    assert "ica_x: ../cache_frags.h5 has no hook" in visible and "…/described" in visible
    page = page_data(index.parent / "features" / SAE / "3.html")
    assert any(e["error"] and "../dicts/" in e["error"] for e in page["explanations"])


def test_scrubbing_keeps_relative_paths_and_words_and_cuts_foreign_absolute_ones(tmp_path):
    from report.paths import PathScrubber

    root = tmp_path / "a&b" / "run"
    scrub = PathScrubber(root, root / "report")
    assert scrub.text(f"{root}/dicts/x and {root}") == "../dicts/x and .."
    sibling = scrub.text(f"{root}x/y")  # a sibling whose name starts like the run folder is not under it
    assert not sibling.startswith("..") and str(tmp_path) not in sibling and sibling.endswith("runx/y")
    assert scrub.text("and/or 1/2/3, http://host/a/b, ./rel/path, /usr, x /opt/m/w.bin, local:/m/p") == \
        "and/or 1/2/3, http://host/a/b, ./rel/path, /usr, x …/w.bin, local:…/p"
    data = scrub.data({"a": [f"{root}/q", 3, None], "exemplars": {"tokens": ["/etc/passwd"]}}, keep=("exemplars",))
    assert data == {"a": ["../q", 3, None], "exemplars": {"tokens": ["/etc/passwd"]}}


def test_pages_of_an_older_build_are_removed_when_this_build_has_none_but_kept_on_bad_input(report, tmp_path):
    out = tmp_path / "rep"
    build_report(report["root"], out, summaries=(report["summaries"], []))
    assert (out / "features" / SAE / "5.html").is_file()
    with pytest.raises(UserError):
        build_report(report["root"], out, features_cache=tmp_path / "nope.h5")
    with pytest.raises(UserError):
        build_report(report["root"], out, max_features=-1)
    assert (out / "features" / SAE / "5.html").is_file()  # nothing written is lost on bad input
    build_report(report["root"], out, max_features=0)
    assert not (out / "features").exists()
    assert "No feature pages: --max-features 0 was given" in "".join(parse((out / "index.html").read_text(
        encoding="utf-8")).text)
    build_report(report["root"], out, summaries=(report["summaries"], []))
    build_report(report["root"], out)  # no cache found: no pages either
    assert not (out / "features").exists() and (out / "index.html").is_file()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_cards_are_all_drawn_up_to_the_threshold_and_only_the_best_above_it(tmp_path):
    from report.build import CARDS_ABOVE_THRESHOLD, CARDS_WITH_PAGES

    root = tmp_path / "run"
    counts = make_run(root, with_ioi=False)
    rng = np.random.default_rng(4)
    sizes = {"mid": 30, "big": CARDS_ABOVE_THRESHOLD + 1}
    for name, n in sizes.items():
        folder = root / "explanations" / name
        folder.mkdir(parents=True)
        records = [make_record(root / "dicts" / "neuron", "neuron", f, "ok", rng, explainer=name) for f in range(n)]
        (folder / "explanations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    index = build_report(root, root / "report", summaries=(feature_summaries(n_neuron=sizes["big"]), []))
    text = index.read_text(encoding="utf-8")
    assert parse(text).cards == counts["cards"] + sizes["mid"] + CARDS_WITH_PAGES
    assert f"{sizes['big'] - CARDS_WITH_PAGES} more card(s) of this group are not drawn here" in text
    assert text.count("more card(s) of this group") == 1


# -- second review of issue 16: foreign folders, path boundaries, cards of features without a page ----------------

def _one_line_refusal(excinfo, folder: Path) -> None:
    message = str(excinfo.value)
    assert "\n" not in message and str(folder) in message and "--out" in message


def test_a_features_folder_the_report_did_not_write_is_refused_up_front_and_survives(report, tmp_path):
    out = tmp_path / "project"
    (out / "features").mkdir(parents=True)
    (out / "features" / "notes.txt").write_text("mine", encoding="utf-8")
    for kwargs in ({"summaries": (report["summaries"], [])}, {"max_features": 0}):
        with pytest.raises(UserError) as excinfo:
            build_report(report["root"], out, **kwargs)
        _one_line_refusal(excinfo, out / "features")
        assert (out / "features" / "notes.txt").read_text(encoding="utf-8") == "mine"
        assert sorted(p.name for p in out.rglob("*")) == ["features", "notes.txt"]  # nothing written, index neither


def test_a_dictionary_folder_named_features_in_the_run_survives_a_report_into_the_run(tmp_path):
    import shutil

    root = tmp_path / "run"
    make_run(root, with_ioi=False)
    shutil.copytree(root / "dicts" / "neuron", root / "features")
    before = {p.name: p.read_bytes() for p in (root / "features").iterdir()}
    with pytest.raises(UserError) as excinfo:
        build_report(root, root, summaries=(feature_summaries(), []))
    _one_line_refusal(excinfo, root / "features")
    assert {p.name: p.read_bytes() for p in (root / "features").iterdir()} == before
    assert not (root / "index.html").exists()


def test_pages_of_ours_with_or_without_the_marker_are_still_replaced_and_removed(report, tmp_path):
    from report.feature_pages import MARKER

    out = tmp_path / "rep"
    build_report(report["root"], out, summaries=(report["summaries"], []))
    assert json.loads((out / "features" / MARKER).read_text(encoding="utf-8"))["version"] == 1
    (out / "features" / MARKER).unlink()  # pages written before the marker existed
    (out / "features" / SAE / "999.html").write_text("old", encoding="utf-8")
    build_report(report["root"], out, summaries=(report["summaries"], []))
    assert (out / "features" / MARKER).is_file() and not (out / "features" / SAE / "999.html").exists()
    (out / "features" / MARKER).unlink()
    build_report(report["root"], out, max_features=0)
    assert not (out / "features").exists()
    (out / "features" / "x").mkdir(parents=True)  # shaped like pages but for one foreign file: not ours
    for name in ("feature.js", "feature.css", "x/1.html", "x/fragments.js", "x/data.csv"):
        (out / "features" / name).write_text("", encoding="utf-8")
    with pytest.raises(UserError):
        build_report(report["root"], out, max_features=0)
    assert (out / "features" / "x" / "data.csv").is_file()


@pytest.mark.parametrize("parent", ["/code", "/opt", "/tmp"])
def test_the_final_pass_replaces_whole_paths_only_never_tags_commands_or_images(parent):
    """The report's parent may be a one-component folder: the final pass must not touch '</code>' and the like.
    The folders need not exist (nothing is created; a missing path resolves to itself)."""
    from report.paths import PathScrubber

    root, out = Path(parent) / "dl-review-run", Path(parent) / "dl-review-report"
    scrub = PathScrubber(root, out)
    b64 = "iVBORw0KGgo" + parent + "/AAAA" + root.as_posix() + "/BBBB=="
    untouched = (f"<code>x</code> <option>a</option> cd {parent} && make; cd /tmp && make; "
                 f'<img src="data:image/png;base64,{b64}"> <img src="data:image/png;base64,{root}/QUJD"> '
                 f"{parent}x/y {root}x/z https://host.org{root}/a")
    assert scrub.final(untouched) == untouched
    assert scrub.final(f"see {root}/dicts/x, {out}/scores.png; &quot;{root}&quot; \"{root}/q\"") == \
        "see ../dl-review-run/dicts/x, ./scores.png; &quot;../dl-review-run&quot; \"../dl-review-run/q\""


def test_the_data_pass_replaces_known_folders_only_as_whole_paths():
    from report.paths import PathScrubber

    scrub = PathScrubber(Path("/tmp/dl-review-run"), Path("/tmp/dl-review-report"))
    assert scrub.text("https://example.com/tmp/notes.html") == "https://example.com/tmp/notes.html"
    assert scrub.text("/var/tmp and /var/tmp/x") == "…/tmp and …/x"
    assert scrub.text("/tmp/notes.html, /tmp/dl-review-run/a") == "../notes.html, ../dl-review-run/a"


def test_the_final_pass_prefers_the_escaped_replacement_when_spellings_coincide(tmp_path):
    """A link to a run folder named with '<': the link's spelling is the same raw and escaped, its replacement
    is not; the page must never get the raw '<' (before, the choice followed set order, i.e. PYTHONHASHSEED)."""
    from report.paths import PathScrubber

    (tmp_path / "x<i>y" / "run").mkdir(parents=True)
    (tmp_path / "lnk").symlink_to(tmp_path / "x<i>y" / "run")
    scrub = PathScrubber(tmp_path / "lnk", tmp_path / "proj")
    assert scrub.final(f"see {tmp_path}/lnk/dicts") == "see ../x&lt;i&gt;y/run/dicts"


def test_cards_of_features_without_a_page_are_never_cut(tmp_path):
    """201 explained features of a dictionary that was skipped (no page, no table row): every card is drawn.
    With pages for only 16 of 201 (the rest beyond --max-features), nothing is cut either."""
    from report.build import CARDS_ABOVE_THRESHOLD

    root = tmp_path / "run"
    counts = make_run(root, with_ioi=False)
    rng = np.random.default_rng(4)
    folder = root / "explanations" / "big"
    folder.mkdir(parents=True)
    n = CARDS_ABOVE_THRESHOLD + 1
    records = [make_record(root / "dicts" / "neuron", "neuron", f, "ok", rng, explainer="big") for f in range(n)]
    (folder / "explanations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    sae_only = [s for s in feature_summaries() if s.name == SAE]
    for summaries in ((sae_only, [("neuron", "hook not in cache")]), (feature_summaries(), [])):
        text = build_report(root, root / "report", summaries=summaries).read_text(encoding="utf-8")
        assert parse(text).cards == counts["cards"] + n
        assert "more card(s) of this group" not in text
