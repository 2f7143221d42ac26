"""`ScorerSpec`: one row per scorer is all that settings, components, compare and the report read.

The proof is a scorer that exists only in this test: its class is below and
its spec is registered for the test's duration (monkeypatch restores the
registry afterwards). It runs through the real `explain`, `compare` and
`report` commands with no LLM, and its headline metric, which is not its
first metric, is the one they show.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Sequence

import pytest

import cli
from explain.pipeline import read_records
from explain.scorers import SCORERS, Cost, Scorer, ScorerSpec, ScoreResult, scorer_class
from explain.scorers.base import Job, record_mode
from explain.scorers.spec import CAPABILITIES, llm_default_scorers
from explain.settings import ExplainSettings


class ToyScorer(Scorer):
    """Scores nothing about the explanation: `share` is the activating share of the sampled test examples."""

    name = "toy"
    metric_names = ("zero", "share")  # the headline, `share`, is deliberately not the first metric

    def _score_many(self, jobs: Sequence[Job]) -> list[ScoreResult]:
        out = []
        for _, ex in jobs:
            labels = ex.scoring.labels if ex.scoring is not None else []
            share = sum(labels) / len(labels) if labels else None
            out.append(ScoreResult(metrics={"zero": 0.0, "share": share}, cost=Cost(),
                                   notes={} if labels else {"share": "no sampled examples"}))
        return out


TOY = ScorerSpec("toy", f"{__name__}:ToyScorer", "share", sampled=True, cost_unit=None)


def _table(index: Path) -> dict:
    m = re.search(r'<script type="application/json" id="dl-table-data">(.*?)</script>',
                  index.read_text(encoding="utf-8"), re.S)
    assert m, index
    return json.loads(m.group(1))


def test_a_scorer_registered_only_here_runs_through_explain_compare_and_report(setup, tmp_path, monkeypatch,
                                                                               capsys):  # noqa: F811
    monkeypatch.setitem(SCORERS, "toy", TOY)
    run = tmp_path / "run"
    single = shutil.copytree(setup["single"], run / "dicts" / "single")  # under the run, so the report pages it
    out = run / "explanations" / "toy"
    assert cli.main(["explain", "--cache", str(setup["cache"]), "--dict", str(single), "--feature-ids", "0", "1", "2",
                     "--scorers", "tokens,toy", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["scorers"] == ["tokens", "toy"] and "scoring" in config  # sampled: its spec says so
    assert "embedder" not in config  # needs no embeddings
    ok = [r for r in read_records(out / "explanations.jsonl") if r["status"] == "ok"]
    assert ok
    for r in ok:
        kinds = [e["kind"] for e in r["scoring_examples"]["examples"]]
        assert r["scores"]["toy"]["share"] == pytest.approx(kinds.count("quantile") / len(kinds), abs=1e-3)
        assert r["scores"]["toy"]["zero"] == 0.0 and r["scores"]["tokens"]["top_and_random"] is not None
        assert record_mode(r, "toy") == "none"  # no LLM read its answers

    capsys.readouterr()
    assert cli.main(["compare", "--explanations", str(out), "--json", str(tmp_path / "compare.json")]) == 0
    printed = capsys.readouterr().out
    doc = json.loads((tmp_path / "compare.json").read_text())
    toy_rows = [g for g in doc["scorer_groups"] if g["scorer"] == "toy"]
    assert {g["metric"] for g in toy_rows} == {"share"}  # the headline, not the first metric
    shares = [r["scores"]["toy"]["share"] for r in ok]
    assert toy_rows[0]["mean"] == pytest.approx(sum(shares) / len(shares)) and toy_rows[0]["n"] == len(ok)
    assert [(a["a"], a["b"]) for a in doc["agreement"]] == [("tokens", "toy")]
    assert re.search(r"toy\s+share", printed)

    assert cli.main(["report", "--run", str(run), "--max-features", "3"]) == 0
    table = _table(run / "report" / "index.html")
    assert table["scorers"] == ["tokens", "toy"]
    column = table["scorers"].index("toy")
    by_feature = {r["feature"]: r["scores"]["toy"]["share"] for r in ok}
    rows = {row[1]: row[6][column] for row in table["rows"] if row[1] in by_feature}
    assert rows.keys() == by_feature.keys()
    for feature, value in rows.items():
        assert value == pytest.approx(by_feature[feature], rel=1e-2)


def test_unknown_scorers_are_still_refused_by_name():
    with pytest.raises(Exception, match="unknown scorer 'toy'"):
        scorer_class("toy")  # registered only inside the test above


@pytest.mark.parametrize("name", list(SCORERS))
def test_every_registered_scorer_agrees_with_its_class(name):
    spec, cls = SCORERS[name], scorer_class(name)
    assert cls.name == spec.name and cls.needs == spec.needs <= CAPABILITIES
    assert cls.selection_metric == spec.headline and spec.headline in cls.metric_names
    assert set(spec.extra_metrics) <= set(cls.metric_names)


def test_the_specs_give_the_lists_that_were_written_by_hand():
    """What settings, components and compare listed before the specs existed, unchanged."""
    assert llm_default_scorers() == ["simulation", "detection", "fuzzing", "intruder"]
    assert {n for n, s in SCORERS.items() if s.sampled} == {"detection", "fuzzing", "embedding", "intruder"}
    assert [n for n, s in SCORERS.items() if s.needs_llm] == ["simulation", "detection", "fuzzing", "intruder"]
    assert [n for n, s in SCORERS.items() if s.needs_embedder] == ["embedding"]
    assert [n for n, s in SCORERS.items() if s.intruders] == ["intruder"]
    assert {n: s.headline for n, s in SCORERS.items()} == {
        "simulation": "top_and_random", "tokens": "top_and_random", "detection": "auroc", "fuzzing": "auroc",
        "embedding": "auroc", "intruder": "accuracy"}
    assert ExplainSettings(cache="c", dicts=["d"], simulator="openai:m").resolved_scorers() == llm_default_scorers()


def test_a_scorer_without_a_spec_must_say_what_it_selects_by():
    class Unregistered(ToyScorer):
        name = "unregistered"

    assert Unregistered.needs == frozenset()  # needs nothing unless it says so
    with pytest.raises(AttributeError, match="register a ScorerSpec named 'unregistered'"):
        Unregistered.selection_metric
