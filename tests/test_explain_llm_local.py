"""The local backend: EV math against a model with known logits, exactness of the one-pass reading, caching.

The known-logit model is a 1-layer Llama whose blocks are identities (attention
and MLP output projections zeroed), so the logits at a position depend only on
its token: the TAB token gets hand-chosen logits over the digits, the token "1"
gets hand-chosen logits for what follows it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.support.tiny_models import make_tokenizer
from explain.llm.cache import LLMCache
from explain.llm.digits import combine_digit_probs
from explain.llm.local import LocalBackend
from explain.prompts import build_simulation_prompt
from explain.records import ActivationRecord, FewShotExample
from explain.scorers.simulation import AllAtOnceSimulator, SimulatorConfig

FS = FewShotExample(id="fx", explanation="dogs", records=(ActivationRecord(["a", " dog"], [0.0, 1.0]),))
FRAGS = [["The", " quick", " fox"], [" jumps", " over"]]
H = 32


def _tiny_config(arch: str, vocab: int):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=H, n_layer=2, n_head=4, n_positions=1024)
    if arch == "gpt_neox":
        return GPTNeoXConfig(vocab_size=vocab, hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=1024)
    return LlamaConfig(vocab_size=vocab, hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=48, max_position_embeddings=1024)


def _random_model(arch: str, tok):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(_tiny_config(arch, len(tok))).eval()


def _known_logit_model(tok, tab_logits: dict[str, float], one_logits: dict[str, float]):
    """Logits depend only on the current token: TAB -> tab_logits, "1" -> one_logits, default -30."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(_tiny_config("llama", len(tok))).eval()
    vocab = tok.get_vocab()
    tab, one = vocab["ĉ"], vocab["1"]
    scale = math.sqrt(H)  # a row sqrt(H)·e_k has RMS 1, so the final RMSNorm leaves it unchanged
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        emb.zero_()
        emb[:, 2] = scale
        emb[tab] = 0.0
        emb[tab, 0] = scale
        emb[one] = 0.0
        emb[one, 1] = scale
        w = model.lm_head.weight
        w.zero_()
        w[:, 0] = -30.0 / scale
        w[:, 1] = -30.0 / scale
        for token, logit in tab_logits.items():
            w[vocab[token], 0] = logit / scale
        for token, logit in one_logits.items():
            w[vocab[token], 1] = logit / scale
    return model


def test_ev_two_step_ten_by_hand():
    tok = make_tokenizer()
    assert "10" not in tok.get_vocab()  # so "10" must be read as "1","0"
    # at TAB: p("0")=4/16, p("1")=2/16, p("5")=2/16, p("a")=8/16 (not a digit)
    # after "1": p("0")=1/4, p("2")=1/4, p("\n")=2/4
    model = _known_logit_model(tok, {"0": math.log(4), "1": math.log(2), "5": math.log(2), "a": math.log(8)},
                               {"0": 0.0, "2": 0.0, "Ċ": math.log(2)})
    backend = LocalBackend(model, tok, name="local:known")
    assert backend.ten_mode == "two-step"
    result = AllAtOnceSimulator(backend, SimulatorConfig(fewshot_id="negation")).simulate("dogs", FRAGS)
    # by hand: v0=1/4, v1=1/8·1/2=1/16, v5=1/8, v10=1/8·1/4=1/32 (1/8·1/4 for "12" dropped); total 15/32
    expected = np.zeros(11)
    expected[[0, 1, 5, 10]] = [8 / 15, 2 / 15, 4 / 15, 1 / 15]
    assert result.mode == "local-exact" and result.ten == "two-step"
    assert [len(f) for f in result.expected_values] == [3, 2]
    for frag in result.distributions:
        for dist in frag:
            np.testing.assert_allclose(dist, expected, atol=1e-6)
    np.testing.assert_allclose(np.concatenate(result.expected_values), 32 / 15, atol=1e-5)


def test_ev_single_token_ten_by_hand():
    tok = make_tokenizer()
    tok.add_tokens(["10"])
    # at TAB: p("0")=4/16, p("1")=2/16, p("10")=2/16, rest on "a"; "10" is one token, read directly
    model = _known_logit_model(tok, {"0": math.log(4), "1": math.log(2), "10": math.log(2), "a": math.log(8)},
                               {"0": 5.0})
    backend = LocalBackend(model, tok, name="local:known10")
    assert backend.ten_mode == "single-token"
    readout = backend.digit_distributions([build_simulation_prompt("dogs", FRAGS, FS)])[0]
    expected = np.zeros(11)
    expected[[0, 1, 10]] = [0.5, 0.25, 0.25]
    np.testing.assert_allclose(readout.distributions, np.tile(expected, (5, 1)), atol=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama"])
def test_one_pass_reading_equals_brute_force(arch):
    """Prefix KV reuse + batching + in-pass "1" extras == separate full forwards per slot."""
    tok = make_tokenizer(add_bos=(arch == "llama"))
    model = _random_model(arch, tok)
    backend = LocalBackend(model, tok, name=f"local:{arch}", max_batch_tokens=4096)
    prompts = [build_simulation_prompt("foxes", FRAGS, FS), build_simulation_prompt("dogs and cats", [[" dog"]], FS)]
    readouts = backend.digit_distributions(prompts)
    assert backend.forward_passes == 2  # the prefix once, then both prompts in one batch
    for prompt, readout in zip(prompts, readouts):
        state = backend._prefix_state(prompt.prefix)
        ids, slots = backend._encode_body(prompt)
        for j, s in enumerate(slots):
            seq = torch.tensor([state.ids + ids[: s + 1] + [backend.digit_ids[1]]])
            with torch.no_grad():
                logits = model(seq).logits[0].double()
            p = torch.softmax(logits[-2], -1)[backend.digit_ids].numpy()
            after = torch.softmax(logits[-1], -1)[backend.digit_ids].numpy()
            np.testing.assert_allclose(readout.distributions[j], combine_digit_probs(p, None, after), atol=1e-6)


def test_cache_makes_rerun_free_and_survives_new_backend(tmp_path):
    tok = make_tokenizer()
    model = _random_model("llama", tok)
    path = tmp_path / "llm.sqlite"
    backend = LocalBackend(model, tok, name="local:tiny", cache=LLMCache(path))
    sim = AllAtOnceSimulator(backend, SimulatorConfig(fewshot_id="negation"))
    first = sim.simulate("foxes", FRAGS)
    passes = backend.forward_passes
    again = sim.simulate("foxes", FRAGS)
    assert backend.forward_passes == passes and again.n_cached == 2 and again.n_calls == 0  # 2 prompts
    assert again.expected_values == first.expected_values
    # a new process (new backend, same cache file) sends nothing either
    fresh = LocalBackend(model, tok, name="local:tiny", cache=LLMCache(path))
    third = AllAtOnceSimulator(fresh, SimulatorConfig(fewshot_id="negation")).simulate("foxes", FRAGS)
    assert fresh.forward_passes == 0 and third.expected_values == first.expected_values
    # a different explanation is a different request
    AllAtOnceSimulator(fresh, SimulatorConfig(fewshot_id="negation")).simulate("cats", FRAGS)
    assert fresh.forward_passes > 0


def test_generate_is_seeded_and_cached(tmp_path):
    tok = make_tokenizer()
    model = _random_model("llama", tok)
    backend = LocalBackend(model, tok, name="local:tiny", cache=LLMCache(tmp_path / "c.sqlite"))
    msgs = [{"role": "user", "content": "The quick brown fox"}, {"role": "assistant", "content": "jumps"}]
    a = backend.generate(msgs, n=2, temperature=1.0, max_tokens=6, seed=1)
    b = LocalBackend(model, tok, name="local:tiny").generate(msgs, n=2, temperature=1.0, max_tokens=6, seed=1)
    c = LocalBackend(model, tok, name="local:tiny").generate(msgs, n=2, temperature=1.0, max_tokens=6, seed=2)
    assert len(a) == 2 and a == b and a != c
    tokens_before = backend.tokens_processed
    assert backend.generate(msgs, n=2, temperature=1.0, max_tokens=6, seed=1) == a
    assert backend.tokens_processed == tokens_before  # answered from the cache


@pytest.mark.slow
def test_real_default_model_simulates(default_model):
    backend = LocalBackend(default_model.model, default_model.tokenizer, name="local:default")
    records = [ActivationRecord(["The", " capital", " of", " France", " is", " Paris"], [0, 0, 0, 0, 0, 5.0]),
               ActivationRecord([" I", " do", " not", " know"], [0, 0, 0, 0])]
    result = AllAtOnceSimulator(backend).simulate("names of capital cities", records)
    assert result.mode == "local-exact" and result.ten == "two-step"  # SmolLM2 splits "10" into "1","0"
    assert [len(f) for f in result.expected_values] == [6, 4]
    evs = np.concatenate(result.expected_values)
    assert np.all((evs >= 0) & (evs <= 10)) and np.ptp(evs) > 1e-3
    for frag in result.distributions:
        np.testing.assert_allclose(np.asarray(frag).sum(-1), 1.0, atol=1e-9)


@pytest.mark.slow
def test_render_continues_the_priming_with_the_chat_template(default_model):
    from explain.prompts import build_explainer_messages

    tok = default_model.tokenizer
    backend = LocalBackend(default_model.model, tok, name="local:default")
    rec = [ActivationRecord([" a", " dog"], [0.0, 2.0])]
    bills = tok.decode(backend.render(build_explainer_messages(rec, "bills", FS)))
    assert bills.endswith("<|im_start|>assistant\nthe main thing this neuron does is find")
    assert bills.count("<|im_start|>assistant") == 2  # few-shot answer + the primed turn
    highlight = tok.decode(backend.render(build_explainer_messages(rec, "highlight", FS)))
    assert highlight.endswith("<|im_start|>assistant\n") and "{{dog}}" in highlight


def test_render_without_chat_template_is_a_plain_transcript():
    tok = make_tokenizer()
    backend = LocalBackend(_random_model("llama", tok), tok, name="local:tiny")
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
            {"role": "assistant", "content": "the main"}]
    assert tok.decode(backend.render(msgs)) == "System: S\n\nUser: U\n\nAssistant: the main"
    assert tok.decode(backend.render(msgs[:2])) == "System: S\n\nUser: U\n\nAssistant:"
