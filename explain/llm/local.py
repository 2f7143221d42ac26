"""A local `transformers` causal LM as explainer and simulator (`local:<hub id|folder|default>`).

Simulation is exact and cheap:

* The prompt prefix shared by every simulation of a run (instructions + the
  few-shot feature) is run once; its keys/values are kept (an LRU of a few
  prefixes) and every later call starts from them (`past_key_values`), so the
  prefix is never recomputed.
* Prompts are batched (right-padded up to `max_batch_tokens` query tokens) in
  one forward pass with an explicit 4D attention mask and explicit positions.
* The value 10 when "10" is two tokens ("1","0", e.g. SmolLM2): for every slot
  an *extra* token "1" is appended to the same row, placed at position
  slot+1 and allowed to attend only to the prompt up to its slot (and itself).
  Its logits are exactly p(· | prompt[:slot+1] + "1"), as if a separate
  sequence had been run, yet all slots share one forward pass; the body rows
  never attend to the extras, so their logits are unchanged. Tokenizers with a
  single "10" token read it directly (no extras).

The exactness is tested against brute-force per-slot forwards on tiny GPT-2,
GPT-NeoX and Llama models. Models with sliding-window attention shorter than a
prompt are refused (a custom mask would not apply the window).

Body text is tokenised piece by piece (each piece ends at a slot, right after
a TAB), so each slot is exactly the last token of its piece whatever the
tokenizer merges; the prefix is tokenised on its own, with BOS when the
tokenizer adds one.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from explain.llm.base import DigitReadout, Generation, LLMBackend, Messages, ScoredRequest
from explain.llm.digits import DIGITS, combine_digit_probs
from explain.llm.errors import BackendConfigError, LLMError
from explain.llm.forward import returned_cache
from explain.llm.local_scored import ScoredDecoder
from explain.llm.cache import LLMCache
from explain.prompts import SlotPrompt

SIM_VERSION = "all-at-once-v1"  # bump when the reading rule changes, so cached readouts are not reused


class _StopAfterFirstLine:
    """Stop a sequence once its answer has a newline after some text (the parser keeps the first line).

    Decoding a few dozen new tokens per step is cheaper than transformers'
    `stop_strings`, which re-indexes the whole vocabulary on every call.
    """

    def __init__(self, tokenizer: Any, start: int):
        self.tokenizer, self.start = tokenizer, start

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start:], skip_special_tokens=True)
        return torch.tensor(["\n" in t.lstrip() for t in texts], dtype=torch.bool, device=input_ids.device)


@dataclass
class _PrefixState:
    ids: list[int]
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, [1, heads, P, dim]


class LocalBackend(LLMBackend):
    """Explain and simulate with an in-process Hugging Face causal LM."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        name: str = "local:custom",
        model_info: dict[str, Any] | None = None,
        cache: LLMCache | None = None,
        max_batch_tokens: int = 2048,
        prefix_cache_size: int = 4,
        use_chat_template: bool = True,
        ten: str = "auto",
    ):
        super().__init__(cache)
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.model_info = dict(model_info or {})
        self.max_batch_tokens = int(max_batch_tokens)
        self.prefix_cache_size = int(prefix_cache_size)
        self.use_chat_template = use_chat_template
        self.concurrency = 1
        self.lock = threading.RLock()
        self._prefixes: OrderedDict[str, _PrefixState] = OrderedDict()
        self._fingerprint: str | None = None
        self.tokens_processed = 0  # model tokens run through a forward pass (prefixes, bodies, extras)
        self.forward_passes = 0
        vocab = tokenizer.get_vocab()
        missing = [d for d in DIGITS if d not in vocab]
        if missing:
            raise BackendConfigError(
                f"{name}: the tokenizer has no single-token digits {missing}; "
                "use a simulator model whose tokenizer has the tokens '0'..'9'"
            )
        self.digit_ids = [int(vocab[d]) for d in DIGITS]
        self.ten_id = int(vocab["10"]) if "10" in vocab else None
        if ten not in ("auto", "single-token", "two-step"):
            raise BackendConfigError(f"ten={ten!r}: use auto, single-token or two-step")
        if ten == "single-token" and self.ten_id is None:
            raise BackendConfigError(f"{name}: the tokenizer has no '10' token; use ten='two-step' or 'auto'")
        if ten == "two-step":
            self.ten_id = None  # read 10 as "1","0" even where a "10" token exists
        self.ten_mode = "single-token" if self.ten_id is not None else "two-step"
        self.pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
        params = inspect.signature(model.forward).parameters
        self._keeps_logits = "logits_to_keep" in params
        # the key/value cache goes in as `cache` from transformers 5.2x on (`past_key_values` warns there and is
        # to be removed), as `past_key_values` before
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.scored = ScoredDecoder(self)  # the scored answers' readout, with the prefixes it keeps

    @classmethod
    def from_spec(cls, target: str, *, cache: LLMCache | None = None, **kwargs: Any) -> "LocalBackend":
        """`target` = hub id, folder or "default" (loaded with `activations.models.load_model`)."""
        from activations.models import load_model

        loaded = load_model(target, default_hint="local:default")
        info = {"source": str(loaded.source), "revision": loaded.revision}
        return cls(loaded.model, loaded.tokenizer, name=f"local:{target}", model_info=info, cache=cache, **kwargs)

    # -- identity -------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        if self._fingerprint is None:
            h = hashlib.sha256(self.model.config.to_json_string().encode())
            with torch.no_grad():
                for p in self.model.parameters():
                    h.update(np.float64(p.detach().double().sum().item()).tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return {"backend": "local", "model": self.name, **self.model_info, "weights": self._fingerprint}

    # -- generation -----------------------------------------------------------------------
    def render(self, messages: Messages) -> list[int]:
        """Token ids of the chat (chat template when the tokenizer has one; a plain transcript otherwise)."""
        cont = messages[-1]["role"] == "assistant"
        tok = self.tokenizer
        if self.use_chat_template and getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=not cont,
                                           continue_final_message=cont)
            return list(tok(text, add_special_tokens=False)["input_ids"])
        parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        text = "\n\n".join(parts) if cont else "\n\n".join(parts + ["Assistant:"])
        return list(tok(text)["input_ids"])

    def _generate_uncached(self, messages: Messages, *, n: int, temperature: float, max_tokens: int,
                           seed: int) -> list[str]:
        ids = torch.tensor([self.render(messages)])
        self.check_length(int(ids.shape[1]) + int(max_tokens), what="an explainer prompt plus its answer",
                           custom_mask=False)
        sample = temperature > 0
        from transformers import StoppingCriteriaList

        kwargs: dict[str, Any] = dict(max_new_tokens=int(max_tokens), num_return_sequences=int(n),
                                      do_sample=sample, pad_token_id=self.pad_id,
                                      stopping_criteria=StoppingCriteriaList([_StopAfterFirstLine(self.tokenizer,
                                                                                                   ids.shape[1])]))
        if sample:
            kwargs.update(temperature=float(temperature), top_p=1.0, top_k=0)
        elif n > 1:
            raise BackendConfigError(f"{self.name}: n={n} greedy completions would be identical; use temperature > 0")
        with self.lock, torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
        self.tokens_processed += int(ids.shape[1]) + int(out.shape[1] - ids.shape[1]) * int(n)
        new = out[:, ids.shape[1]:]
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in new]

    # -- scored answers (detection, fuzzing, intruder) ---------------------------------------
    def generate_scored(self, requests: Sequence[ScoredRequest]) -> list[Generation]:
        """Greedy answers with exact top log-probabilities (see `explain.llm.local_scored`)."""
        return self.scored.generate(requests)

    # -- simulation -----------------------------------------------------------------------
    def _digits_request(self, prompt: SlotPrompt) -> dict[str, Any]:
        return {"op": "digits", "version": SIM_VERSION, "ten": self.ten_mode, **self.identity(),
                "prompt": prompt.to_json()}

    def digit_distributions(self, prompts: Sequence[SlotPrompt]) -> list[DigitReadout]:
        """Exact distributions at every slot; cached prompts cost nothing, the rest run batched."""
        results: list[DigitReadout | None] = [None] * len(prompts)
        pending: list[tuple[int, dict[str, Any]]] = []
        for i, prompt in enumerate(prompts):
            request = self._digits_request(prompt)
            hit = self.cache.get(request)
            if hit is not None:
                results[i] = DigitReadout(np.asarray(hit["distributions"], dtype=np.float64), "local-exact",
                                          hit["ten"], n_calls=0, n_cached=1, n_tokens=int(hit.get("n_tokens", 0)))
            else:
                pending.append((i, request))
        by_prefix: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for item in pending:
            by_prefix.setdefault(prompts[item[0]].prefix, []).append(item)
        with self.lock, torch.no_grad():
            for prefix, items in by_prefix.items():
                state = self._prefix_state(prefix)
                encoded = [(i, req, *self._encode_body(prompts[i])) for i, req in items]
                for batch in self._batches(encoded):
                    readouts = self._forward(state, [(ids, slots) for _, _, ids, slots in batch])
                    for (i, req, _, _), readout in zip(batch, readouts):
                        self.cache.put(req, {"distributions": readout.distributions.tolist(), "ten": readout.ten,
                                             "n_tokens": readout.n_tokens})
                        results[i] = readout
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise RuntimeError(f"internal error: no readout for prompts {missing}")
        return [r for r in results if r is not None]

    def _prefix_state(self, prefix: str) -> _PrefixState:
        if prefix in self._prefixes:
            self._prefixes.move_to_end(prefix)
            return self._prefixes[prefix]
        tok = self.tokenizer
        ids = list(tok(prefix, add_special_tokens=False)["input_ids"]) if prefix else []
        with_special = list(tok("a")["input_ids"])
        if tok.bos_token_id is not None and with_special and with_special[0] == tok.bos_token_id:
            ids = [tok.bos_token_id] + ids
        kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.check_length(len(ids))
        if ids:
            out = self.model(input_ids=torch.tensor([ids]), use_cache=True, **self.keep_last())
            kv = [(layer.keys, layer.values) for layer in returned_cache(out).layers]
            self.tokens_processed += len(ids)
            self.forward_passes += 1
        state = _PrefixState(ids=ids, kv=kv)
        self._prefixes[prefix] = state
        while len(self._prefixes) > self.prefix_cache_size:
            self._prefixes.popitem(last=False)
        return state

    def keep_last(self) -> dict[str, Any]:
        return {"logits_to_keep": 1} if self._keeps_logits else {}

    def _encode_body(self, prompt: SlotPrompt) -> tuple[list[int], list[int]]:
        encoded = self.tokenizer(list(prompt.pieces), add_special_tokens=False)["input_ids"]
        ids: list[int] = []
        slots: list[int] = []
        for k, piece_ids in enumerate(encoded):
            if k < len(encoded) - 1:
                if not piece_ids:
                    raise LLMError(f"{self.name}: a prompt piece encoded to no tokens: {prompt.pieces[k]!r}")
                slots.append(len(ids) + len(piece_ids) - 1)
            ids.extend(piece_ids)
        return ids, slots

    def _row_len(self, ids: list[int], slots: list[int]) -> int:
        return len(ids) + (len(slots) if self.ten_mode == "two-step" else 0)

    def _batches(self, encoded: list[tuple]) -> list[list[tuple]]:
        """Longest first; a batch grows while rows × its longest row stays within `max_batch_tokens`."""
        order = sorted(encoded, key=lambda e: -self._row_len(e[2], e[3]))
        batches: list[list[tuple]] = []
        for item in order:
            if batches:
                longest = self._row_len(batches[-1][0][2], batches[-1][0][3])
                if (len(batches[-1]) + 1) * longest <= self.max_batch_tokens:
                    batches[-1].append(item)
                    continue
            batches.append([item])
        return batches

    def check_length(self, total: int, what: str = "a simulation prompt", custom_mask: bool = True) -> None:
        cfg = self.model.config
        limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        if limit and total > limit:
            raise BackendConfigError(
                f"{what} needs {total} positions, more than {self.name}'s context of {limit}: "
                "show fewer or shorter fragments (a smaller group size or exemplar subset)"
            )
        window = getattr(cfg, "sliding_window", None)
        if custom_mask and window and getattr(cfg, "use_sliding_window", True) and total > window:
            raise BackendConfigError(
                f"{self.name} uses sliding-window attention ({window}) shorter than {what} ({total} tokens): "
                "show fewer fragments per prompt or use another model"
            )

    def _forward(self, state: _PrefixState, rows_in: list[tuple[list[int], list[int]]]) -> list[DigitReadout]:
        P = len(state.ids)
        two_step = self.ten_mode == "two-step"
        rows = [ids + ([self.digit_ids[1]] * len(slots) if two_step else []) for ids, slots in rows_in]
        b, Q = len(rows), max(len(r) for r in rows)
        self.check_length(P + Q)
        dtype = next(self.model.parameters()).dtype
        input_ids = torch.full((b, Q), self.pad_id, dtype=torch.long)
        pos = torch.full((b, Q), P, dtype=torch.long)
        allowed = torch.zeros((b, Q, P + Q), dtype=torch.bool)
        allowed[:, :, :P] = True
        causal = torch.tril(torch.ones(Q, Q, dtype=torch.bool))
        keep: set[int] = set()
        for r, ((ids, slots), row) in enumerate(zip(rows_in, rows)):
            L = len(ids)
            input_ids[r, : len(row)] = torch.tensor(row)
            pos[r, :L] = P + torch.arange(L)
            allowed[r, :L, P : P + L] = causal[:L, :L]
            keep.update(slots)
            if two_step:
                s = torch.tensor(slots)
                q = L + torch.arange(len(slots))
                pos[r, q] = P + s + 1
                allowed[r, q, P : P + L] = torch.arange(L)[None, :] <= s[:, None]
                allowed[r, q, P + q] = True
                keep.update(q.tolist())
            pad = torch.arange(len(row), Q)
            allowed[r, pad, P + pad] = True
        mask = torch.zeros((b, 1, Q, P + Q), dtype=dtype).masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
        keep_idx = sorted(keep)
        kwargs: dict[str, Any] = {}
        if self._keeps_logits:
            kwargs["logits_to_keep"] = torch.tensor(keep_idx)
        if P:
            from transformers import DynamicCache

            kwargs[self.cache_kw] = DynamicCache(
                ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in state.kv]
            )
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=bool(P), **kwargs)
        logits = out.logits if self._keeps_logits else out.logits[:, keep_idx]
        column = {p: c for c, p in enumerate(keep_idx)}
        self.tokens_processed += sum(len(r) for r in rows)
        self.forward_passes += 1
        readouts = []
        for r, (ids, slots) in enumerate(rows_in):
            slot_cols = [column[s] for s in slots]
            probs = torch.softmax(logits[r, slot_cols].double(), dim=-1)
            p_digits = probs[:, self.digit_ids].numpy()
            p_ten = probs[:, self.ten_id].numpy() if self.ten_id is not None else None
            after = None
            if two_step:
                extra_cols = [column[len(ids) + j] for j in range(len(slots))]
                after = torch.softmax(logits[r, extra_cols].double(), dim=-1)[:, self.digit_ids].numpy()
            dists = np.stack([
                combine_digit_probs(p_digits[j], None if p_ten is None else float(p_ten[j]),
                                    None if after is None else after[j])
                for j in range(len(slots))
            ])
            readouts.append(DigitReadout(dists, "local-exact", self.ten_mode, n_calls=1, n_cached=0,
                                         n_tokens=len(rows[r])))
        return readouts
