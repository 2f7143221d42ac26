"""The table of bad inputs (issue 28), item 1: what goes with what is checked everywhere.

Rows and runner: tests/support/bad_inputs.py; the other items' rows are in
tests/test_bad_inputs_data.py, test_bad_inputs_refusals.py and test_bad_inputs_earlier.py.
"""

from __future__ import annotations

import json
import shutil
from typing import Callable

import pytest

from tests.support.bad_inputs import HOOK, NAMES, Inputs, Row, check_row, params, run_cli


def pairing(command: str) -> Callable[[Inputs], list[str]]:
    """`command` pairing A's dictionary with B (its cache, or --model B)."""
    def args(i: Inputs) -> list[str]:
        return {
            "patch-ioi": ["patch-ioi", "--model", str(i.model_b), "--dict", str(i.dict_a), "--n-prompts", "3",
                          "--names", NAMES, "--out", str(i.out)],
            "explain": ["explain", "--cache", str(i.cache_b), "--dict", str(i.dict_a), "--features", "2",
                        "--out", str(i.out)],
            "evaluate": ["evaluate", "--cache", str(i.cache_b), "--dict", str(i.dict_a), "--no-model",
                         "--eval-fraction", "0.25", "--tokens", "64"],
            "evaluate-model": ["evaluate", "--cache", str(i.cache_a), "--dict", str(i.dict_a), "--model",
                               str(i.model_b), "--eval-fraction", "0.25", "--tokens", "64", "--ce-contexts", "2"],
            "report": ["report", "--run", str(i.run), "--features-cache", str(i.cache_b), "--out", str(i.out)],
            "describe": ["describe", "--cache", str(i["pooled_b"]), "--dict", str(i.dict_a), "--descriptors",
                         str(i["descriptors"]), "--out", str(i.out)],
            "baselines": ["baselines", "--cache", str(i.cache_b), "--hook", HOOK, "--kinds", "pca_topk",
                          "--topk-from", str(i.sae_a), "--tokens", "256", "--out", str(i.out)],
        }[command]
    return args


PAIRING_FRAGMENT = "was trained on model"

ROWS = [
    Row("patch-ioi: a dictionary of another model of the same width", pairing("patch-ioi"), PAIRING_FRAGMENT,
        unchanged=lambda i: [i.dict_a]),
    Row("explain: a dictionary of another model's cache", pairing("explain"), PAIRING_FRAGMENT,
        unchanged=lambda i: [i.dict_a, i.cache_b]),
    Row("evaluate: a dictionary of another model's cache", pairing("evaluate"), PAIRING_FRAGMENT,
        unchanged=lambda i: [i.dict_a, i.cache_b]),
    Row("evaluate: --model of another model", pairing("evaluate-model"), PAIRING_FRAGMENT,
        unchanged=lambda i: [i.dict_a, i.cache_a]),
    Row("report: feature pages from another model's cache", pairing("report"), PAIRING_FRAGMENT,
        unchanged=lambda i: [i.run, i.cache_b]),
    Row("describe: a dictionary of another model's pooled cache", pairing("describe"), PAIRING_FRAGMENT,
        unchanged=lambda i: [i.dict_a, i["pooled_b"], i["descriptors"]]),
    Row("baselines: --topk-from an SAE of another model", pairing("baselines"), PAIRING_FRAGMENT,
        unchanged=lambda i: [i.sae_a, i.cache_b]),
]


@pytest.mark.parametrize("row", params(ROWS))
def test_bad_input(row: Row, bad_inputs: Inputs, capsys, monkeypatch):
    check_row(row, bad_inputs, capsys, monkeypatch)


# -- the flag that means it -----------------------------------------------------------------------------------------

def test_patch_ioi_with_the_flag_runs_and_records_the_mismatch(bad_inputs, tmp_path, capsys):
    out = tmp_path / "allowed"
    args = pairing("patch-ioi")(bad_inputs)
    args[args.index("--out") + 1] = str(out)
    args[args.index("--dict") + 1] = str(bad_inputs["small_a"])
    assert run_cli(args + ["--allow-model-mismatch"]) == 0
    assert "used anyway because of --allow-model-mismatch" in capsys.readouterr().out
    for name in ("ioi.json", "ioi_config.json"):
        entry = json.loads((out / name).read_text())["pairing"]["small_a"]
        assert entry["status"].startswith("mismatch allowed (weights differ")
        assert entry["made_from"]["model_id"] == str(bad_inputs.model_a)
        assert entry["used_on"]["model_id"] == str(bad_inputs.model_b)


def test_evaluate_with_the_flag_records_the_mismatch_and_the_same_model_passes(bad_inputs, tmp_path):
    folder = tmp_path / "pca"
    shutil.copytree(bad_inputs.dict_a, folder)
    base = ["evaluate", "--dict", str(folder), "--no-model", "--eval-fraction", "0.25", "--tokens", "64"]
    assert run_cli(base + ["--cache", str(bad_inputs.cache_a)]) == 0
    assert json.loads((folder / "config.json").read_text())["metrics"]["pairing"][0]["status"] == "same model"
    assert run_cli(base + ["--cache", str(bad_inputs.cache_b), "--allow-model-mismatch"]) == 0
    entries = json.loads((folder / "config.json").read_text())["metrics"]["pairing"]
    assert entries[0]["status"].startswith("mismatch allowed")


def test_the_same_weights_in_another_folder_are_the_same_model(bad_inputs, tmp_path):
    """The fingerprint, not the path, decides: a copied model folder still pairs with its dictionaries."""
    import sae
    from activations.models import load_model
    from activations.provenance import check_pairing, loaded_record

    copy = tmp_path / "copy_of_a"
    shutil.copytree(bad_inputs.model_a, copy)
    entry = check_pairing(sae.load(bad_inputs.dict_a), loaded_record(load_model(str(copy))), "--model copy")
    assert entry["status"] == "same model"


def test_files_from_before_the_fingerprint_are_compared_by_name():
    from activations.provenance import mismatch, record_of

    assert mismatch({"model_id": "EleutherAI/pythia-70m-deduped"}, {"model_id": "pythia-70m-deduped"}) is None
    assert mismatch({"model_id": "gpt2"}, {"model_id": "EleutherAI/pythia-70m-deduped"}) == "names differ"
    assert mismatch({"model_id": "org/m", "model_revision": "a" * 40},
                    {"model_id": "org/m", "model_revision": "b" * 40}).startswith("revisions differ")
    assert mismatch({}, {"model_id": "gpt2"}) is None  # a side that does not say is not refused
    assert mismatch(record_of({"model_id": "synthetic"}), {"model_id": "gpt2"}) is None  # in-memory training data
