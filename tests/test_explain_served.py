"""Scoring against a real OpenAI-compatible server that returns no logprobs: `transformers serve` on localhost.

The module starts `transformers serve` once (it needs fastapi and uvicorn,
the `test` extra) on a tiny model saved to a folder: a one-layer Llama whose
blocks write nothing, so the next token depends only on the last one, with
an embedding and output layer set so that every chat is answered with one
added token, the JSON list ANSWER (15 integers: the length of the fragments
of the `setup` cache), and then end of text. The server's own code does
everything else: the chat template, generation, the HTTP API without
logprobs. So the explainer's explanation and the simulator's text answers
are known exactly, and the text-mode scores can be computed by hand.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from common.errors import UserError
from explain.commands import explain_command
from explain.llm.backends import make_backend
from explain.llm.errors import NoLogprobs
from explain.pipeline import read_records
from explain.prompts import parse_explanation
from explain.scorers.prompts import detection_request
from explain.scorers.simulation import AllAtOnceSimulator
from explain.scorers.text_sim import TextSimulator
from explain.settings import ExplainSettings

pytestmark = pytest.mark.slow  # starts `transformers serve`

VALUES = [i % 11 for i in range(15)]
ANSWER = json.dumps(VALUES)
SERVE = "import sys; from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; sys.exit(main())"


def _answering_model(folder: Path) -> Path:
    """Save the tiny model that answers every chat with ANSWER (see the module docstring)."""
    import torch
    from tokenizers import AddedToken

    from tests.support.tiny_models import make_tiny_model, make_tokenizer

    tok = make_tokenizer()
    tok.add_tokens([AddedToken(ANSWER, normalized=False, special=False)])
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    model = make_tiny_model("llama", vocab_size=len(tok), n_layers=1)
    answer, eos = tok.convert_tokens_to_ids(ANSWER), tok.eos_token_id
    with torch.no_grad():
        for layer in model.model.layers:  # the blocks add nothing to the residual stream
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        emb.zero_()
        head.zero_()
        emb[:, 0] = 1.0  # every token but ANSWER -> ANSWER next
        emb[answer, 0], emb[answer, 1] = 0.0, 1.0  # ANSWER -> end of text
        head[answer, 0], head[eos, 1] = 10.0, 10.0
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = eos
    # transformers serve (5.2x) refuses a prompt longer than the model's positions with HTTP 400; the prompts here
    # run to ~700 tokens, and nothing in this model depends on the position
    model.config.max_position_embeddings = 4096
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


class Served:
    def __init__(self, folder: Path, url: str):
        self.folder, self.url = folder, url
        self.spec = f"openai:{folder}"  # transformers serve pinned to a model answers only requests naming it


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        pytest.skip("transformers serve needs fastapi and uvicorn: pip install -e '.[test]'")
    root = tmp_path_factory.mktemp("served")
    folder = _answering_model(root / "model")
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = open(root / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", SERVE, "serve", str(folder), "--host", "127.0.0.1", "--port",
                             str(port), "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"transformers serve did not start: {(root / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield Served(folder, f"http://127.0.0.1:{port}/v1")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _settings(setup, served, out, **kw):
    args = dict(cache=str(setup["cache"]), dicts=[str(setup["single"])], feature_ids=[0], explainer=served.spec,
                simulator=served.spec, base_url=served.url, scorers=["simulation"], out=str(out), concurrency=2)
    args.update(kw)
    return ExplainSettings(**args)


def _test_fragments(rec: dict) -> list[list[float]]:
    """True activations of the scored test fragments, top first (the order the scorer reads them)."""
    ex = rec["exemplars"]
    return [f["acts"] for f in ex["top"] + ex["random"] if f["split"] == "test"]


def test_no_logprobs_are_detected_and_auto_mode_scores_from_text_answers(setup, served, tmp_path, capsys):
    backend = make_backend(served.spec, base_url=served.url)
    prompt = AllAtOnceSimulator(backend).prompts("dogs", [[" the", " dog"]])[0]
    with pytest.raises(NoLogprobs, match="returned no logprobs"):
        backend.digit_distributions([prompt])  # completions give no prompt logprobs, nor does chat
    gen = backend.generate_scored([detection_request("dogs", ["a dog", "a cat"])])[0]
    assert gen.mode == "text" and gen.top_logprobs is None and gen.text == ANSWER
    backend.close()

    out = tmp_path / "auto"
    explain_command(_settings(setup, served, out, scorers=["simulation", "detection"]))
    assert "simulating from text answers" in capsys.readouterr().err
    [rec] = read_records(out / "explanations.jsonl")
    assert rec["status"] == "ok" and rec["mode"] == "text"
    assert rec["explanation"] == parse_explanation(ANSWER) != ""
    assert rec["simulation"]["mode"] == "text"
    acts = _test_fragments(rec)
    assert rec["simulation"]["test"] == [VALUES] * len(acts)  # the integers the server wrote, one per token
    expected = np.corrcoef(np.tile(VALUES, len(acts)), np.concatenate(acts))[0, 1]
    assert rec["scores"]["top_and_random"] == pytest.approx(expected, abs=2e-3)
    # detection reads text lists too: 15 integers are no answer to a batch of 5 examples, so every batch fails
    det = rec["detection"]
    assert det["mode"] == "text" and det["n_text_answers"] == 0 and len(det["failed_batches"]) == len(det["batches"])
    assert rec["scores"]["detection"]["auroc"] is None and "batches failed" in rec["score_notes"]["detection"]["auroc"]


def test_a_text_answer_of_the_wrong_length_fails_that_fragment_only(served):
    backend = make_backend(served.spec, base_url=served.url)
    short = [" a", " dog", " ran"]
    result = TextSimulator(backend).simulate_many([("dogs", [[f" t{i}" for i in range(15)], short])])[0]
    backend.close()
    assert result.mode == "text" and result.expected_values == [[float(v) for v in VALUES], None]  # never padded
    [failed] = result.extra["failed_fragments"]
    assert failed["fragment"] == 1 and "15 values for 3 tokens" in failed["error"] and failed["answer"] == ANSWER


def test_a_scoring_failure_keeps_the_explanation_and_rescore_scores_it(setup, served, tmp_path):
    src = tmp_path / "logprobs"
    with pytest.raises(UserError, match="no feature of this run succeeded"):
        explain_command(_settings(setup, served, src, score_mode="logprobs"))
    [failed] = read_records(src / "explanations.jsonl")
    assert failed["status"] == "failed" and failed["failed_step"] == "scoring"
    assert failed["failed_scorer"] == "simulation" and "NoLogprobs" in failed["error"]
    assert failed["explanation"] == parse_explanation(ANSWER) == failed["candidates"][0]["explanation"]
    assert failed["scores"]["top_and_random"] is None and "simulation" not in failed

    out = tmp_path / "rescored"
    explain_command(_settings(setup, served, out, rescore=str(src)))
    [rec] = read_records(out / "explanations.jsonl")
    assert rec["status"] == "ok" and rec["mode"] == "text" and rec["rescored_from"] == str(src.resolve())
    assert rec["explanation"] == failed["explanation"] and rec["scores"]["top_and_random"] is not None
    with closing(sqlite3.connect(out / "llm_cache.sqlite")) as conn:
        ops = {json.loads(r)["op"] for (r,) in conn.execute("SELECT request FROM calls")}
    assert ops == {"text-answer"}  # only the simulator was asked: the explanation came from the source's cache
    assert json.loads((out / "config.json").read_text())["rescore"] == str(src.resolve())

    with pytest.raises(UserError, match="its seed is 0, this run's is 1"):
        explain_command(_settings(setup, served, tmp_path / "other", seed=1, rescore=str(src)))
    with pytest.raises(UserError, match="is this run's --out"):
        explain_command(_settings(setup, served, src, rescore=str(src)))
    assert not (tmp_path / "other").exists()
