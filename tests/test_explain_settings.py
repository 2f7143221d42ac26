"""`ExplainSettings` / `CompareSettings`: the one source of the explain and compare options.

config.json must keep the keys of run folders made before the fields were
renamed (`format`, `k`), the command line must build the same objects
Python callers do, and the settings module must stay free of heavy imports
so `cli.py --help` is instant.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import cli
from common.errors import UserError
from common.options import from_namespace
from explain.commands import compare_command, explain_command
from explain.settings import CompareSettings, ExemplarConfig, ExplainSettings

REPO = Path(__file__).resolve().parents[1]
# The top-level keys of config.json's settings part, in the order the command has always written them.
ON_DISK_KEYS = ["cache", "dicts", "features", "feature_ids", "explainer", "simulator", "format", "k", "base_url",
                "seed", "exemplars"]


def test_config_record_keeps_the_keys_existing_run_folders_hold():
    s = ExplainSettings(cache="c.h5", dicts=["d"], prompt_format="bills", best_of=3, random="any", seed=2,
                        out="o", concurrency=9)
    doc = s.to_json()
    assert list(doc) == ON_DISK_KEYS
    assert doc["format"] == "bills" and doc["k"] == 3 and doc["features"] == 50
    assert doc["exemplars"] == ExemplarConfig(random="any", seed=2).to_json()  # --random lives in exemplars


def test_feature_ids_make_features_null_and_explicit_exemplars_win():
    s = ExplainSettings(cache="c", dicts=["d"], feature_ids=[3, 1])
    assert s.features is None and s.feature_ids == [3, 1]
    small = ExemplarConfig(n_top=8, random="any")
    s = ExplainSettings(cache="c", dicts=["d"], exemplars=small)
    assert s.exemplar_config is small and s.to_json()["exemplars"]["random"] == "any"
    with pytest.raises(UserError, match="disagrees with exemplars.random"):
        ExplainSettings(cache="c", dicts=["d"], random="any", exemplars=ExemplarConfig(random="nonzero", n_top=8))
    with pytest.raises(UserError, match="--random 'some'"):
        ExplainSettings(cache="c", dicts=["d"], random="some")


def test_validate_finds_mistakes_without_reading_a_file():
    with pytest.raises(UserError, match="--best-of 0"):
        ExplainSettings(cache="c", dicts=["d"], best_of=0).validate()
    with pytest.raises(UserError, match="no --dict"):
        ExplainSettings(cache="c", dicts=[]).validate()
    with pytest.raises(UserError, match="--explainer tokens"):
        ExplainSettings(cache="c", dicts=["d"], explainer="local:default").validate()
    assert ExplainSettings(cache="c", dicts=["d"], explainer="openai:m", simulator="local:x").llm_specs() == [
        "local:x", "openai:m"]


def test_the_command_line_builds_the_same_settings_as_python():
    parser = cli.build_parser()
    args = parser.parse_args(["explain", "--cache", "c.h5", "--dict", "a", "b", "--best-of", "3", "--format", "bills",
                              "--feature-ids", "4", "2", "--random", "any", "--out", "o", "--concurrency", "2"])
    got = from_namespace(ExplainSettings, args)
    assert got == ExplainSettings(cache="c.h5", dicts=["a", "b"], best_of=3, prompt_format="bills",
                                  feature_ids=[4, 2], random="any", out="o", concurrency=2)
    assert got.features is None
    with pytest.raises(SystemExit):
        parser.parse_args(["explain", "--cache", "c", "--dict", "a", "--out", "o", "--k", "2"])  # renamed --best-of
    args = parser.parse_args(["compare", "--explanations", "x", "y", "--json", "t.json"])
    assert from_namespace(CompareSettings, args) == CompareSettings(explanations=["x", "y"], json_path="t.json")


def test_the_commands_take_their_settings_object_only():
    with pytest.raises(TypeError, match="expected a ExplainSettings, got dict"):
        explain_command({"cache": "c", "dicts": ["d"], "out": "o"})
    with pytest.raises(TypeError, match="expected a CompareSettings"):
        compare_command(ExplainSettings(cache="c", dicts=["d"]))


def test_a_bad_output_path_fails_before_anything_is_loaded(tmp_path):
    (tmp_path / "file").write_text("x")
    # The cache does not exist either: the output path is checked first, so that is not what is reported.
    with pytest.raises(UserError, match="is a file, not a folder"):
        explain_command(ExplainSettings(cache=str(tmp_path / "missing.h5"), dicts=["d"], out=str(tmp_path / "file")))
    with pytest.raises(UserError, match="no --out"):
        explain_command(ExplainSettings(cache="c", dicts=["d"]))
    with pytest.raises(UserError, match="--json .* is a folder"):
        compare_command(CompareSettings(explanations=[str(tmp_path)], json_path=str(tmp_path)))


def test_settings_module_imports_nothing_heavy():
    code = ("import sys, explain.settings; "
            "heavy = [m for m in ('numpy', 'torch', 'transformers', 'openai') if m in sys.modules]; "
            "sys.exit(f'heavy imports: {heavy}' if heavy else 0)")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
