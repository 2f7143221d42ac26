"""Issue 13 across commands: one writer per output, a dead LLM endpoint fails fast, a run that produced
nothing exits non-zero, clear errors for backend specs, and report text that shows what the corpus holds."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import cli
from activations.cache_writer import cache_activations
from explain.records_file import RESULTS_FILE, read_records
from tests.support.cli_output import error_line

ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.0.hook_resid_pre"
DOC = "Party 🎉 at שלום and 日本語 with \x1b[31m red \x00 nul, then the quick brown fox. "
HOLDER = """
import sys
from contextlib import ExitStack
from common.locks import output_lock
with ExitStack() as stack:
    for arg in sys.argv[1:]:
        kind, path = arg.split("=", 1)
        stack.enter_context(output_lock(path, folder=kind == "folder"))
    print("locked", flush=True)
    sys.stdin.read()
"""


# -- one writer per output --------------------------------------------------------------------------------------------

def _command(name: str, tmp: Path) -> tuple[list[str], Path, bool]:
    """(arguments, the output another process holds, whether it is a folder)."""
    cache = str(tmp / "inputs" / "c.h5")
    out = tmp / "outputs" / name
    return {
        "cache": (["cache", "--hooks", HOOK, "--corpus", str(tmp / "inputs" / "t.txt"), "--out", str(out)], out, False),
        "train-sae": (["train-sae", "--cache", cache, "--hook", HOOK, "--out", str(out)], out, True),
        "baselines": (["baselines", "--cache", cache, "--hook", HOOK, "--out", str(out)], out, True),
        "evaluate": (["evaluate", "--cache", cache, "--dict", str(out)], out, True),
        "explain": (["explain", "--cache", cache, "--dict", str(tmp / "inputs" / "d"), "--out", str(out)], out, True),
        "patch-ioi": (["patch-ioi", "--dict", str(tmp / "inputs" / "d"), "--out", str(out)], out, True),
        "report": (["report", "--run", str(tmp / "inputs"), "--out", str(out)], out, True),
        "demo": (["demo", "--out", str(out)], out, True),
    }[name]


COMMANDS = ["cache", "train-sae", "baselines", "evaluate", "explain", "patch-ioi", "report", "demo"]


@pytest.fixture(scope="module")
def held_outputs(tmp_path_factory):
    """Every command's output, held by one other process (as a second run of the same command would)."""
    tmp = tmp_path_factory.mktemp("held")
    (tmp / "inputs").mkdir()
    targets = [_command(name, tmp)[1:] for name in COMMANDS]
    proc = subprocess.Popen([sys.executable, "-c", HOLDER] + [f"{'folder' if f else 'file'}={p}" for p, f in targets],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "locked"
    yield tmp, proc.pid
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("name", COMMANDS)
def test_every_writing_command_refuses_an_output_another_process_is_writing(name, held_outputs, capsys, monkeypatch):
    import activations.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("nothing may be loaded"))
    tmp, pid = held_outputs
    args, out, _ = _command(name, tmp)
    assert cli.main(args) == 2
    err = error_line(capsys.readouterr().err)
    assert f"{str(out)!r} is being written by process {pid} right now" in err and "--overwrite" not in err, err


@pytest.mark.parametrize("name", COMMANDS)
def test_an_output_under_a_file_fails_in_one_line_before_anything_is_read(name, tmp_path, capsys, monkeypatch):
    """`train-sae --out FILE/x` used to train to the end and die at save; every command now checks first."""
    import activations.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("nothing may be loaded"))
    (tmp_path / "inputs").mkdir()
    blocker = tmp_path / "a_file"
    blocker.write_text("precious")
    args, out, _ = _command(name, tmp_path)
    bad = blocker / "sub"
    args = [str(bad) if a == str(out) else a for a in args]
    if name == "evaluate":  # its outputs are the dictionaries' config.json and the plots
        args += ["--plot", str(bad / "frontier.png")]
    assert cli.main(args) == 2
    err = error_line(capsys.readouterr().err)
    assert "which is a file: pass another path" in err, err
    assert blocker.read_text() == "precious" and sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "inputs"]


# -- explain: endpoints, exit status, specs, report text ---------------------------------------------------------------

@pytest.fixture(scope="module")
def explain_inputs(tiny_model_dirs, tmp_path_factory):
    """A fragment cache of the tiny GPT-2 over text with emoji, Hebrew, CJK, ESC and NUL, and its neuron basis."""
    from sae.baselines import neuron_basis

    tmp = tmp_path_factory.mktemp("explain_inputs")
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"Doc {i}. " + DOC * 3}) + "\n" for i in range(40)), encoding="utf-8")
    cache = cache_activations(model=str(tiny_model_dirs["gpt2"]), corpus=str(corpus), hooks=[HOOK], context_length=32,
                              max_tokens=32 * 40, batch_size=20, dtype="float32", out=tmp / "frags.h5",
                              fragments=True, progress=False).path
    neuron = neuron_basis(32, {"hook": HOOK}).save(tmp / "dicts" / "neuron")
    return {"tmp": tmp, "cache": str(cache), "neuron": str(neuron)}


def _explain(inputs: dict, out: Path, *extra: str) -> int:
    return cli.main(["explain", "--cache", inputs["cache"], "--dict", inputs["neuron"], "--out", str(out), *extra])


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there once the socket is closed


def test_a_dead_endpoint_stops_the_run_at_once_naming_its_url(explain_inputs, tmp_path, capsys, monkeypatch):
    import explain.llm.remote as remote

    waits = []
    monkeypatch.setattr(remote.time, "sleep", waits.append)  # the retry schedule, recorded instead of slept
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    url = _closed_port_url()
    out = tmp_path / "expl"
    rc = _explain(explain_inputs, out, "--features", "20", "--explainer", "openai:m", "--simulator", "openai:m",
                  "--base-url", url)
    err = error_line(capsys.readouterr().err)
    assert rc == 2 and f"cannot reach {url}" in err and "connection attempts in a row failed" in err, err
    assert len(waits) < 5 and sum(waits) < 60  # one request's retries, not 20 features' worth (~40 min for 100)
    assert read_records(out / RESULTS_FILE) == []
    assert not (out / "llm_cache.sqlite").exists()


def test_a_run_where_every_feature_failed_exits_non_zero(explain_inputs, tmp_path, capsys, monkeypatch):
    from tests.support.remote_server import FakeServer

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = FakeServer()
    server.script = [400] * 100  # refuses every request: a failure per feature, not a dead endpoint
    try:
        rc = _explain(explain_inputs, tmp_path / "expl", "--features", "3", "--explainer", "openai:m",
                      "--simulator", "openai:m", "--base-url", server.url)
    finally:
        server.close()
    captured = capsys.readouterr()
    err = error_line(captured.err)
    assert rc == 2 and "no feature of this run succeeded: all 3 failed, the first with LLMError" in err, err
    assert "HTTP 400" in err and "rerun the same command" in err
    records = read_records(tmp_path / "expl" / RESULTS_FILE)
    assert [r["status"] for r in records] == ["failed"] * 3


def test_a_setup_error_leaves_no_llm_cache_and_no_folder(explain_inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "expl"
    assert _explain(explain_inputs, out, "--explainer", "openai:gpt-4o-mini", "--simulator", "openai:gpt-4o-mini") == 2
    assert "needs an API key" in error_line(capsys.readouterr().err)
    assert not out.exists()


@pytest.fixture(scope="module")
def tokens_report(explain_inputs):
    """An explain run (tokens explainer) over the multilingual cache and its report."""
    from report.build import build_report

    run = explain_inputs["tmp"] / "run"
    assert cli.main(["explain", "--cache", explain_inputs["cache"], "--dict", explain_inputs["neuron"],
                     "--features", "40", "--out", str(run / "explanations" / "tokens")]) == 0
    return run, build_report(run, run / "report").read_text(encoding="utf-8")


def test_features_beyond_a_dictionary_say_how_many_it_has(tokens_report, explain_inputs, capsys):
    run, _ = tokens_report
    assert len(read_records(run / "explanations" / "tokens" / RESULTS_FILE)) == 32
    assert cli.main(["explain", "--cache", explain_inputs["cache"], "--dict", explain_inputs["neuron"],
                     "--features", "40", "--out", str(run / "explanations" / "tokens")]) == 0
    assert "--features 40 is more than neuron has: it has 32 features, and all 32 are explained" in \
        capsys.readouterr().out


def test_report_shows_characters_split_across_tokens_as_themselves(tokens_report):
    _, html = tokens_report
    for text in ("🎉", "ש", "ל", "日", "本", "語"):
        assert text in html, text
    records = [r for r in read_records(tokens_report[0] / "explanations" / "tokens" / RESULTS_FILE)
               if r["status"] == "ok"]
    fragments = [f["tokens"] for r in records for f in r["exemplars"]["top"]]
    assert any("🎉" in tokens for tokens in fragments)
    # U+FFFD only for bytes of a character cut off at a fragment's edge (at most 3 tokens of a 4-byte one)
    assert not [tokens for tokens in fragments if "\ufffd" in "".join(tokens[3:-3])]


def test_report_writes_control_characters_as_visible_escapes(tokens_report):
    _, html = tokens_report
    assert "\\x1b" in html and "\\x00" in html
    assert "\x1b" not in html and "\x00" not in html
