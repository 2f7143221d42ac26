"""Started on the planted directions, does an L1 SAE stay there? Separates "hard to find" from "not the optimum".

bench_recovery.py trains from Xavier initialisation, so a low recovery can
mean either that the optimiser has not reached the planted directions yet
(more tokens or a larger lr would help) or that the objective's optimum is
elsewhere (nothing but a different objective would). Here each L1 kind starts
with its dictionary rows (and, untied, its encoder rows) equal to the planted
directions of one of bench_recovery's sets, at width 1x. First only the biases
train (`--bias-steps` at lr 0.05, the directions held at the truth), so the start is the
planted dictionary with thresholds fitted to it; then everything trains as
train-sae trains: inputs normalised to E||x|| = sqrt(d), Adam at the kind's
default lr with train-sae's warm-up and decay. It prints the share of
directions recovered at cos > 0.9, MMCS, L0 and held-out FVU after the bias
phase and after `--tokens`, per alpha.

    python benchmarks/l1_from_truth.py --set 8x --l1 0.03 0.08 --tokens 500000

With `--cache` (a cache that records its truth, e.g. bench_synth.py's SynthSAEBench cache) the data and
the truth come from the cache instead: the width is `--width` latents, started on the `--width` true
features that fire most often in the training tokens, and it also prints SynthSAEBench's F1 and MCC on the
last `--held-out` tokens.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_recovery import SETS, planted, recovery  # noqa: E402
from sae.kinds.stack import StackOptions  # noqa: E402
from sae.kinds.tied import TiedStack  # noqa: E402
from sae.kinds.untied import UntiedStack  # noqa: E402
from sae.ground_truth import Classification, mean_correlation_coefficient  # noqa: E402
from sae.registry import kind_spec  # noqa: E402
from sae.step import eager_step, lr_factor, make_optimizer, set_lr  # noqa: E402

BATCH = 256


def _measure(stack, x: torch.Tensor, truth: torch.Tensor) -> list[tuple[float, float, float, float]]:
    """(MMCS, found, L0, FVU) per model on `x`."""
    with torch.no_grad():
        out = stack(x)
        rows = stack.M if isinstance(stack, TiedStack) else stack.W_d
        total = (x - x.mean(0)).pow(2).sum()
        result = []
        for i in range(rows.shape[0]):
            mmcs, found = recovery(truth, rows[i])
            l0 = float((out["c"][i] > 0).float().sum(1).mean())
            fvu = float((out["x_hat"][i] - x).pow(2).sum() / total)
            result.append((mmcs, found, l0, fvu))
        return result


def _classify(stack, x: torch.Tensor, firing: torch.Tensor, truth: torch.Tensor) -> list[tuple[float, float]]:
    """(F1, MCC) per model on `x` whose true firing is `firing`, as SynthSAEBench defines them."""
    with torch.no_grad():
        out = stack(x)
        rows = stack.M if isinstance(stack, TiedStack) else stack.W_d
        result = []
        for i in range(rows.shape[0]):
            counts = Classification(rows[i], truth)
            counts.add(out["c"][i], firing)
            result.append((counts.scores()["truth_f1"], mean_correlation_coefficient(rows[i], truth)))
        return result


def _from_cache(path: str, hook: str, tokens: int, held_out: int, width: int):
    """(train, held-out, held-out firing, all true directions, the `width` most frequent ones) from a cache."""
    from activations.reader import ActivationCache
    from activations.truth import read_truth

    with ActivationCache(path) as c:
        ctx, n = c.context_length, c.n_contexts
        need_train, need_held = -(-tokens // ctx), -(-held_out // ctx)
        if need_train + need_held > n:
            raise SystemExit(f"{path} holds {n * ctx:,} tokens: fewer than --tokens + --held-out")
        train = torch.from_numpy(c.acts(hook, np.arange(need_train))).reshape(-1, c.width(hook))[:tokens]
        held = torch.from_numpy(c.acts(hook, np.arange(n - need_held, n))).reshape(-1, c.width(hook))
    truth = read_truth(path, hook, (0, need_train))
    counts = np.bincount(truth.indices, minlength=truth.n_true)
    top = torch.from_numpy(np.argsort(-counts, kind="stable")[:width].copy())
    firing = read_truth(path, hook, (n - need_held, n)).dense(np.arange((n - need_held) * ctx, n * ctx))
    return train.float(), held.float(), firing, truth.directions, truth.directions[top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="8x", choices=list(SETS))
    parser.add_argument("--kinds", default="tied_sae,untied_sae")
    parser.add_argument("--l1", type=float, nargs="+", default=[0.03, 0.08])
    parser.add_argument("--tokens", type=int, default=500_000)
    parser.add_argument("--bias-steps", type=int, default=1000, help="steps of the biases alone, before")
    parser.add_argument("--cache", default=None, help="a cache that records its truth, instead of --set")
    parser.add_argument("--hook", default="blocks.0.hook_resid_post")
    parser.add_argument("--width", type=int, default=1024, help="latents (--cache only)")
    parser.add_argument("--held-out", type=int, default=20_000, help="held-out tokens (--cache only)")
    args = parser.parse_args()
    firing = all_truth = None
    if args.cache:
        train, held, firing, all_truth, truth = _from_cache(args.cache, args.hook, args.tokens, args.held_out,
                                                            args.width)
        d, width = train.shape[1], args.width
        print(f"{args.cache}: {all_truth.shape[0]} true features in d={d}; width {width}, started on the {width} "
              f"that fire most; {args.tokens} tokens, batch {BATCH}")
    else:
        spec = SETS[args.set]
        data, truth, true_l0, _ = planted(spec, args.tokens + 20_000)
        train, held = torch.from_numpy(data[:args.tokens]), torch.from_numpy(data[args.tokens:])
        d, width = spec.d, spec.n_true
        print(f"set {spec.name}: {spec.n_true} directions in d={spec.d}, true L0 {true_l0:.2f}; width 1x, "
              f"{args.tokens} tokens, batch {BATCH}; started on the planted directions")
    scale = math.sqrt(d) / float(train[:100_000].norm(dim=1).mean())  # train-sae's normalisation
    train, held = train * scale, held * scale
    steps = args.tokens // BATCH
    for kind in args.kinds.split(","):
        cls = TiedStack if kind == "tied_sae" else UntiedStack
        stack = cls(d, width / d, args.l1, seed=0, options=StackOptions(data_mean=train[:100_000].mean(0)))
        with torch.no_grad():
            for name in ("M",) if kind == "tied_sae" else ("W_e", "W_d"):
                getattr(stack, name).copy_(truth.expand_as(getattr(stack, name)))
        lr = kind_spec(kind).lr
        biases = [getattr(stack, name) for name in stack.bias_names]
        warm = make_optimizer(biases, 0.05, (0.9, 0.999), "cpu")  # thresholds only: fast is safe
        for step in range(args.bias_steps):
            rows = torch.randint(0, train.shape[0], (BATCH,), generator=torch.Generator().manual_seed(step))
            warm.zero_grad(set_to_none=True)
            stack(train[rows])["loss"].sum().backward()
            warm.step()
        stack.zero_grad(set_to_none=True)
        start = _measure(stack, held, truth)
        start_cls = _classify(stack, held, firing, all_truth) if firing is not None else None
        optimizer = make_optimizer(list(stack.parameters()), lr, (0.9, 0.999), "cpu")
        order = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(0))
        for step in range(steps):
            set_lr(optimizer, lr * lr_factor(step, steps, 0.05, 0.2))
            eager_step([stack], optimizer, train[order[step * BATCH:(step + 1) * BATCH]])
        end = _measure(stack, held, truth)
        end_cls = _classify(stack, held, firing, all_truth) if firing is not None else None
        for i, (alpha, s, e) in enumerate(zip(stack.values, start, end)):
            print(f"{kind:10s} alpha {alpha:<6g} lr {lr:g}: bias-fitted found {s[1]:6.1%} MMCS {s[0]:.3f} L0 {s[2]:6.2f} "
                  f"FVU {s[3]:.3f} -> end found {e[1]:6.1%} MMCS {e[0]:.3f} L0 {e[2]:6.2f} FVU {e[3]:.3f}")
            if firing is not None:
                print(f"{'':10s} F1 / MCC: bias-fitted {start_cls[i][0]:.3f} / {start_cls[i][1]:.3f} -> end "
                      f"{end_cls[i][0]:.3f} / {end_cls[i][1]:.3f}")


if __name__ == "__main__":
    main()
