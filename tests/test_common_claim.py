"""`claim_output`: the one way a command takes its output (check, lock, compare with the recorded settings,
write the record), and the one wording of its refusal."""

from __future__ import annotations

import json

import pytest

from common.errors import UserError
from common.runstate import claim_output, require_same_digest, settings_digest
from tests.support.lock_holder import Holder

SETTINGS = {"model": "tiny", "k": 8, "hooks": ["blocks.0.hook_resid_pre"]}


def _run(out, settings, overwrite=False, **kwargs):
    """A command: claim, compare, write the record; returns whether it resumed."""
    with claim_output(out, settings, overwrite, **kwargs) as claim:
        claim.write_record({"runtime": {"threads": 2}})
        return claim.resumes


def test_same_settings_resume_and_the_record_is_written(tmp_path):
    out = tmp_path / "runs" / "a"
    assert _run(out, SETTINGS) is False  # new output
    assert json.loads((out / "settings.json").read_text()) == {**SETTINGS, "runtime": {"threads": 2}}
    assert _run(out, dict(SETTINGS), ignore=["runtime"]) is True  # a rerun with the same settings continues it
    assert not (out / ".dictlens.lock").exists()  # the lock is gone with the block


def test_other_settings_are_refused_in_one_line_naming_each_key_both_values_and_the_fix(tmp_path):
    out = tmp_path / "a"
    _run(out, SETTINGS)
    before = (out / "settings.json").read_bytes()
    with pytest.raises(UserError) as err:
        _run(out, {**SETTINGS, "k": 16}, ignore=["runtime"])
    text = str(err.value)
    assert "\n" not in text
    assert text == (f"--out {str(out)!r} holds a run made with other settings (k): k: settings.json has 8, "
                    "command asks 16: rerun with the same settings to resume, pass --overwrite to replace it, "
                    "or choose another --out")
    assert (out / "settings.json").read_bytes() == before  # refused before anything was written
    with pytest.raises(UserError, match=r"other settings \(runtime\)"):  # compared unless ignored
        _run(out, SETTINGS)


def test_a_command_without_overwrite_is_not_told_to_pass_it_and_long_differences_are_cut(tmp_path):
    out = tmp_path / "a"
    _run(out, {**SETTINGS, "a": "x" * 500, "b": 1, "c": 1, "d": 1}, overwrite=None)
    with pytest.raises(UserError) as err:
        _run(out, {**SETTINGS, "a": "z" * 500, "b": 2, "c": 2, "d": 2}, overwrite=None, ignore=["runtime"])
    text = str(err.value)
    assert "--overwrite" not in text and text.endswith("rerun with the same settings to resume, or choose another --out")
    assert "other settings (a, b, c, d): a: settings.json has 'xxx" in text
    assert "; b: settings.json has 1, command asks 2; c: settings.json has 1, command asks 2; and 1 more: " in text
    assert "x" * 250 not in text and "z" * 10 not in text and "d: " not in text  # 3 shown, each cut to be readable


def test_overwrite_replaces_without_comparing(tmp_path):
    out = tmp_path / "a"
    _run(out, SETTINGS)
    assert _run(out, {**SETTINGS, "k": 16}, overwrite=True) is False  # not a resume: the command starts again
    assert json.loads((out / "settings.json").read_text())["k"] == 16


def test_an_output_another_process_holds_is_refused_before_its_record_is_read(tmp_path):
    out = tmp_path / "a"
    _run(out, SETTINGS)
    holder = Holder(out, folder=True)
    try:
        with pytest.raises(UserError, match=rf"--out '{out}' is being written by process {holder.proc.pid} right now"):
            _run(out, {**SETTINGS, "k": 16})  # other settings too: the lock is what is reported
    finally:
        holder.kill()
    assert _run(out, SETTINGS, ignore=["runtime"]) is True  # kill -9 released it


def test_an_output_path_under_a_file_fails_before_anything_is_created(tmp_path):
    (tmp_path / "file").write_text("precious")
    with pytest.raises(UserError, match="which is a file: pass another path"):
        _run(tmp_path / "file" / "a", SETTINGS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_every_record_is_compared_and_one_without_settings_is_refused(tmp_path):
    """Several record files (patch-ioi: ioi_config.json and ioi.json), the settings under a key of each."""
    out = tmp_path / "a"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"identity": SETTINGS, "other": 1}))
    (out / "results.json").write_text(json.dumps({"identity": {**SETTINGS, "k": 4}}))
    kwargs = {"record": ("config.json", "results.json"), "key": "identity"}
    with pytest.raises(UserError, match="other settings \\(k\\): k: results.json has 4, command asks 8"):
        _run(out, SETTINGS, **kwargs)
    (out / "results.json").write_text(json.dumps({"no identity": True}))
    with pytest.raises(UserError, match="results.json without a settings record.*--overwrite"):
        _run(out, SETTINGS, **kwargs)
    (out / "results.json").unlink()
    assert _run(out, SETTINGS, **kwargs) is True
    assert json.loads((out / "config.json").read_text()) == {"runtime": {"threads": 2}, "identity": SETTINGS}


def test_a_file_output_compares_what_its_reader_returns(tmp_path):
    out = tmp_path / "c.h5"
    out.write_bytes(b"x")
    read = lambda path: {"file": {"pool": "mean"}}  # noqa: E731  (an HDF5 file's attributes, in the cache)
    with pytest.raises(UserError, match="pool: file has 'mean', command asks 'max'"):
        _run_file(out, {"pool": "max"}, read)
    assert _run_file(out, {"pool": "mean"}, read) is True
    assert not (tmp_path / ".c.h5.lock").exists()


def _run_file(out, settings, read):
    with claim_output(out, settings, False, folder=False, read=read, what="cache") as claim:
        return claim.resumes


def test_a_digest_record_names_the_keys_when_the_settings_are_recorded_too(tmp_path):
    old = {"tokens": 100, "seed": 0, "betas": (0.9, 0.99)}
    config = {"fit_identity": settings_digest(old), "fit_identity_record": json.loads(json.dumps(old))}
    require_same_digest(config, "fit_identity", old, "--out 'x': pca", source="config.json", what="dictionary")
    with pytest.raises(UserError, match=r"'x': pca holds a dictionary made with other settings \(seed\): seed: "
                                        r"config.json has 0, command asks 1: .*choose another --out$"):
        require_same_digest(config, "fit_identity", {**old, "seed": 1}, "--out 'x': pca", source="config.json",
                            what="dictionary")
    del config["fit_identity_record"]  # a folder written before the settings were recorded: the digest differs
    with pytest.raises(UserError, match=r"other settings \(fit_identity\)"):
        require_same_digest(config, "fit_identity", {**old, "seed": 1}, "--out 'x': pca", source="config.json",
                            what="dictionary")
