"""Settings dataclasses of cache / hooks / patch-ioi / ioi-layers / report / demo, the hook-name builder,
and the run-state helpers they rely on; no model is loaded here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cli
from common.errors import UserError
from activations.hooknames import HookError, hook_name, parse_hook
from common.options import from_namespace
from common.runstate import differing_keys, replace_atomically, require_same_settings
from activations.settings import CacheSettings, HooksSettings

ROOT = Path(__file__).resolve().parents[1]


def _old_cache_record(model: str, corpus: str, hooks: list[str], context_length: int, max_tokens: int,
                      batch_size: int, dtype: str, fragments: bool) -> str:
    """The `settings` attribute as the cache writer wrote it before CacheSettings became the CLI's settings
    (a frozen dataclass in field order, dumped with sorted keys): existing files resume only if it is unchanged."""
    return json.dumps({"model": model, "corpus": corpus, "hooks": list(hooks), "context_length": context_length,
                       "max_tokens": max_tokens, "batch_size": batch_size, "dtype": dtype, "fragments": fragments},
                      sort_keys=True)


def test_settings_modules_import_nothing_heavy():
    code = ("import sys, activations.settings, causal.settings, report.settings, pipeline.settings; "
            "print([m for m in ('torch', 'numpy', 'h5py', 'transformers') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.stdout.strip() == "[]"


def test_cache_record_is_byte_identical_to_the_old_writers():
    settings = CacheSettings(model="m", corpus="ignored: the resolved description is stored",
                             hooks=["blocks.1.hook_resid_post", "blocks.0.mlp.hook_post"], context_length=16,
                             max_tokens=96, batch_size=2, out="elsewhere.h5", device="cuda", overwrite=True)
    from activations.settings import record_json

    text = record_json(settings.record("txt:/c.txt sha256:0123"))
    assert text == _old_cache_record("m", "txt:/c.txt sha256:0123", settings.hooks, 16, 96, 2, "float16", False)
    assert text == ('{"batch_size": 2, "context_length": 16, "corpus": "txt:/c.txt sha256:0123", "dtype": "float16", '
                    '"fragments": false, "hooks": ["blocks.1.hook_resid_post", "blocks.0.mlp.hook_post"], '
                    '"max_tokens": 96, "model": "m"}')
    # a tuple of hooks (Python callers) records the same bytes
    assert record_json(CacheSettings(model="m", hooks=("blocks.1.hook_resid_post", "blocks.0.mlp.hook_post"),
                                     context_length=16, max_tokens=96, batch_size=2).record("txt:/c.txt sha256:0123")) == text


def _parsed(argv: list[str]):
    args = cli.build_parser().parse_args(argv)
    return from_namespace(cli._load(args._command.settings), args)


def test_cli_flags_parse_into_the_settings_objects_the_commands_take():
    from causal.settings import IOILayersSettings, PatchIOISettings
    from pipeline.settings import DemoSettings
    from report.settings import ReportSettings

    assert _parsed(["cache", "--hooks", "blocks.1.hook_resid_post, blocks.2.mlp.hook_post", "--out", "c.h5",
                    "--context-length", "64", "--fragments", "--overwrite"]) == CacheSettings(
        hooks=["blocks.1.hook_resid_post", "blocks.2.mlp.hook_post"], out="c.h5", context_length=64, fragments=True,
        overwrite=True)
    assert _parsed(["hooks"]) == HooksSettings()
    assert _parsed(["patch-ioi", "--dict", "a", "b", "--out", "o", "--names", "John,Mary", "--candidates", "8"]) == \
        PatchIOISettings(dicts=["a", "b"], out="o", names=["John", "Mary"], candidates=8)
    assert _parsed(["ioi-layers", "--json", "x.json", "--n-prompts", "6"]) == IOILayersSettings(json_path="x.json",
                                                                                               n_prompts=6)
    assert _parsed(["report", "--run", "r"]) == ReportSettings(run="r")
    assert _parsed(["demo", "--out", "d", "--llm", "none", "--base-url", "http://h/v1", "--device", "cuda"]) == \
        DemoSettings(out="d", llm="none", base_url="http://h/v1", device="cuda")
    assert _parsed(["demo"]) == DemoSettings()


@pytest.mark.parametrize("argv", [["cache", "--out", "c.h5"], ["patch-ioi", "--out", "o"], ["patch-ioi", "--dict", "a"],
                                  ["report"]])
def test_required_flags_are_required(argv, capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(argv)
    assert "required" in capsys.readouterr().err


def test_cache_settings_validate_names_the_flag():
    with pytest.raises(UserError, match="--max-tokens 10 is less than one context of 16"):
        CacheSettings(hooks=["blocks.0.hook_resid_post"], context_length=16, max_tokens=10).validate()
    with pytest.raises(UserError, match="no hooks given"):
        CacheSettings().check_hooks()


def test_demo_settings_json_keeps_its_keys_and_leaves_out_the_folder():
    from pipeline.settings import DemoSettings

    data = DemoSettings(out="somewhere").to_json()
    assert "out" not in data and data["hook"] == "blocks.3.hook_resid_post"
    assert list(data)[:3] == ["model", "corpus", "layer"] and {"device", "progress", "llm", "base_url"} <= set(data)
    with pytest.raises(HookError, match="unknown hook name"):
        DemoSettings(site="resid").validate()


def test_patch_ioi_identity_is_the_record_older_runs_wrote():
    from causal.commands import identity_of
    from causal.selection import default_taus
    from causal.settings import PatchIOISettings

    settings = PatchIOISettings(model="m", dicts=["a"], n_prompts=4, seed=1, out="o", plot="p.png", device="cuda",
                                candidates=None, names=["John", "Mary"], overwrite=True)
    identity = identity_of(settings, "blocks.1.hook_resid_post")
    assert list(identity) == ["model", "n_prompts", "seed", "candidates", "names", "taus", "hook"]
    assert identity == {"model": "m", "n_prompts": 4, "seed": 1, "candidates": None, "names": ["John", "Mary"],
                        "taus": default_taus(), "hook": "blocks.1.hook_resid_post"}
    assert identity_of(PatchIOISettings(dicts=["a"], out="o", names=[]), "h")["names"] is None


def test_hook_name_is_built_and_checked_by_the_one_parser():
    assert hook_name(3, "mlp.hook_post") == "blocks.3.mlp.hook_post"
    assert parse_hook(hook_name(0, "hook_resid_pre")).layer == 0
    with pytest.raises(HookError, match="unknown hook name 'blocks.2.resid'"):
        hook_name(2, "resid")


def test_differing_keys_and_the_refusal_agree():
    old, new = {"a": 1, "b": [1, 2], "device": "cpu"}, {"a": 1, "b": [1, 3], "c": None, "device": "cuda"}
    assert differing_keys(old, new, ignore=["device"]) == ["b"]  # c is None on both sides once missing
    with pytest.raises(UserError, match=r"\(b\): b: settings.json has \[1, 2\], command asks \[1, 3\]: "):
        require_same_settings(old, new, "--out 'x'", source="settings.json", can_overwrite=False, ignore=["device"])
    assert differing_keys({}, {"x": 0}) == ["x"]


def test_replace_atomically_replaces_a_file_or_a_whole_folder(tmp_path):
    (tmp_path / "tmp.txt").write_text("new")
    (tmp_path / "file.txt").write_text("old")
    replace_atomically(tmp_path / "tmp.txt", tmp_path / "file.txt")
    assert (tmp_path / "file.txt").read_text() == "new" and not (tmp_path / "tmp.txt").exists()
    target = tmp_path / "model"
    (target / "stale").mkdir(parents=True)
    (target / "stale" / "weights").write_text("old")
    staged = tmp_path / ".convert-1"
    (staged / "sub").mkdir(parents=True)
    (staged / "config.json").write_text("{}")
    (staged / "sub" / "w").write_text("w")
    replace_atomically(staged, target)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == ["config.json", "sub", "sub/w"]
    assert not staged.exists()
