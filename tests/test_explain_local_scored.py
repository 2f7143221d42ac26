"""Greedy scored answers from a local model: constrained to the asked-for form, read exactly, prefix reused.

Checked against brute-force forward passes of a tiny random Llama model:
the log-probabilities of "0" and "1" at each slot of a "[a,b]" answer are
those of the full prompt + everything written before the slot, whether the
shared instructions come from the prefix cache or not.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from explain.llm.base import ScoredRequest
from explain.llm.local import LocalBackend
from explain.scorers.answers import read_binary_list
from tests.support.tiny_models import make_tiny_model, make_tokenizer

MESSAGES = (("system", "Answer with a list."), ("user", "Explanation: dogs\n\n1. the dog ran"),
            ("assistant", "[1]"), ("user", "Explanation: cats\n\n1. a cat sat\n2. the fox jumps"))


@pytest.fixture(scope="module")
def backend():
    tok = make_tokenizer()
    return LocalBackend(make_tiny_model("llama", len(tok)), tok, name="local:tiny")


def _brute(backend, ids):
    with torch.no_grad():
        return torch.log_softmax(backend.model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)


@pytest.mark.parametrize("shared", [0, 3])
def test_a_constrained_answer_is_read_exactly_at_every_slot(backend, shared):
    request = ScoredRequest(messages=MESSAGES, shared=shared, pieces=("[", ",", "]"), choices=("0", "1"))
    (gen,) = backend.generate_scored([request])
    assert re.fullmatch(r"\[[01],[01]\]", gen.text) and gen.mode == "local-exact" and gen.n_tokens > 0
    tok = backend.tokenizer
    ids = backend.render(request.as_messages()) + tok("[", add_special_tokens=False)["input_ids"]
    slots = [i for i, t in enumerate(gen.tokens) if t in ("0", "1")]
    assert len(slots) == 2
    for slot in slots:
        logp = _brute(backend, ids)
        zero, one = (float(logp[tok.convert_tokens_to_ids(d)]) for d in ("0", "1"))
        assert gen.top_logprobs[slot]["0"] == pytest.approx(zero, abs=1e-5)
        assert gen.top_logprobs[slot]["1"] == pytest.approx(one, abs=1e-5)
        assert gen.tokens[slot] == ("1" if one > zero else "0")  # the more likely choice is written
        ids = ids + tok(gen.tokens[slot] + gen.tokens[slot + 1], add_special_tokens=False)["input_ids"]
    p, n_text = read_binary_list(gen, 2)
    first = gen.top_logprobs[slots[0]]
    assert n_text == 0 and p[0] == pytest.approx(math.exp(first["1"]) / (math.exp(first["0"]) + math.exp(first["1"])))


def test_prefix_reuse_changes_nothing_but_the_tokens_run(backend):
    plain = ScoredRequest(messages=MESSAGES, shared=0, pieces=("[", ",", "]"), choices=("0", "1"))
    shared = ScoredRequest(messages=MESSAGES, shared=3, pieces=("[", ",", "]"), choices=("0", "1"))
    (a,), (b,) = backend.generate_scored([plain]), backend.generate_scored([shared])
    assert a.text == b.text and b.n_tokens < a.n_tokens  # the few-shot turns ran once, not in this prompt
    for x, y in zip(a.top_logprobs, b.top_logprobs):
        assert x.keys() == y.keys() and all(x[k] == pytest.approx(y[k], abs=1e-5) for k in x)


def test_free_generation_returns_each_tokens_top_alternatives_with_every_digit(backend):
    (gen,) = backend.generate_scored([ScoredRequest(messages=MESSAGES, max_tokens=5)])
    assert "".join(gen.tokens) == gen.text and len(gen.tokens) == len(gen.top_logprobs) <= 5
    assert all({str(d) for d in range(10)} <= set(top) for top in gen.top_logprobs)
