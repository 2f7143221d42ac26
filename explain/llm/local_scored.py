"""Greedy answers with exact log-probabilities from a local model (`ScoredDecoder`, owned by `LocalBackend`).

Detection, fuzzing and intruder prompts are answered by greedy decoding,
reading the full next-token distribution at every generated position; each
position's top tokens (and the digits "0".."9", always, so that P("1") vs
P("0") is exact even when a digit is not among the top) are returned by
their decoded strings, the same shape an OpenAI-compatible server returns.

When the request describes its answer (`ScoredRequest.pieces` / `choices`),
decoding is constrained to it: the pieces are written as given, and at each
slot the most likely of the choices is written. A 135M model that would run
a list on past its five entries, or start copying the examples instead of
answering, still has its judgement read at every slot, exactly, from the
distribution it gives there. Every choice's log-probability is kept with
the slot's top tokens, so how much of the distribution was on the choices
at all (`choice_mass` in the scorers' records) shows whether the model was
answering in kind.

The instructions and few-shot turns (`ScoredRequest.shared` leading
messages) are identical in every prompt of a scorer: their keys/values are
computed once and kept in a small LRU, and each prompt runs only its own
tokens, as the simulator's shared prefix does. The prefix is the longest
common token prefix of the shared turns' rendering and the full prompt's,
so a chat template that renders the two differently only loses the reuse,
never changes the answer.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Sequence

import torch

from explain.llm.base import Generation, ScoredRequest
from explain.llm.errors import BackendConfigError
from explain.llm.forward import returned_cache

if TYPE_CHECKING:
    from explain.llm.local import LocalBackend

GEN_VERSION = "greedy-logprobs-v2"  # bump when the decoding or the read-out changes
TOP_K = 20
PREFIX_LRU = 4


def request_record(backend: "LocalBackend", request: ScoredRequest) -> dict[str, Any]:
    """The LLM-cache key of a scored request: the full conversation, not the prefix split."""
    out = {"op": "generate-scored", "version": GEN_VERSION, **backend.identity(),
           "messages": request.as_messages(), "max_tokens": int(request.max_tokens), "top_logprobs": TOP_K}
    if request.pieces is not None:
        out.update(pieces=list(request.pieces), choices=list(request.choices or ()))
    return out


class ScoredDecoder:
    """The scored-answer readout of a `LocalBackend`, made and held by it (`backend.scored`): it owns the
    key/values of the shared prefixes it reuses, and uses the backend's model, tokenizer, cache and lock."""

    def __init__(self, backend: "LocalBackend"):
        self.backend = backend
        self.prefixes: OrderedDict[tuple[int, ...], list] = OrderedDict()  # token ids -> key/values, an LRU

    def generate(self, requests: Sequence[ScoredRequest]) -> list[Generation]:
        """Answers of `requests` in order; cached ones cost nothing."""
        backend = self.backend
        out: list[Generation] = []
        for request in requests:
            key = request_record(backend, request)
            hit = backend.cache.get(key)
            if hit is not None:
                out.append(Generation(hit["text"], list(hit["tokens"]), hit["top_logprobs"], "local-exact",
                                      n_calls=0, n_cached=1, n_tokens=int(hit.get("n_tokens", 0))))
                continue
            gen = _greedy(backend, request, self.prefixes)
            backend.cache.put(key, {"text": gen.text, "tokens": gen.tokens, "top_logprobs": gen.top_logprobs,
                                    "n_tokens": gen.n_tokens})
            out.append(gen)
        return out


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _prefix_ids(backend: "LocalBackend", request: ScoredRequest, full: list[int]) -> list[int]:
    if request.shared <= 0:
        return []
    messages = request.as_messages()[: request.shared]
    tok = backend.tokenizer
    if backend.use_chat_template and getattr(tok, "chat_template", None):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
    else:
        ids = backend.render(messages + [{"role": "user", "content": ""}])[:-1]
    n = _common_prefix(ids, full)
    return full[: min(n, len(full) - 1)]  # at least one token of the prompt's own runs with the cache


def _prefix_kv(backend: "LocalBackend", ids: list[int], lru: OrderedDict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    key = tuple(ids)
    if key in lru:
        lru.move_to_end(key)
        return lru[key]
    out = backend.model(input_ids=torch.tensor([ids]), use_cache=True, **backend.keep_last())
    kv = [(layer.keys, layer.values) for layer in returned_cache(out).layers]
    backend.tokens_processed += len(ids)
    backend.forward_passes += 1
    lru[key] = kv
    while len(lru) > PREFIX_LRU:
        lru.popitem(last=False)
    return kv


def _choice_ids(backend: "LocalBackend", choices: tuple[str, ...]) -> list[int]:
    ids = [backend.tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
    bad = [c for c, i in zip(choices, ids) if len(i) != 1]
    if bad:
        raise BackendConfigError(f"{backend.name}: the answers {bad} are not single tokens of its tokenizer; "
                                 "use a model whose tokenizer has single-token digits")
    return [i[0] for i in ids]


def _constrained(backend: "LocalBackend", request: ScoredRequest, lru: OrderedDict) -> Generation:
    """Write the pieces, and at each slot the most likely choice (see the module docstring)."""
    tok = backend.tokenizer
    full = backend.render(request.as_messages())
    pieces = list(request.pieces or ())
    choice_ids = _choice_ids(backend, tuple(request.choices or ()))
    piece_ids = [list(tok(p, add_special_tokens=False)["input_ids"]) if p else [] for p in pieces]
    total = len(full) + sum(len(p) for p in piece_ids) + len(pieces)
    backend.check_length(total, what="a scorer prompt plus its answer", custom_mask=False)
    digits = {str(d): i for d, i in enumerate(backend.digit_ids)}
    tokens: list[str] = []
    tops: list[dict[str, float]] = []
    with backend.lock, torch.no_grad():
        prefix, kwargs = _resume_prefix(backend, request, full, lru)
        pending = full[len(prefix):] + piece_ids[0]
        first = [_decode(tok, i) for i in piece_ids[0]]
        tokens += first
        tops += [{t: 0.0} for t in first]
        processed = 0
        for slot in range(len(pieces) - 1):
            out = backend.model(input_ids=torch.tensor([pending]), use_cache=True, **kwargs, **backend.keep_last())
            processed += len(pending)
            kwargs[backend.cache_kw] = returned_cache(out)
            logp = torch.log_softmax(out.logits[0, -1].double(), dim=-1)
            best = max(choice_ids, key=lambda i: float(logp[i]))
            top = _top(tok, logp, digits)
            for c, i in zip(request.choices or (), choice_ids):
                top.setdefault(c, float(logp[i]))  # every choice is listed, exactly
            tokens.append(_decode(tok, best))
            tops.append(top)
            after = piece_ids[slot + 1]
            tokens += [_decode(tok, i) for i in after]
            tops += [{_decode(tok, i): 0.0} for i in after]
            pending = [best] + after
        backend.tokens_processed += processed
        backend.forward_passes += 1
    return Generation("".join(tokens), tokens, tops, "local-exact", n_calls=1, n_cached=0, n_tokens=processed)


def _resume_prefix(backend: "LocalBackend", request: ScoredRequest, full: list[int],
                   lru: OrderedDict) -> tuple[list[int], dict[str, Any]]:
    """The cached shared prefix of `full` and the forward kwargs that start after it (empty: start at token 0)."""
    from transformers import DynamicCache

    prefix = _prefix_ids(backend, request, full)
    kwargs: dict[str, Any] = {}
    if prefix:
        kwargs[backend.cache_kw] = DynamicCache(ddp_cache_data=_prefix_kv(backend, prefix, lru))
    return prefix, kwargs


def _decode(tok: Any, i: int) -> str:
    return tok.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _greedy(backend: "LocalBackend", request: ScoredRequest, lru: OrderedDict) -> Generation:
    if request.pieces is not None:
        return _constrained(backend, request, lru)
    tok = backend.tokenizer
    full = backend.render(request.as_messages())
    backend.check_length(len(full) + int(request.max_tokens), what="a scorer prompt plus its answer",
                          custom_mask=False)
    stop = {i for i in (tok.eos_token_id, getattr(tok, "pad_token_id", None)) if i is not None}
    digits = {str(d): i for d, i in enumerate(backend.digit_ids)}
    tokens: list[str] = []
    tops: list[dict[str, float]] = []
    with backend.lock, torch.no_grad():
        prefix, kwargs = _resume_prefix(backend, request, full, lru)
        step_ids = full[len(prefix):]
        processed = 0
        for _ in range(int(request.max_tokens)):
            out = backend.model(input_ids=torch.tensor([step_ids]), use_cache=True, **kwargs, **backend.keep_last())
            processed += len(step_ids)
            kwargs[backend.cache_kw] = returned_cache(out)
            logp = torch.log_softmax(out.logits[0, -1].double(), dim=-1)
            nxt = int(torch.argmax(logp))
            if nxt in stop:
                break
            tops.append(_top(tok, logp, digits))
            tokens.append(tok.decode([nxt], skip_special_tokens=False, clean_up_tokenization_spaces=False))
            text = "".join(tokens)
            if "\n" in text.lstrip():
                break
            step_ids = [nxt]
        backend.tokens_processed += processed
        backend.forward_passes += 1
    return Generation("".join(tokens), tokens, tops, "local-exact", n_calls=1, n_cached=0, n_tokens=processed)


def _top(tok: Any, logp: torch.Tensor, digits: dict[str, int]) -> dict[str, float]:
    """Top-k tokens by decoded string (probabilities of equal strings added), plus the exact digit log-probs."""
    values, ids = torch.topk(logp, TOP_K)
    probs: dict[str, float] = {}
    for v, i in zip(values.tolist(), ids.tolist()):
        s = tok.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        probs[s] = probs.get(s, 0.0) + math.exp(v)
    seen = set(ids.tolist())
    for d, i in digits.items():
        if i not in seen:
            probs[d] = probs.get(d, 0.0) + math.exp(float(logp[i]))
    return {s: math.log(max(p, 1e-300)) for s, p in probs.items()}
