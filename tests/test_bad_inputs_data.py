"""The table of bad inputs (issue 28), items 2-4: text read as it is, counts that do not fit the data, and bad
numbers in data. A count above what exists is not an error: the row's code is 0 and one printed line must say
what was used instead (`Row`, tests/support/bad_inputs.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.bad_inputs import HOOK, NAMES, Inputs, Row, check_row, params, run_cli


def _cache(i: Inputs, corpus: Path, *extra: str) -> list[str]:
    return ["cache", "--model", str(i.model_a), "--corpus", str(corpus), "--hooks", HOOK, "--context-length", "16",
            "--max-tokens", "64", "--out", str(i.out / "c.h5"), *extra]


def _explain(i: Inputs, *extra: str, cache: str = "") -> list[str]:
    return ["explain", "--cache", cache or str(i.cache_a), "--dict", str(i.dict_a), "--features", "2",
            "--out", str(i.out), *extra]


def _describe(i: Inputs, *extra: str, cache: str = "") -> list[str]:
    return ["describe", "--cache", cache or str(i["pooled_b"]), "--dict", str(i["small_a"]), "--descriptors",
            str(i["descriptors"]), "--allow-model-mismatch", "--out", str(i.out), *extra]


def _probe(i: Inputs, *extra: str, cache: str = "") -> list[str]:
    return ["probe", "--cache", cache or str(i["pooled_b"]), "--hook", HOOK, "--descriptors", str(i["descriptors"]),
            "--out", str(i.out), *extra]


def _no_judge(inputs: Inputs, monkeypatch: pytest.MonkeyPatch) -> None:
    """The judge is an LLM behind an endpoint (the external boundary): here it judges nothing."""
    monkeypatch.setattr("explain.descriptors.judge.judge_features", lambda *a, **k: ({"features_judged": 0}, {}))


ROWS = [
    # -- item 2: text is read as it is --------------------------------------------------------------------------------
    Row("cache: a Latin-1 corpus file", lambda i: _cache(i, i["latin1"]),
        "is not valid utf-8: byte 0xe9 at offset 3 (line 1) cannot be decoded; pass --encoding",
        unchanged=lambda i: [i["latin1"]]),
    Row("cache: an --encoding Python does not know", lambda i: _cache(i, i["latin1"], "--encoding", "latin-9x"),
        "--encoding 'latin-9x' is not a text encoding"),
    Row("cache: --encoding with the bundled corpus", lambda i: _cache(i, Path("default"), "--encoding", "latin-1"),
        "--encoding applies to corpus files"),
    Row("descriptors: a Latin-1 corpus file", lambda i: ["descriptors", "--corpus", str(i["latin1"]),
                                                          "--generator", "field:kind", "--out", str(i.out)],
        "is not valid utf-8: byte 0xe9", unchanged=lambda i: [i["latin1"]]),
    # -- item 3: budgets that do not fit the data are said --------------------------------------------------------------
    Row("train-sae: --tokens beyond the cache's training tokens", lambda i: [
        "train-sae", "--cache", str(i.cache_a), "--hook", HOOK, "--tokens", "1302", "--batch-size", "217",
        "--out", str(i.out)], "note: --tokens 1,302 over a 434-token cache (its training contexts) = 3.0 passes",
        code=0, unchanged=lambda i: [i.cache_a]),
    Row("train-sae: --dead-tokens not shorter than --tokens (AuxK never acts)", lambda i: [
        "train-sae", "--cache", str(i.cache_a), "--hook", HOOK, "--kind", "topk", "--k", "4", "--tokens", "256",
        "--batch-size", "32", "--dead-tokens", "1000", "--out", str(i.out)],
        "note: the dead-latent window (--dead-tokens 1,000) is not shorter than --tokens 256", code=0),
    Row("baselines: --tokens beyond the cache's training tokens", lambda i: [
        "baselines", "--cache", str(i.cache_a), "--hook", HOOK, "--kinds", "pca", "--tokens", "5000",
        "--out", str(i.out)], "note: using all 434 training tokens of the cache, fewer than --tokens 5,000", code=0,
        unchanged=lambda i: [i.cache_a]),
    Row("baselines: --ica-samples beyond the tokens fitted", lambda i: [
        "baselines", "--cache", str(i.cache_a), "--hook", HOOK, "--kinds", "ica", "--tokens", "256",
        "--ica-samples", "100000", "--out", str(i.out)],
        "note: using all 256 sampled tokens (at most --tokens, within a 64 MiB sample), fewer than --ica-samples "
        "100,000", code=0),
    Row("evaluate: --tokens and --ce-contexts beyond the held-out part", lambda i: [
        "evaluate", "--cache", str(i.cache_a), "--dict", str(i["dict_copy"]), "--tokens", "5000",
        "--ce-contexts", "50"], "note: using all 2 measured contexts of the cache, fewer than --ce-contexts 50",
        code=0, unchanged=lambda i: [i.cache_a]),
    Row("patch-ioi: --candidates not fewer than the features", lambda i: [
        "patch-ioi", "--model", str(i.model_a), "--dict", str(i["small_a"]), "--n-prompts", "3", "--names",
        NAMES, "--candidates", "40", "--out", str(i.out)],
        "note: --candidates 40 is not fewer than the 4 features of small_a", code=0,
        unchanged=lambda i: [i["small_a"]]),
    Row("cache: --max-tokens beyond what the corpus gives", lambda i: [
        "cache", "--model", str(i.model_a), "--corpus", str(i.corpus), "--hooks", HOOK, "--context-length", "32",
        "--max-tokens", "100000", "--out", str(i.out / "c.h5")],
        "note: using all 1,408 tokens the corpus gives (44 contexts of 32), fewer than --max-tokens 100,000", code=0),
    Row("cache --pool: --max-documents beyond the corpus", lambda i: _cache(i, i.corpus, "--pool", "mean",
                                                                              "--max-documents", "100"),
        "note: using all 16 documents of the corpus, fewer than --max-documents 100", code=0),
    Row("descriptors: --max-documents beyond the corpus", lambda i: [
        "descriptors", "--corpus", str(i["annotated"]), "--generator", "field:kind", "--max-documents", "100",
        "--out", str(i.out)], "note: using all 8 documents of the corpus, fewer than --max-documents 100", code=0),
    Row("report: --max-features beyond every dictionary", lambda i: [
        "report", "--run", str(i.run), "--features-cache", str(i.cache_a), "--max-features", "100",
        "--out", str(i.out)], "note: using all 32 features of the widest dictionary (pages for every feature), "
                              "fewer than --max-features 100", code=0, unchanged=lambda i: [i.run]),
    Row("explain: --best-of with the tokens explainer", lambda i: _explain(i, "--best-of", "3"),
        "note: --best-of 3 has no effect with --explainer tokens", code=0),
    Row("explain: --hard-negatives without a sampled scorer", lambda i: _explain(i, "--hard-negatives", "2"),
        "note: --hard-negatives 2 has no effect: no scorer of this run reads sampled examples", code=0),
    Row("describe: --judge-features beyond the described features", lambda i: _describe(
        i, "--judge", "openai:judge", "--judge-features", "50"),
        "described features of small_a, fewer than --judge-features 50", code=0, prepare=_no_judge),
    Row("describe: --min-exemplars beyond a half's exemplars", lambda i: _describe(
        i, "--top-percent", "25", "--min-exemplars", "3"),
        "note: --min-exemplars 3 is more than the 2 exemplars of a half", code=0),
    Row("describe: --min-exemplars beyond a feature's exemplars", lambda i: _describe(i, "--min-exemplars", "5"),
        "--min-exemplars 5 is more than the 1 exemplars a feature has (the top 1 % of 16 documents)"),
    Row("probe: labels with fewer than --min-documents are said", lambda i: _probe(
        i, "--field", "topic", "--min-documents", "5"),
        "note: 1 of the 3 labels of 'topic' have fewer than --min-documents 5 documents and get no probe: c", code=0),
    Row("probe: a field of one label", lambda i: _probe(i, "--field", "kind"),
        "field 'kind' has one label ('x'): a probe needs two", absent=("--min-documents",)),
    # -- item 4: bad numbers in data are found in data ----------------------------------------------------------------
    Row("train-sae: a cache holding NaN", lambda i: ["train-sae", "--cache", str(i["nan"]), "--hook", HOOK,
                                                      "--tokens", "256", "--batch-size", "32", "--out", str(i.out)],
        f"holds NaN activations at {HOOK!r} (first in context 5, position 3)", unchanged=lambda i: [i["nan"]]),
    Row("train-sae: a cache holding inf", lambda i: ["train-sae", "--cache", str(i["inf"]), "--hook", HOOK,
                                                      "--tokens", "256", "--batch-size", "32", "--out", str(i.out)],
        f"holds inf activations at {HOOK!r} (first in context 2, position 3)", unchanged=lambda i: [i["inf"]]),
    Row("baselines: a cache holding NaN", lambda i: ["baselines", "--cache", str(i["nan"]), "--hook", HOOK,
                                                      "--kinds", "pca", "--tokens", "256", "--out", str(i.out)],
        "holds NaN activations", unchanged=lambda i: [i["nan"]]),
    Row("evaluate: a cache holding NaN", lambda i: ["evaluate", "--cache", str(i["nan"]), "--dict",
                                                     str(i.dict_a), "--no-model", "--eval-fraction", "0.5"],
        "holds NaN activations", unchanged=lambda i: [i["nan"], i.dict_a]),
    Row("explain: exemplars from a cache holding NaN", lambda i: _explain(i, cache=str(i["nan"])),
        f"holds NaN activations at {HOOK!r} (first in context 5, position 3)", unchanged=lambda i: [i["nan"]],
        started=True),
    Row("report: feature pages from a cache holding inf", lambda i: [
        "report", "--run", str(i.run), "--features-cache", str(i["inf"]), "--out", str(i.out)],
        f"holds inf activations at {HOOK!r} (first in context 2, position 3)", unchanged=lambda i: [i.run]),
    Row("describe: a pooled cache holding inf", lambda i: _describe(i, cache=str(i["pooled_inf"])),
        f"holds inf pooled vectors at {HOOK!r} (first in document '4', row 3)"),
    Row("probe: a pooled cache holding inf", lambda i: _probe(i, "--field", "topic", cache=str(i["pooled_inf"])),
        "holds inf pooled vectors"),
]


@pytest.mark.parametrize("row", params(ROWS))
def test_bad_input(row: Row, bad_inputs: Inputs, capsys, monkeypatch):
    check_row(row, bad_inputs, capsys, monkeypatch)


def test_train_sae_records_its_passes_in_config_json(bad_inputs, tmp_path):
    out = tmp_path / "dicts"
    assert run_cli(["train-sae", "--cache", str(bad_inputs.cache_a), "--hook", HOOK, "--tokens", "868",
                    "--batch-size", "62", "--out", str(out)]) == 0
    config = json.loads(next(out.glob("*/config.json")).read_text())
    assert config["passes"] == 2.0 and config["data"]["tokens"] == 434


def test_more_ioi_prompts_than_the_names_make_are_said(bad_inputs, capsys):
    """Not reachable from the command line below 76,800 prompts (3 names, the built-in places and objects)."""
    from transformers import AutoTokenizer

    from causal.prompts import IOIConfig, make_ioi_pairs, single_token_names

    tokenizer = AutoTokenizer.from_pretrained(bad_inputs.model_a)
    names = list(single_token_names(tokenizer, NAMES.split(",")))[:3]  # 2 orders x 16 templates x 3 x 2 x 1 = 192
    config = IOIConfig(n_prompts=40, names=names, places=["store"], objects=["drink"])
    make_ioi_pairs(tokenizer, config)
    assert "note: --n-prompts 40 is more than the 192 distinct prompts" not in capsys.readouterr().out
    config.n_prompts = 200
    pairs = make_ioi_pairs(tokenizer, config)
    assert "note: --n-prompts 200 is more than the 192 distinct prompts that 3 names make" in capsys.readouterr().out
    assert len({p.clean_text for p in pairs}) < len(pairs)  # the repeats the note announces
