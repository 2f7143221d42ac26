"""Issue 13 in activations/: the output lock, non-finite activations, bfloat16 storage, damaged caches,
`--device`, local models that are GGUF files or not models at all, and files a user can share."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import cli
from activations.cache_writer import cache_activations
from common.errors import UserError
from activations.reader import ActivationCache
from common.locks import LOCK_NAME, lock_path_of, output_lock
from tests.support.cli_output import error_line
from tests.support.lock_holder import Holder

ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.0.hook_resid_pre"
def test_output_lock_refuses_a_second_process_and_kill_9_releases_it(tmp_path):
    out = tmp_path / "runs" / "dicts"
    holder = Holder(out, folder=True)
    try:
        with pytest.raises(UserError, match=rf"--out '{out}' is being written by process {holder.proc.pid} right now"):
            with output_lock(out, folder=True):
                pass
    finally:
        holder.kill()
    assert (out / LOCK_NAME).exists()  # left behind by kill -9, and harmless:
    with output_lock(out, folder=True) as lock:
        assert lock == out / LOCK_NAME
        with output_lock(out, folder=True):  # the same process may take it again (the demo's stages)
            pass
    assert not (out / LOCK_NAME).exists()


def test_output_lock_of_a_file_lives_beside_it_and_leaves_no_folder_it_made(tmp_path):
    out = tmp_path / "new" / "deeper" / "c.h5"
    with output_lock(out, folder=False) as lock:
        assert lock == lock_path_of(out, folder=False) == out.parent / ".c.h5.lock" and lock.exists()
    assert not (tmp_path / "new").exists()  # nothing was written: the folders it created are gone again


def _tiny_overflowing_model(tiny_model_dirs, tmp_path) -> Path:
    """The tiny GPT-2 with embeddings far beyond float16's range (like Gemma-3-270M's large activations)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["gpt2"])
    with torch.no_grad():
        model.transformer.wte.weight.mul_(1e7)
    path = tmp_path / "big"
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dirs["gpt2"]).save_pretrained(path)
    return path


def test_float16_overflow_stops_with_one_line_naming_float32_and_bfloat16_holds_it_exactly(
        tiny_model_dirs, text_corpus, tmp_path, capsys):
    model = _tiny_overflowing_model(tiny_model_dirs, tmp_path)
    out = tmp_path / "c.h5"
    args = ["cache", "--model", str(model), "--corpus", str(text_corpus), "--hooks", HOOK, "--context-length", "16",
            "--max-tokens", "96", "--batch-size", "2"]
    assert cli.main(args + ["--dtype", "float16", "--out", str(out)]) == 2
    err = error_line(capsys.readouterr().err)
    assert "beyond float16's range" in err and "--dtype float32" in err, err
    with h5py.File(out, "r") as f:  # nothing with inf was written, and the file is still a valid cache
        assert int(f.attrs["n_contexts_done"]) == 0 and np.isfinite(f["acts"][HOOK][:]).all()

    assert cli.main(args + ["--dtype", "bfloat16", "--out", str(out), "--overwrite"]) == 0
    assert cli.main(args + ["--dtype", "float32", "--out", str(tmp_path / "f32.h5")]) == 0
    with ActivationCache(out) as bf16, ActivationCache(tmp_path / "f32.h5") as f32:
        assert bf16.dtype == "bfloat16" and bf16.complete
        got, ref = bf16.acts(HOOK, range(bf16.n_contexts)), f32.acts(HOOK, range(f32.n_contexts))
        assert got.dtype == np.float32 and np.abs(ref).max() > 65504
        np.testing.assert_array_equal(got, torch.from_numpy(ref).bfloat16().float().numpy())
        batch = next(bf16.iter_batches(HOOK, batch_size=8, n_tokens=8))
        assert batch.dtype == torch.float32 and torch.isfinite(batch).all()
        _, _, block = next(bf16.iter_contexts(HOOK, batch_contexts=2))
        np.testing.assert_array_equal(block.numpy(), got[:2])


def test_a_batch_that_overflows_is_never_written_and_what_came_before_resumes(tiny_model_dirs, text_corpus, tmp_path,
                                                                                 monkeypatch):
    import activations.batch_writer as writer  # the write loop runs the model

    real = writer.run_with_cache
    calls = []

    def overflow_from_the_third_batch(model, ids, hooks):
        calls.append(1)
        acts = real(model, ids, hooks)
        return {k: v * 1e6 for k, v in acts.items()} if len(calls) >= 3 else acts

    args = dict(model=str(tiny_model_dirs["gpt2"]), corpus=str(text_corpus), hooks=[HOOK], context_length=16,
                max_tokens=16 * 10, batch_size=2, dtype="float16", out=tmp_path / "c.h5", progress=False)
    monkeypatch.setattr(writer, "run_with_cache", overflow_from_the_third_batch)
    with pytest.raises(UserError, match=r"context 4, position .*--dtype float32.*the 4 contexts before it are written"):
        cache_activations(**args)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert int(f.attrs["n_contexts_done"]) == 4 and np.isfinite(f["acts"][HOOK][:]).all()
    monkeypatch.setattr(writer, "run_with_cache", real)
    result = cache_activations(**args)  # the same command resumes from context 4
    assert result.tokens_written == 6 * 16
    with ActivationCache(result.path) as cache:
        assert cache.complete


def test_a_model_that_produces_nan_is_named_as_the_cause_not_the_dtype(tiny_model_dirs, text_corpus, tmp_path,
                                                                        monkeypatch):
    import activations.batch_writer as writer  # the write loop runs the model

    real = writer.run_with_cache
    monkeypatch.setattr(writer, "run_with_cache",
                        lambda *a, **k: {n: v * float("nan") for n, v in real(*a, **k).items()})
    with pytest.raises(UserError, match=r"the model itself produced NaN or inf.*--dtype cannot fix that"):
        cache_activations(model=str(tiny_model_dirs["gpt2"]), corpus=str(text_corpus), hooks=[HOOK], context_length=16,
                          max_tokens=64, batch_size=2, dtype="float32", out=tmp_path / "c.h5", progress=False)


def test_a_truncated_cache_is_called_corrupt(tiny_model_dirs, text_corpus, tmp_path, capsys):
    args = dict(model=str(tiny_model_dirs["gpt2"]), corpus=str(text_corpus), hooks=[HOOK], context_length=16,
                max_tokens=16 * 6, batch_size=2, out=tmp_path / "c.h5", progress=False)
    out = cache_activations(**args).path
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"is a corrupt HDF5 file \(truncated or damaged"):
        ActivationCache(out)
    with pytest.raises(UserError, match=r"is a corrupt HDF5 file.*--overwrite"):
        cache_activations(**args)
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(UserError, match="is not an HDF5 file"):
        ActivationCache(tmp_path / "text.h5")
    # from the command line: a row of tests/test_bad_inputs_earlier.py


# -- local models that are GGUF files, or not models ----------------------------------------------------------------

def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row order (which transformers undoes when it reads a GGUF file)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(model_dir: Path, path: Path) -> None:
    """The tiny Llama of conftest as a GGUF file (float32 tensors, its byte-level BPE tokenizer)."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_token_types([3 if t in tok.all_special_tokens else 1 for t in tokens])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_add_bos_token(True)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not cfg.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    names = {"attn_norm": "input_layernorm", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads))
        for ours, theirs in names.items():
            w.add_tensor(f"blk.{i}.{ours}.weight", sd[p + theirs + ".weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_a_gguf_file_or_a_folder_holding_one_loads_like_the_default_model(tiny_model_dirs, tmp_path, monkeypatch):
    from activations.models import load_model

    monkeypatch.setenv("DICTLENS_HOME", str(tmp_path / "home"))
    old = os.umask(0o022)
    try:
        folder = tmp_path / "gguf_only"
        folder.mkdir()
        write_tiny_gguf(tiny_model_dirs["llama"], folder / "tiny.gguf")
        ref = load_model(str(tiny_model_dirs["llama"]))
        ids = ref.tokenizer("When Mary and John went to the store", return_tensors="pt").input_ids
        for model_arg in (folder / "tiny.gguf", folder):
            loaded = load_model(str(model_arg))
            assert loaded.tokenizer("When Mary and John went to the store", return_tensors="pt").input_ids.equal(ids)
            with torch.no_grad():
                torch.testing.assert_close(loaded.model(ids).logits, ref.model(ids).logits)
    finally:
        os.umask(old)
    converted = Path(loaded.source)
    assert converted.parent == tmp_path / "home" / "models"  # converted once, loaded from there afterwards
    assert len(list(converted.parent.iterdir())) == 1
    assert stat.S_IMODE(converted.stat().st_mode) == 0o755  # not mkdtemp's 0700
    assert {stat.S_IMODE(p.stat().st_mode) for p in converted.iterdir()} == {0o644}  # not safetensors' 0600


def test_caches_follow_the_users_umask(tiny_model_dirs, text_corpus, tmp_path):
    old = os.umask(0o022)
    try:
        out = cache_activations(model=str(tiny_model_dirs["gpt2"]), corpus=str(text_corpus), hooks=[HOOK],
                                context_length=16, max_tokens=64, batch_size=2, out=tmp_path / "x" / "c.h5",
                                progress=False).path
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644 and stat.S_IMODE(out.parent.stat().st_mode) == 0o755
    assert sorted(p.name for p in out.parent.iterdir()) == ["c.h5"]  # no lock or partial file left beside it


def test_hooks_into_a_closed_pipe_exits_quietly(tiny_model_dirs):
    """`cli.py hooks | head -1`: the reader goes away before the listing is written."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "hooks", "--model", str(tiny_model_dirs["gpt2"])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err


def test_tokens_are_decoded_in_runs_so_split_characters_show_as_themselves():
    from activations.tokens import decode_each
    from tests.support.tiny_models import make_tokenizer

    tok = make_tokenizer()
    text = "Party 🎉 at שלום and 日本語, é\x1b[0m end"
    ids = tok(text)["input_ids"]
    alone = [tok.decode([i]) for i in ids]
    assert sum("\ufffd" in s for s in alone) > 10  # the tiny vocabulary splits every such character into bytes
    shown = decode_each(tok, ids)
    assert len(shown) == len(ids) and "".join(shown) == tok.decode(ids) == text
    assert "\ufffd" not in "".join(shown) and "🎉" in shown and "語" in shown
    # a fragment that starts inside a character: one U+FFFD per orphan byte, and the rest is right
    end = next(i for i, s in enumerate(shown) if s == "🎉")  # its last byte; the three before show ""
    cut = decode_each(tok, ids[end - 1:])
    assert cut[:2] == ["\ufffd", "\ufffd"] and "".join(cut[2:]) == "".join(shown[end + 1:])
    assert decode_each(tok, ids[:end])[-3:] == ["\ufffd"] * 3  # and one cut off before it is complete
