"""The `explain` and `compare` commands end to end on a tiny model's fragment cache (tokens backend).

The cache and dictionaries are the `setup` fixture's (tests/conftest.py, built by
tests/support/explain_run.py): feature 0 of `single` is a real single-token
feature of the cache (it fires on " dog" only).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import sae
from common.errors import UserError
from activations.reader import ActivationCache
from explain.commands import compare_command, explain_command
from explain.settings import CompareSettings, ExplainSettings
from explain.pipeline import read_records
from explain.token_list import parse_token_list
from tests.support.explain_run import EMBED, RESID

REPO = Path(__file__).resolve().parents[1]
def _args(s, out, **kw):
    args = dict(cache=str(s["cache"]), dicts=[str(s["neuron"]), str(s["pca"])], features=5, out=str(out))
    args.update(kw)
    return args


@pytest.fixture(scope="module")
def tokens_run(setup) -> Path:
    """One tokens run of 5 features of `neuron` and `pca`, made by whichever test needs it first."""
    out = setup["tmp"] / "run"
    explain_command(ExplainSettings(**_args(setup, out)))
    return out


def test_single_token_feature_scores_one_through_the_whole_command(setup):
    out = setup["tmp"] / "single_out"
    explain_command(ExplainSettings(cache=str(setup["cache"]), dicts=[str(setup["single"])], feature_ids=[0, 3],
                                    out=str(out)))
    rec, dead = read_records(out / "explanations.jsonl")
    assert dead["feature"] == 3 and dead["status"] == "skipped" and "never active" in dead["error"]
    assert dead["scores"] == {"top_and_random": None, "top": None, "random": None}
    assert rec["status"] == "ok" and rec["kind"] == "tied_sae" and rec["hook"] == EMBED
    assert parse_token_list(rec["explanation"]) == {" dog": 10.0}
    main = {"top_and_random": pytest.approx(1.0), "top": pytest.approx(1.0), "random": pytest.approx(1.0)}
    assert rec["scores"] == {**main, "tokens": {**main, "n_prompts": 0, "n_tokens": None}}  # also under its name
    for frag in rec["exemplars"]["top"] + rec["exemplars"]["random"]:
        assert len(frag["tokens"]) == 15  # BOS dropped
        assert all((a > 0) == (t == " dog") for t, a in zip(frag["tokens"], frag["acts"]))


def test_exemplars_match_a_brute_force_pass_over_the_cache(setup, tokens_run):
    out = tokens_run
    records = read_records(out / "explanations.jsonl")
    assert len(records) == 10 and {r["status"] for r in records} <= {"ok", "skipped"}
    config = json.loads((out / "config.json").read_text())
    assert config["k"] == 1 and config["exemplars"]["random"] == "nonzero"
    with ActivationCache(setup["cache"]) as c:
        acts = torch.from_numpy(c.acts(RESID, range(c.n_contexts)))[:, 1:]
        tokens = c.tokens()[:, 1:]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(c.attrs["model_source"])
    for rec in records:
        d = sae.load(rec["dictionary_path"])
        feats = d.encode(acts)[..., rec["feature"]].numpy()  # [n_fragments, 15]
        maxima = feats.max(axis=1)
        ex = rec["exemplars"]
        top = [f["index"] for f in ex["top"]]
        assert ex["n_active"] == int((maxima > 0).sum())
        if rec["status"] == "skipped":
            assert ex["n_active"] < 10 and rec["error"]
            continue
        assert set(top) == set(np.argsort(-maxima, kind="stable")[:20].tolist())
        rnd = [f["index"] for f in ex["random"]]
        assert all(maxima[i] > 0 for i in rnd) and not set(rnd) & set(top)
        for f in ex["top"][:3] + ex["random"][:3]:
            np.testing.assert_allclose(f["acts"], feats[f["index"]], atol=6e-4)
            assert f["tokens"] == [tok.decode([int(t)]) for t in tokens[f["index"]]]
        assert rec["scores"]["top_and_random"] is not None or rec["score_notes"]["top_and_random"]


def test_rerun_is_a_no_op_and_other_settings_are_refused(setup, capsys):
    out = setup["tmp"] / "rerun"
    explain_command(ExplainSettings(**_args(setup, out, features=2)))
    before = (out / "explanations.jsonl").read_bytes()
    explain_command(ExplainSettings(**_args(setup, out, features=2)))
    assert "nothing to do" in capsys.readouterr().out
    with pytest.raises(UserError, match="other settings.*random"):
        explain_command(ExplainSettings(**_args(setup, out, features=2, random="any")))
    with pytest.raises(UserError, match="--explainer tokens"):
        explain_command(ExplainSettings(**_args(setup, setup["tmp"] / "bad", simulator="tokens",
                                                explainer="local:default")))
    with pytest.raises(UserError, match="out of range"):
        explain_command(ExplainSettings(**_args(setup, setup["tmp"] / "bad", feature_ids=[10_000])))
    assert (out / "explanations.jsonl").read_bytes() == before
    assert not (setup["tmp"] / "bad" / "explanations.jsonl").exists()


def test_command_line_and_python_settings_resume_the_same_folder(setup, capsys):
    """config.json keeps the keys `k` and `format` (folders made before the fields were renamed resume);
    a run started from the command line resumes from Python settings and the other way round."""
    import cli
    from explain.settings import ExplainSettings

    out = setup["tmp"] / "cli_then_python"
    argv = ["explain", "--cache", str(setup["cache"]), "--dict", str(setup["neuron"]), "--features", "2",
            "--best-of", "1", "--format", "highlight", "--out", str(out)]
    assert cli.main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["k"] == 1 and config["format"] == "highlight" and config["runtime"] == {"concurrency": 4}
    assert not {"best_of", "prompt_format", "random", "out", "concurrency"} & set(config)
    settings = ExplainSettings(cache=str(setup["cache"]), dicts=[str(setup["neuron"])], features=2, out=str(out),
                               concurrency=1)
    capsys.readouterr()
    explain_command(settings)
    assert "nothing to do" in capsys.readouterr().out
    with pytest.raises(UserError, match="other settings.*k: config.json has 1, command asks 2"):
        explain_command(ExplainSettings(cache=str(setup["cache"]), dicts=[str(setup["neuron"])], features=2,
                                        out=str(out), best_of=2))
    assert cli.main(argv[:-2] + ["--out", str(out), "--random", "any"]) == 2  # refused as one line, not a traceback
    assert "other settings" in capsys.readouterr().err


def test_failed_features_are_retried_on_rerun(setup):
    from explain.llm.errors import LLMError
    from explain.pipeline import ExplainSettings, run_explain
    from explain.token_list import TokenListExplainer

    class Flaky(TokenListExplainer):
        def candidates(self, train_records, *, feature_seed=0):
            if feature_seed == 1:
                raise LLMError("rate limited (429) after retries")
            return super().candidates(train_records, feature_seed=feature_seed)

    out = setup["tmp"] / "flaky"
    settings = ExplainSettings(cache=str(setup["cache"]), dicts=[str(setup["neuron"])], features=None,
                               feature_ids=[0, 1, 2])
    run_explain(replace(settings, out=str(out)), progress=False, explainer=Flaky())
    first = {r["feature"]: r for r in read_records(out / "explanations.jsonl")}
    assert first[1]["status"] == "failed" and "429" in first[1]["error"] and first[0]["status"] == "ok"
    run_explain(replace(settings, out=str(out)), progress=False)  # the real tokens explainer succeeds
    second = read_records(out / "explanations.jsonl")
    assert sorted(r["feature"] for r in second) == [0, 1, 2]
    assert {r["feature"]: r["status"] for r in second} == {0: "ok", 1: "ok", 2: "ok"}
    assert [r for r in second if r["feature"] == 0] == [first[0]]


_SLOW_RUN = """
import sys, time
sys.path.insert(0, {repo!r})
import explain.pipeline as p
_orig = p.explain_feature
def _slow(*a, **k):
    time.sleep(0.25)
    return _orig(*a, **k)
p.explain_feature = _slow  # only to widen the window in which the kill lands
import cli
sys.exit(cli.main({argv!r}))
"""


@pytest.mark.slow  # a run killed mid-way and resumed
def test_a_killed_run_resumes_to_the_same_records(setup):
    out, ref = setup["tmp"] / "killed", setup["tmp"] / "uninterrupted"
    args = _args(setup, out, features=8, dicts=[str(setup["neuron"]), str(setup["single"]), str(setup["pca"])])
    argv = ["explain", "--cache", args["cache"], "--dict", *args["dicts"], "--features", "8", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_RUN.format(repo=str(REPO), argv=argv)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "explanations.jsonl"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if results.exists() and results.read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    n_before = len(read_records(results))
    assert 3 <= n_before < 20
    with open(results, "a") as f:  # a write torn by the kill
        f.write('{"dictionary": "neuron", "feature": 99, "sta')
    explain_command(ExplainSettings(**args))
    explain_command(ExplainSettings(**{**args, "out": str(ref)}))
    resumed, clean = read_records(results), read_records(ref / "explanations.jsonl")
    keys = [(r["dictionary_path"], r["feature"]) for r in resumed]
    assert len(keys) == len(set(keys)) == 20  # 8 + 4 (all of single, on another hook) + 8
    by_key = {(r["dictionary_path"], r["feature"]): r for r in clean}
    assert {k: r for k, r in zip(keys, resumed)} == by_key


def _compare_record(name, kind, hook, status, score=None, rnd=None, feature=0):
    return {"dictionary": name, "dictionary_path": f"/d/{hook}/{name}", "kind": kind, "hook": hook,
            "explainer": "tokens", "simulator": "tokens", "feature": feature, "status": status,
            "scores": {"top_and_random": score, "top": score, "random": rnd}}


def test_compare_reports_means_and_cis_by_hand(tokens_run, tmp_path):
    sae_name = "tied_R2_l1_0.001"
    rows: list[dict] = []
    for spec in [(sae_name, "tied_sae", "blocks.1.hook_resid_post", "ok", 0.5, 0.1),
                 (sae_name, "tied_sae", "blocks.1.hook_resid_post", "ok", 0.3, 0.2),
                 (sae_name, "tied_sae", "blocks.1.hook_resid_post", "ok", 0.1, None),
                 (sae_name, "tied_sae", "blocks.1.hook_resid_post", "failed"),
                 ("neuron", "neuron", "blocks.1.hook_resid_post", "ok", 0.2, 0.0),
                 ("neuron", "neuron", "blocks.1.hook_resid_post", "skipped"),
                 ("neuron", "neuron", "blocks.3.hook_resid_post", "ok", 0.05, 0.05),
                 ("neuron", "neuron", "blocks.3.hook_resid_post", "ok", 0.15, 0.05)]:
        rows.append(_compare_record(*spec, feature=len(rows)))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "explanations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    groups = compare_command(CompareSettings(explanations=[str(tmp_path / "a")], plot=str(tmp_path / "fig.png"),
                                              json_path=str(tmp_path / "cmp.json")))
    saved = json.loads((tmp_path / "cmp.json").read_text())["groups"]
    assert saved == json.loads(json.dumps(groups))
    g = {(r["dictionary"], r["layer"]): r for r in groups}
    assert len(groups) == 3
    sae_l1 = g[(sae_name, 1)]
    assert sae_l1["kind"] == "tied_sae"  # the kind stays as a label
    # by hand: scores 0.5, 0.3, 0.1 -> mean 0.3, sd 0.2, CI 1.96 * 0.2 / sqrt(3)
    assert sae_l1["top_and_random"]["mean"] == pytest.approx(0.3)
    assert sae_l1["top_and_random"]["ci"] == pytest.approx(1.96 * 0.2 / 3 ** 0.5)
    # random: 0.1, 0.2 and one null (excluded, counted) -> sd sqrt(0.005)
    assert sae_l1["random"]["n"] == 2 and sae_l1["random"]["n_null"] == 1
    assert sae_l1["random"]["ci"] == pytest.approx(1.96 * 0.005 ** 0.5 / 2 ** 0.5)
    assert sae_l1["frac_failed"] == pytest.approx(0.25) and sae_l1["frac_skipped"] == 0
    assert g[("neuron", 1)]["frac_skipped"] == pytest.approx(0.5) and g[("neuron", 1)]["top_and_random"]["ci"] is None
    assert g[("neuron", 3)]["top_and_random"]["mean"] == pytest.approx(0.1)
    assert g[("neuron", 3)]["top_and_random"]["ci"] == pytest.approx(1.96 * 0.005 ** 0.5 / 2 ** 0.5)
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    real = compare_command(CompareSettings(explanations=[str(tokens_run)]))
    assert {(r["dictionary"], r["kind"], r["layer"], r["n"]) for r in real} == {("neuron", "neuron", 1, 5),
                                                                                ("pca", "pca", 1, 5)}


def test_compare_keeps_two_dictionaries_of_one_kind_at_one_layer_apart(tmp_path, capsys):
    """An α-sweep's SAEs (and several top-k controls) at one layer are different bases: never averaged together."""
    hook = "blocks.1.hook_resid_post"
    rows = [_compare_record("tied_R2_l1_0.001", "tied_sae", hook, "ok", s, feature=i) for i, s in enumerate([0.6, 0.4])]
    rows += [_compare_record("tied_R2_l1_0.0001", "tied_sae", hook, "ok", s, feature=i) for i, s in enumerate([0.1, 0.3])]
    rows += [_compare_record("pca_topk_k3", "pca_topk", hook, "ok", 0.2, feature=0),
             _compare_record("pca_topk_k9", "pca_topk", hook, "ok", 0.4, feature=0)]
    rows += [_compare_record("tied_R2_l1_0.001", "tied_sae", "blocks.3.hook_resid_post", "ok", 0.9, feature=0)]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "explanations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    groups = compare_command(CompareSettings(explanations=[str(tmp_path / "a")], plot=str(tmp_path / "fig.png")))
    g = {(r["dictionary"], r["layer"]): r for r in groups}
    assert len(groups) == 5
    assert g[("tied_R2_l1_0.001", 1)]["top_and_random"]["mean"] == pytest.approx(0.5)
    assert g[("tied_R2_l1_0.0001", 1)]["top_and_random"]["mean"] == pytest.approx(0.2)
    assert g[("tied_R2_l1_0.001", 3)]["top_and_random"]["mean"] == pytest.approx(0.9)  # layer from the hook
    assert g[("pca_topk_k3", 1)]["top_and_random"]["mean"] == pytest.approx(0.2)
    assert g[("pca_topk_k9", 1)]["n"] == 1 and g[("pca_topk_k9", 1)]["kind"] == "pca_topk"
    assert {r["kind"] for r in groups} == {"tied_sae", "pca_topk"}
    table = capsys.readouterr().out
    assert "tied_R2_l1_0.0001" in table and "pca_topk_k9" in table
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_prompt_too_long_for_a_local_model_fails_the_feature_not_the_run(setup, tiny_model_dirs):
    """The tiny model's 256 positions cannot hold an explainer prompt: a BackendConfigError from the real
    local backend, raised per feature, becomes a `failed` record naming the fix and the run goes on
    (and, since no feature succeeded, ends with an error rather than as a success)."""
    from explain.pipeline import ExplainSettings, run_explain

    spec = f"local:{tiny_model_dirs['llama']}"
    out = setup["tmp"] / "too_long"
    settings = ExplainSettings(cache=str(setup["cache"]), dicts=[str(setup["neuron"])], features=None,
                               feature_ids=[0, 1], explainer=spec, simulator=spec)
    with pytest.raises(UserError, match=r"no feature of this run succeeded: all 2 failed, the first with "
                                        r"BackendConfigError"):
        run_explain(replace(settings, out=str(out), concurrency=1), progress=False)
    records = read_records(out / "explanations.jsonl")
    assert sorted(r["feature"] for r in records) == [0, 1]
    for r in records:
        assert r["status"] == "failed", r
        assert r["error"].startswith("BackendConfigError") and "context of 256" in r["error"]
        assert r["scores"] == {"top_and_random": None, "top": None, "random": None}
