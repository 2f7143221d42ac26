"""The table of bad inputs (issue 28), item 5: every refusal names the right thing, in every subcommand.

A missing folder is called missing (not looked up on the hub), a file given for a folder is called a file, an
error names only the flags the user passed, and a negative value reaches the option's own check. The sweeps at
the end walk every subcommand's options: space-separated lists and negative numbers for all of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest

import cli
from common.options import is_option
from tests.support.bad_inputs import HOOK, Inputs, Row, check_row, params, run_cli

MISSING = "model folder 'work/models/x' does not exist (no 'work' here)"
NOT_A_DICTIONARY = "is a file, not a dictionary folder"


def _train(i: Inputs, *extra: str) -> list[str]:
    return ["train-sae", "--cache", str(i.cache_a), "--hook", HOOK, "--tokens", "256", "--batch-size", "32",
            "--out", str(i.out), *extra]


def _explain(i: Inputs, *extra: str) -> list[str]:
    return ["explain", "--cache", str(i.cache_a), "--dict", str(i.dict_a), "--features", "2", "--out", str(i.out),
            *extra]


def _describe(i: Inputs, *extra: str) -> list[str]:
    return ["describe", "--cache", str(i["pooled_b"]), "--dict", str(i["small_a"]), "--descriptors",
            str(i["descriptors"]), "--allow-model-mismatch", "--out", str(i.out), *extra]


def _descriptors(i: Inputs, *extra: str) -> list[str]:
    return ["descriptors", "--corpus", str(i["annotated"]), "--out", str(i.out), *extra]


def _probe(i: Inputs, *extra: str) -> list[str]:
    return ["probe", "--cache", str(i["pooled_b"]), "--hook", HOOK, "--descriptors", str(i["descriptors"]),
            "--field", "topic", "--out", str(i.out), *extra]


def _baselines(i: Inputs, *extra: str) -> list[str]:
    return ["baselines", "--cache", str(i.cache_a), "--hook", HOOK, "--out", str(i.out), *extra]


ROWS = [
    # -- a name that cannot be a hub id, or under a local folder, is a missing folder --------------------------------
    Row("cache: --model with two separators is a missing folder, not a hub id", lambda i: [
        "cache", "--model", "work/models/x", "--corpus", str(i.corpus), "--hooks", HOOK, "--out", str(i.out / "c.h5")],
        MISSING),
    Row("patch-ioi: --model under a local folder is a missing folder", lambda i: [
        "patch-ioi", "--model", "sae/no_such_model", "--dict", str(i.dict_a), "--out", str(i.out)],
        "model folder 'sae/no_such_model' does not exist ('sae' has no 'no_such_model')"),
    Row("hooks: a missing model folder", lambda i: ["hooks", "--model", "work/models/x"], MISSING),
    Row("ioi-layers: a missing model folder", lambda i: ["ioi-layers", "--model", "work/models/x"], MISSING),
    Row("evaluate: a missing --model folder", lambda i: ["evaluate", "--cache", str(i.cache_a), "--dict",
                                                         str(i["dict_copy"]), "--model", "work/models/x"], MISSING,
        unchanged=lambda i: [i["dict_copy"]]),
    Row("explain: a missing local: model names local:default, not --model", lambda i: _explain(
        i, "--explainer", "local:work/models/x", "--simulator", "local:work/models/x"), MISSING,
        also=("or local:default",), absent=("--model",)),
    Row("explain: a missing --embedder folder (was looked up on the hub)", lambda i: _explain(
        i, "--scorers", "tokens,embedding", "--embedder", "work/models/x"), MISSING, absent=("Repo id", "--model")),
    Row("descriptors: a missing --embedder folder, before the folder is started", lambda i: _descriptors(
        i, "--generator", "field:kind", "--embedder", "work/models/x"), MISSING, absent=("Repo id", "--model")),
    Row("descriptors: a missing local: generator, before the folder is started", lambda i: _descriptors(
        i, "--generator", "local:work/models/x"), MISSING, also=("or local:default",), absent=("--model",)),
    Row("describe: a missing local: judge, before the folder is started", lambda i: _describe(
        i, "--judge", "local:work/models/x"), MISSING, also=("or local:default",), absent=("--model",)),
    # -- a file where a folder is expected is called a file -----------------------------------------------------------
    Row("patch-ioi: --dict given a file", lambda i: [
        "patch-ioi", "--model", str(i.model_a), "--dict", str(i.dict_a / "config.json"), "--out", str(i.out)],
        NOT_A_DICTIONARY, unchanged=lambda i: [i.dict_a]),
    Row("explain: --dict given a file", lambda i: ["explain", "--cache", str(i.cache_a), "--dict", str(i.corpus),
                                                    "--out", str(i.out)], NOT_A_DICTIONARY),
    Row("evaluate: --dict given a file", lambda i: ["evaluate", "--cache", str(i.cache_a), "--dict", str(i.corpus)],
        NOT_A_DICTIONARY),
    Row("evaluate: --mmcs-to given a file", lambda i: ["evaluate", "--cache", str(i.cache_a), "--dict",
                                                       str(i["dict_copy"]), "--mmcs-to", str(i.corpus), "--no-model"],
        NOT_A_DICTIONARY, unchanged=lambda i: [i["dict_copy"]]),
    Row("describe: --dict given a file", lambda i: ["describe", "--cache", str(i["pooled_b"]), "--dict", str(i.corpus),
                                                     "--descriptors", str(i["descriptors"]), "--out", str(i.out)],
        NOT_A_DICTIONARY),
    Row("export: --dict given a file", lambda i: ["export", "--dict", str(i.corpus), "--out", str(i.out)],
        NOT_A_DICTIONARY),
    Row("baselines: --topk-from given a file", lambda i: _baselines(i, "--kinds", "pca_topk", "--topk-from",
                                                                    str(i.corpus)), NOT_A_DICTIONARY),
    Row("describe: --descriptors given a file", lambda i: [
        "describe", "--cache", str(i["pooled_b"]), "--dict", str(i.dict_a), "--descriptors", str(i.corpus),
        "--out", str(i.out)], "is a file, not a descriptors folder"),
    Row("probe: --descriptors given a file", lambda i: ["probe", "--cache", str(i["pooled_b"]), "--hook", HOOK,
                                                         "--descriptors", str(i.corpus), "--out", str(i.out)],
        "is a file, not a descriptors folder"),
    Row("train-sae: --cache given a folder", lambda i: [
        "train-sae", "--cache", str(i.dict_a), "--hook", HOOK, "--out", str(i.out)],
        "is a folder, not a cache file", unchanged=lambda i: [i.dict_a]),
    Row("report: --run given a file names --run, not the --out it implies", lambda i: ["report", "--run",
                                                                                        str(i.corpus)],
        "--run", also=("is a file, not a run folder",), absent=("--out '",)),
    Row("report: --descriptors given a file", lambda i: ["report", "--run", str(i.run), "--descriptors",
                                                          str(i.corpus), "--out", str(i.out)],
        "--descriptors", also=("is a file, not a describe folder",), unchanged=lambda i: [i.run]),
    Row("explain: --rescore given a file", lambda i: _explain(i, "--rescore", str(i.corpus)),
        "is a file, not an explain run folder"),
    Row("compare: a corpus .jsonl given as explanations (was a table of None rows)", lambda i: [
        "compare", "--explanations", str(i.corpus)], "record 1 is not an explanation record"),
    # -- --k above the width ------------------------------------------------------------------------------------------
    Row("train-sae: --k above the dictionary width", lambda i: _train(i, "--kind", "topk", "--k", "100"),
        "--k 100 is more than the 64 features"),
    Row("baselines: --k above the width", lambda i: _baselines(i, "--kinds", "pca_topk", "--k", "100"),
        "k=100 is larger than the width 32"),
    # -- an error names only the flags given ----------------------------------------------------------------------------
    Row("evaluate: --tokens 0 names --tokens alone", lambda i: [
        "evaluate", "--cache", str(i.cache_a), "--dict", str(i.dict_a), "--tokens", "0"],
        "--tokens 0 must be positive", absent=("--ce-contexts",), unchanged=lambda i: [i.dict_a]),
    Row("explain: an LLM --explainer with the default simulator names only flags given", lambda i: [
        "explain", "--cache", str(i.cache_a), "--dict", str(i.dict_a), "--explainer", "local:default",
        "--out", str(i.out)], "--simulator is tokens (the default)", absent=("--scorers",)),
    Row("train-sae: --batch-size 0 names --batch-size alone", lambda i: _train(i, "--batch-size", "0"),
        "--batch-size 0 must be positive", absent=("--lr", "--dead-tokens", "--checkpoint-every")),
    Row("train-sae: a NaN --l1 does not suggest --lr", lambda i: _train(i, "--l1", "nan"),
        "--l1 nan is not a finite number", absent=("--lr",)),
    Row("describe: --splits 0 names --splits alone", lambda i: _describe(i, "--splits", "0"),
        "--splits 0 must be at least 1", absent=("--top-k", "--min-exemplars", "--judge-features")),
    Row("baselines: --ica-samples too few for ICA names --ica-samples, not --tokens", lambda i: _baselines(
        i, "--kinds", "ica", "--tokens", "256", "--ica-samples", "10"),
        "ICA needs at least 64 tokens for width 32, got 10: raise --ica-samples to 64", absent=("--tokens",)),
    Row("descriptors: a field no document has, before the folder is started", lambda i: _descriptors(
        i, "--generator", "field:nope"), "no document has the field 'nope' (fields: group, kind)", alone=True,
        unchanged=lambda i: [i["annotated"]]),
    # -- a negative value for a positive-only flag says so ----------------------------------------------------------------
    Row("train-sae: a negative --ratio in exponent notation", lambda i: _train(i, "--ratio", "-1e-3"),
        "--ratio [-0.001] must be positive"),
    Row("train-sae: a negative --l1 in exponent notation", lambda i: _train(i, "--l1", "-1e-3"),
        "--l1 [-0.001] must be non-negative"),
    Row("train-sae: a negative --tokens (was 'less than one batch')", lambda i: _train(i, "--tokens", "-5"),
        "--tokens -5 must be positive"),
    Row("train-sae: a negative --auxk-alpha (was accepted)", lambda i: _train(i, "--kind", "topk", "--auxk-alpha",
                                                                               "-1"), "--auxk-alpha -1.0 must be 0"),
    Row("train-sae: a negative --seed (was a ValueError traceback)", lambda i: _train(i, "--seed", "-1"),
        "--seed -1 is negative: pass a seed of 0 or more"),
    Row("explain: a negative --seed (was a ValueError traceback)", lambda i: _explain(i, "--seed", "-2"),
        "--seed -2 is negative"),
    Row("describe: a negative --seed (was a ValueError traceback)", lambda i: _describe(i, "--seed", "-1"),
        "--seed -1 is negative"),
    Row("cache: a negative --max-tokens (was 'less than one context')", lambda i: [
        "cache", "--model", str(i.model_a), "--corpus", str(i.corpus), "--hooks", HOOK, "--max-tokens", "-5",
        "--out", str(i.out / "c.h5")], "--max-tokens -5 must be positive"),
    Row("probe: a negative --min-documents (was accepted as 0)", lambda i: _probe(i, "--min-documents", "-3"),
        "--min-documents -3 must be at least 1"),
    Row("probe: a negative --l2", lambda i: _probe(i, "--l2", "-3"), "--l2 -3.0 must be positive"),
    Row("descriptors: a negative --max-tokens (was accepted)", lambda i: _descriptors(
        i, "--generator", "field:kind", "--max-tokens", "-1"), "--max-tokens -1 must be at least 1"),
    Row("explain: a negative --features", lambda i: _explain(i, "--features", "-5"), "--features -5: pass at least 1"),
    Row("patch-ioi: a negative --candidates", lambda i: ["patch-ioi", "--model", str(i.model_a), "--dict",
                                                          str(i.dict_a), "--candidates", "-3", "--out", str(i.out)],
        "--candidates must be at least 1, got -3"),
    Row("describe: a negative --top-percent", lambda i: _describe(i, "--top-percent", "-1"),
        "--top-percent -1.0 must be in (0, 100]"),
]


@pytest.mark.parametrize("row", params(ROWS))
def test_bad_input(row: Row, bad_inputs: Inputs, capsys, monkeypatch):
    check_row(row, bad_inputs, capsys, monkeypatch)


def test_hooks_are_accepted_space_separated_as_well_as_with_commas(bad_inputs, tmp_path):
    from activations.reader import ActivationCache

    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_mlp_out", HOOK]
    out = tmp_path / "c.h5"
    assert run_cli(["cache", "--model", str(bad_inputs.model_a), "--corpus", str(bad_inputs.corpus), "--hooks",
                    hooks[0], f"{hooks[1]},{hooks[2]}", "--context-length", "16", "--max-tokens", "32",
                    "--out", str(out)]) == 0
    with ActivationCache(out) as cache:
        assert cache.hooks == hooks


def _options(kind: str) -> list[tuple[str, argparse.ArgumentParser, str, dataclasses.Field]]:
    """(subcommand, its parser, flag, field) of every option of every subcommand: comma lists or numbers."""
    from common.options import flag_of

    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for sub in subparsers.values():  # one option at a time: the others may be left out here
        for action in sub._actions:
            action.required = False
    found = []
    for command in cli.SUBCOMMANDS:
        cls = cli._load(command.settings)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not is_option(f):
                continue
            text = str(hints[f.name])
            if (kind == "csv" and f.metadata["option"]["csv"]) or (
                    kind == "number" and ("int" in text or "float" in text) and "list" not in text
                    and "tuple" not in text and not f.metadata["option"]["choices"]):
                found.append((command.name, subparsers[command.name], flag_of(f), f))
    return found


@pytest.mark.parametrize("command, parser, flag, field", _options("csv"), ids=lambda v: v if isinstance(v, str) else "")
def test_every_comma_list_also_takes_space_separated_values(command, parser, flag, field):
    args = parser.parse_args([flag, "a", "b,c", "d"])
    assert getattr(args, field.name) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("command, parser, flag, field", _options("number"),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_every_number_option_takes_a_negative_value_to_its_own_check(command, parser, flag, field):
    """argparse took `-1` / `-1e-3` for an option ("expected one argument"); every numeric flag now reads it."""
    args = parser.parse_args([flag, "-1e-3" if "float" in str(field.type) else "-1"])
    assert getattr(args, field.name) < 0
