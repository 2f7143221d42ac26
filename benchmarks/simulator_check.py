"""Does a simulator follow explanations? Score it on features whose explanation is known to be right.

Explanation scores measure explainer and simulator together: a low score may
mean a bad explanation or a simulator that cannot use a good one. This check
takes the explainer out. Each synthetic feature is a token rule on real
Wikipedia fragments (1 where the rule holds, else 0), explained by the rule
in words; the simulator scores it (Pearson r over 5 top + 5 random fragments
of 64 tokens, as in `explain`) twice:

* with the right explanation, and
* with another rule's explanation (the next rule in the list).

A simulator that reads explanations scores high with the right one and near
0 with the wrong one. One rule is the feature of the simulator's few-shot
example (``negation``, or ``in`` with ``--example-records``): a simulator
that copies the example instead of reading the explanation scores it high
with the wrong explanation too.

    python benchmarks/simulator_check.py [--simulator local:default] [--base-url URL]

Prints one row per rule and the means; the figures in docs/RESULTS.md come
from this script.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_simulate import _texts  # noqa: E402  (the same offline Wikipedia fragments)

NEGATIONS = {"not", "n't", "never", "no"}
BE = {"is", "was", "are", "were", "be", "been"}
#: name -> (explanation, rule on the stripped, lower-cased token)
RULES = {
    "the": ('the word "the"', lambda t: t == "the"),
    "comma": ("commas", lambda t: t == ","),
    "digits": ("digits of numbers and years", lambda t: t.isdigit()),
    "and": ('the word "and"', lambda t: t == "and"),
    "period": ("periods at the end of sentences", lambda t: t == "."),
    "be": ('forms of the verb "to be" such as "is", "was", "are" and "were"', lambda t: t in BE),
    "of": ('the word "of"', lambda t: t == "of"),
    "paren": ("parentheses", lambda t: t in {"(", ")"}),
    "in": ('the word "in"', lambda t: t == "in"),
    "negation": ('the word "not" and other negations such as "n\'t" and "never"', lambda t: t in NEGATIONS),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--simulator", default="local:default", help="local:<hub id|folder|default> or openai:<model>")
    ap.add_argument("--base-url", default=None, help="for openai:<model> on another server")
    ap.add_argument("--pool", type=int, default=300, help="fragments to pick each rule's top and random ones from")
    ap.add_argument("--example-records", type=int, default=0,
                    help="0: the simulator's handwritten few-shot example; N: 'the word \"in\"' on N 64-token fragments")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.pool < 20:
        ap.error(f"--pool {args.pool}: pass 20 or more (each rule scores 5 top + 5 random fragments)")
    if not 0 <= args.example_records <= 50:
        ap.error(f"--example-records {args.example_records}: pass 0 (the handwritten example) to 50")

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from activations.models import load_model
    from explain.llm.backends import make_backend
    from explain.records import ActivationRecord, FewShotExample
    from explain.scorers.simulation import AllAtOnceSimulator
    from explain.scorers.stats import pearson

    tok = load_model("default").tokenizer
    fragments = []
    for text in _texts(args.pool + 100):
        ids = tok(text, add_special_tokens=False)["input_ids"][:64]
        fragments.append([tok.decode([i]) for i in ids])
    pool, spare = fragments[: args.pool], fragments[args.pool :]
    rng = np.random.default_rng(0)
    names = list(RULES)
    jobs, truths = [], []
    for name in names:
        rule = RULES[name][1]
        values = [np.array([float(rule(t.strip().lower())) for t in frag]) for frag in pool]
        order = np.argsort([-v.sum() for v in values], kind="stable")
        chosen = list(order[:5]) + list(rng.choice(order[5:], 5, replace=False))
        jobs.append([pool[i] for i in chosen])
        truths.append(np.concatenate([values[i] for i in chosen]))

    backend = make_backend(args.simulator, base_url=args.base_url)
    sim = AllAtOnceSimulator(backend)
    if args.example_records > 0:
        spare.sort(key=lambda frag: -sum(t.strip().lower() == "in" for t in frag))
        n_zero = args.example_records // 2  # like top + random: the rest show the rule, these barely
        shown = spare[: args.example_records - n_zero] + spare[len(spare) - n_zero:]
        sim.fewshot = FewShotExample(id=f"in_x{args.example_records}", explanation='the word "in"', records=tuple(
            ActivationRecord(frag, [5.0 * (t.strip().lower() == "in") for t in frag]) for frag in shown))
    local = hasattr(backend, "_prefix_state")
    if local:  # computed once per run before timing, as in `explain`
        prefix_tokens = len(backend._prefix_state(sim.prompts("x", [["x"]])[0].prefix).ids)
        tokens_before = backend.tokens_processed
    wrong = {name: names[(i + 1) % len(names)] for i, name in enumerate(names)}
    t0 = time.perf_counter()
    right_res = sim.simulate_many([(RULES[n][0], frags) for n, frags in zip(names, jobs)])
    wrong_res = sim.simulate_many([(RULES[wrong[n]][0], frags) for n, frags in zip(names, jobs)])
    secs = time.perf_counter() - t0

    print(f"simulator {args.simulator} (mode {right_res[0].mode}), few-shot example "
          f"{sim.fewshot.id!r} ({len(sim.fewshot.records)} records), {len(pool)} fragments of <= 64 tokens, {secs:.0f} s")
    if local:
        body = (backend.tokens_processed - tokens_before) / (2 * sum(len(frags) for frags in jobs))
        print(f"shared prefix {prefix_tokens} tokens, body {body:.0f} tokens per prompt: prefix reuse saves at "
              f"most 1 + prefix/body = {1 + prefix_tokens / body:.2f}x")

    undefined: list[str] = []

    def r_of(result, truth, label: str) -> float:
        r, why = pearson(np.concatenate(result.expected_values), truth)
        if r is None:
            undefined.append(f"{label}: {why}")
            return float("nan")
        return r

    def mean(values: list[float]) -> float:
        finite = [v for v in values if np.isfinite(v)]
        return float(np.mean(finite)) if finite else float("nan")

    print(f"\n{'rule':10s} {'matches':>7s} {'r right':>8s} {'r wrong':>8s}  wrong explanation from")
    rows = []
    for name, truth, a, b in zip(names, truths, right_res, wrong_res):
        r_right, r_wrong = r_of(a, truth, f"{name}, right"), r_of(b, truth, f"{name}, wrong")
        rows.append((name, r_right, r_wrong))
        print(f"{name:10s} {int(truth.sum()):7d} {r_right:8.3f} {r_wrong:8.3f}  {wrong[name]}")
    if undefined:
        print(f"undefined r (nan, left out of the means): {len(undefined)}, e.g. {undefined[0]}")
    own_rule = "negation" if args.example_records == 0 else "in"
    others = [(r, w) for n, r, w in rows if n != own_rule]
    mean_right, mean_wrong = mean([r for r, _ in others]), mean([w for _, w in others])
    print(f"\nrules unlike the few-shot example ({len(others)}): mean r right {mean_right:.3f}, "
          f"wrong {mean_wrong:.3f}, gap {mean_right - mean_wrong:.3f}")
    own = next(row for row in rows if row[0] == own_rule)
    print(f"the few-shot example's own rule ({own_rule}): r right {own[1]:.3f}, wrong {own[2]:.3f} "
          "(high with the wrong explanation = the simulator copies the example)")


if __name__ == "__main__":
    main()
