"""The cache command: exact values, resume after kill -9, and clear errors on bad input."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from activations.cache_writer import cache_activations
from common.errors import UserError
from activations.reader import ActivationCache
from tests.support.cache_files import n_contexts_done

ROOT = Path(__file__).resolve().parents[1]
N_RESUME = 1000
HOOKS = ["blocks.1.hook_resid_post", "blocks.0.mlp.hook_post", "blocks.2.hook_resid_pre"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        out = {"tokens": f["tokens"][:]}
        out.update({name: f["acts"][name][:] for name in f["acts"]})
        out["done"] = np.array(f.attrs["n_contexts_done"])
    return out


def test_cached_values_equal_hidden_states(arch, tiny_model_dirs, text_corpus, tmp_path):
    from transformers import AutoModelForCausalLM

    out = cache_activations(model=str(tiny_model_dirs[arch]), corpus=str(text_corpus), hooks=HOOKS,
                            context_length=16, max_tokens=16 * 20, batch_size=4, dtype="float32",
                            out=tmp_path / "c.h5", progress=False).path
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[arch]).eval()
    with ActivationCache(out) as cache:
        assert cache.n_contexts == 20 and cache.complete
        tokens = cache.tokens()
        assert tokens.dtype == np.int32 and tokens.shape == (20, 16)
        assert cache.bos_prepended == (arch == "llama")
        if cache.bos_prepended:
            assert (tokens[:, 0] == model.config.bos_token_id).all() or len(set(tokens[:, 0])) == 1
        with torch.no_grad():
            hidden = model(torch.from_numpy(tokens).long(), output_hidden_states=True).hidden_states
        np.testing.assert_allclose(cache.acts("blocks.1.hook_resid_post", range(20)), hidden[2].numpy(), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(cache.acts("blocks.2.hook_resid_pre", range(20)), hidden[2].numpy(), atol=1e-5, rtol=1e-5)
        assert cache.acts("blocks.0.mlp.hook_post", [3]).shape == (1, 16, cache.width("blocks.0.mlp.hook_post"))


@pytest.mark.parametrize("order", ["all_four", "mlp_pair"])
def test_every_hook_kind_of_one_layer_is_cached_exactly(arch, order, tiny_model_dirs, text_corpus, tmp_path):
    """All four hook kinds at one layer through the cache command's early-stop path.

    The pair (hook_mlp_out, mlp.hook_post) alone is the case where stopping
    after the wrong hook would lose hook_mlp_out.
    """
    from transformers import AutoModelForCausalLM

    from tests.support.hook_references import blocks_and_norm, mlp_reference

    kinds = ["hook_mlp_out", "mlp.hook_post", "hook_resid_post", "hook_resid_pre"]
    if order == "mlp_pair":
        kinds = kinds[:2]
    hooks = [f"blocks.1.{k}" for k in kinds]
    out = cache_activations(model=str(tiny_model_dirs[arch]), corpus=str(text_corpus), hooks=hooks,
                            context_length=16, max_tokens=16 * 6, batch_size=4, dtype="float32",
                            out=tmp_path / "c.h5", progress=False).path
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[arch]).eval()
    blocks, _ = blocks_and_norm(arch, model)
    with ActivationCache(out) as cache:
        tokens = torch.from_numpy(cache.tokens()).long()
        mlp_in = {}
        handle = blocks[1].mlp.register_forward_pre_hook(lambda m, a: mlp_in.__setitem__("x", a[0]))
        with torch.no_grad():
            hidden = model(tokens, output_hidden_states=True).hidden_states
            handle.remove()
            post_ref, out_ref = mlp_reference(arch, blocks[1], mlp_in["x"])
        reference = {"hook_resid_pre": hidden[1], "hook_resid_post": hidden[2],
                     "mlp.hook_post": post_ref, "hook_mlp_out": out_ref}
        for kind, name in zip(kinds, hooks):
            got = cache.acts(name, range(cache.n_contexts))
            np.testing.assert_allclose(got, reference[kind].numpy(), atol=1e-5, rtol=1e-5, err_msg=name)


def test_packed_contexts_follow_the_corpus_text(tiny_model_dirs, text_corpus, tmp_path):
    from transformers import AutoTokenizer

    out = cache_activations(model=str(tiny_model_dirs["gpt2"]), corpus=str(text_corpus), hooks=HOOKS[:1],
                            context_length=32, max_tokens=32 * 5, batch_size=2, out=tmp_path / "c.h5", progress=False).path
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dirs["gpt2"])
    first_doc = json.loads(text_corpus.read_text().splitlines()[0])["text"]
    expected = tokenizer(first_doc, add_special_tokens=False)["input_ids"][:32]
    with ActivationCache(out) as cache:
        assert cache.tokens([0])[0].tolist() == expected
        assert cache.attrs["dtype"] == "float16"
        assert cache.acts(HOOKS[0], [0]).dtype == np.float32  # readers always get float32


def test_fragment_mode_takes_one_window_per_document(tiny_model_dirs, tmp_path):
    from transformers import AutoTokenizer

    corpus = tmp_path / "docs"
    corpus.mkdir()
    texts = ["short.", "The quick brown fox jumps over the lazy dog. " * 4, "Paris is the capital of France. " * 5]
    for i, text in enumerate(texts):
        (corpus / f"{i}.txt").write_text(text)
    out = cache_activations(model=str(tiny_model_dirs["llama"]), corpus=str(corpus), hooks=HOOKS[:1],
                            context_length=12, max_tokens=10_000, fragments=True, out=tmp_path / "f.h5", progress=False).path
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dirs["llama"])
    with ActivationCache(out) as cache:
        assert cache.n_contexts == 2 and cache.fragments  # the short document is skipped
        assert cache.attrs["documents_too_short"] == 1
        tokens = cache.tokens()
        assert (tokens[:, 0] == tokenizer.bos_token_id).all()
        for row, text in zip(tokens, texts[1:]):
            doc = tokenizer(text, add_special_tokens=False)["input_ids"]
            window = row[1:].tolist()
            assert any(doc[i:i + 11] == window for i in range(len(doc) - 10))


def test_a_latin1_corpus_is_read_as_it_is_with_encoding(tiny_model_dirs, tmp_path):
    """Issue 28: non-UTF-8 bytes used to become U+FFFD without a word; now they are refused (see
    tests/test_bad_inputs.py) or decoded with --encoding, and the cache holds the accented letters themselves."""
    from transformers import AutoTokenizer

    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes("Café au lait, crème brûlée and naïve façades are served here. ".encode("latin-1") * 10)
    out = cache_activations(model=str(tiny_model_dirs["gpt2"]), corpus=str(corpus), hooks=HOOKS[:1],
                            context_length=8, max_tokens=64, out=tmp_path / "u.h5", progress=False,
                            encoding="latin-1").path
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dirs["gpt2"])
    with ActivationCache(out) as cache:
        assert cache.n_contexts == 8
        text = tokenizer.decode(cache.tokens().reshape(-1).tolist())
        assert "Café" in text and "\ufffd" not in text
        assert "encoding:iso8859-1" in json.loads(cache.attrs["settings"])["corpus"]


def _cache_cmd(model_dir: Path, corpus: Path, out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "cache", "--model", str(model_dir), "--corpus", str(corpus),
            "--hooks", ",".join(HOOKS), "--context-length", "32", "--max-tokens", str(32 * N_RESUME),
            "--batch-size", "2", "--dtype", "float16", "--out", str(out)]


@pytest.mark.slow  # a long run killed twice and resumed
def test_resume_after_kill_gives_identical_file(tiny_model_dirs, tmp_path):
    corpus = tmp_path / "corpus.txt"
    rng = np.random.default_rng(0)
    words = ["Paris", "capital", "France", "the", "quick", "fox", "dog", "Mary", "John", "store", "1", "42"]
    corpus.write_text(" ".join(rng.choice(words, size=40_000)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}

    reference = tmp_path / "ref.h5"
    subprocess.run(_cache_cmd(tiny_model_dirs["gpt_neox"], corpus, reference), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed.h5"
    kills = 0
    for _ in range(2):  # kill twice at different points, then let it finish
        proc = subprocess.Popen(_cache_cmd(tiny_model_dirs["gpt_neox"], corpus, killed), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = n_contexts_done(killed) if killed.exists() else 0
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if killed.exists() and n_contexts_done(killed) >= before + 100:
                break
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1, "the run finished before it could be killed; make it longer"
    partial_done = n_contexts_done(killed)
    assert 0 < partial_done < N_RESUME
    subprocess.run(_cache_cmd(tiny_model_dirs["gpt_neox"], corpus, killed), check=True, env=env, capture_output=True)

    ref, got = _arrays(reference), _arrays(killed)
    assert int(got["done"]) == int(ref["done"]) == N_RESUME
    for key in ref:
        np.testing.assert_array_equal(ref[key], got[key], err_msg=key)


def test_rerun_with_other_settings_fails_and_leaves_file(tiny_model_dirs, text_corpus, tmp_path):
    args = dict(model=str(tiny_model_dirs["gpt2"]), corpus=str(text_corpus), hooks=HOOKS[:1],
                context_length=16, max_tokens=16 * 6, batch_size=2, out=tmp_path / "c.h5", progress=False)
    out = cache_activations(**args).path
    digest = _sha(out)
    with pytest.raises(UserError, match=r"context_length: file has 16, command asks 8.*--overwrite"):
        cache_activations(**{**args, "context_length": 8})
    with pytest.raises(UserError, match="hooks"):
        cache_activations(**{**args, "hooks": HOOKS[:2]})
    assert _sha(out) == digest
    cache_activations(**args)  # same settings: complete, nothing rewritten
    assert _sha(out) == digest
    cache_activations(**{**args, "context_length": 8, "overwrite": True})
    with ActivationCache(out) as cache:
        assert cache.context_length == 8


def test_bad_inputs_fail_before_touching_output(tiny_model_dirs, text_corpus, tmp_path):
    out = tmp_path / "c.h5"
    out.write_bytes(b"precious")
    base = dict(model=str(tiny_model_dirs["gpt2"]), corpus=str(text_corpus), hooks=HOOKS[:1],
                context_length=16, max_tokens=160, out=out, progress=False)
    cases = [
        (dict(corpus=str(tmp_path / "missing.txt")), "does not exist.*'default'"),
        (dict(corpus=str(tmp_path)), "no .txt files"),
        (dict(hooks=["blocks.9.hook_resid_post"]), "layers 0..2"),
        (dict(hooks=["resid"]), "unknown hook name"),
        (dict(max_tokens=4), "less than one context"),
        (dict(dtype="int8"), "float16, bfloat16 or float32"),
        (dict(model=str(tmp_path / "nope")), "does not exist"),
    ]
    for override, pattern in cases:
        with pytest.raises(UserError, match=pattern):
            cache_activations(**{**base, **override, "overwrite": True})
    assert out.read_bytes() == b"precious"
    with pytest.raises(UserError, match="not an activation cache.*--overwrite"):
        cache_activations(**base)
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2 has no string field 'text'"):
        cache_activations(**{**base, "corpus": str(bad_jsonl), "overwrite": True})
    assert out.read_bytes() == b"precious"


def test_unreachable_hub_id_names_the_offline_default(monkeypatch):
    from activations.models import ModelLoadError, load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="--model default.*HF_HUB_OFFLINE"):
        load_model("EleutherAI/pythia-70m-deduped-not-cached-here")


def test_cli_prints_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "cli.py"), "cache", "--hooks", "blocks.0.nope",
                             "--corpus", str(tmp_path / "missing"), "--out", str(tmp_path / "x.h5")],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: corpus") and "Traceback" not in result.stderr


def test_opening_an_unfinished_cache_warns_once_with_the_fix(tiny_model_dirs, text_corpus, tmp_path):
    import warnings

    from activations.reader import IncompleteCacheWarning

    out = cache_activations(model=str(tiny_model_dirs["gpt2"]), corpus=str(text_corpus), hooks=HOOKS[:1],
                            context_length=16, max_tokens=16 * 8, batch_size=2, out=tmp_path / "c.h5",
                            progress=False).path
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a finished cache opens silently
        ActivationCache(out).close()
    with h5py.File(out, "r+") as f:  # as a run killed after 3 of its 8 contexts leaves it
        f.attrs["n_contexts_done"] = 3
    with pytest.warns(IncompleteCacheWarning, match=r"3 of 8 contexts.*rerun the cache command") as caught:
        with ActivationCache(out) as cache:
            assert cache.n_contexts == 3 and not cache.complete
            assert cache.tokens().shape[0] == 3
            list(cache.iter_contexts(HOOKS[0]))
    assert len([w for w in caught if issubclass(w.category, IncompleteCacheWarning)]) == 1
    cache_activations(model=str(tiny_model_dirs["gpt2"]), corpus=str(text_corpus), hooks=HOOKS[:1],
                      context_length=16, max_tokens=16 * 8, batch_size=2, out=out, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rerun the warning asks for finishes it
        with ActivationCache(out) as cache:
            assert cache.n_contexts == 8


def test_settings_attribute_is_the_old_writers_and_a_file_with_it_resumes(tiny_model_dirs, text_corpus, tmp_path):
    """The `settings` record is byte for byte what the cache writer wrote before CacheSettings was the CLI's
    settings, so files cached before still resume (here: one set back to 2 of its 6 contexts)."""
    from activations.corpus import resolve_corpus

    args = dict(model=str(tiny_model_dirs["gpt2"]), corpus=str(text_corpus), hooks=HOOKS[:2], context_length=16,
                max_tokens=16 * 6, batch_size=2, progress=False)
    out = cache_activations(**args, out=tmp_path / "c.h5").path
    old_text = json.dumps({"model": args["model"], "corpus": resolve_corpus(str(text_corpus)).describe(),
                           "hooks": HOOKS[:2], "context_length": 16, "max_tokens": 96, "batch_size": 2,
                           "dtype": "float16", "fragments": False}, sort_keys=True)
    with h5py.File(out, "r+") as f:
        assert f.attrs["settings"] == old_text
        complete = _arrays(out)
        f.attrs["n_contexts_done"] = 2
    result = cache_activations(**args, out=out)
    assert result.tokens_written == 4 * 16
    got = _arrays(out)
    for key in complete:
        np.testing.assert_array_equal(complete[key], got[key], err_msg=key)
