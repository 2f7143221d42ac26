"""Matryoshka against BatchTopK on a feature hierarchy, and JumpReLU's threshold defaults (issue 29 item 2).

    PYTHONPATH=. python benchmarks/bench_new_kinds.py [--seeds 0 1 2 3] [--tokens 150000] [--parts 1 2]
        [--jumprelu-starts 0.1 0.03]

1. Absorption. The hierarchical planted set of the unit test (tests/support/sae_data.py: 8 parents, each with
   2 mutually exclusive children that fire only with it), trained by BatchTopK and Matryoshka BatchTopK at
   the same k and width, per seed; prints each one's parents' F1 (mean over parents of the best latent's F1
   against the parent's firing). Matryoshka should keep the parents that BatchTopK absorbs into children.
2. JumpReLU's threshold start and kernel width. The planted set of the recovery unit test (24 directions in
   16 dimensions, 1.2 active per vector) trained by JumpReLU over a sweep of L0 coefficients, once with
   SAELens's defaults (threshold 0.01, bandwidth 0.05) and once with ours; prints L0 and the mean max cosine
   of the planted directions to the learned ones (1 = all found).

Figures are in docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import sae  # noqa: E402
from sae.data import TensorSource  # noqa: E402
from sae.kind_settings import JumpReLUSettings, MatryoshkaSettings  # noqa: E402
from sae.settings import TrainSettings  # noqa: E402
from sae.train import train_sweep  # noqa: E402
from tests.support.sae_data import hierarchical_data, parents_f1, sparse_data  # noqa: E402


def absorption(args: argparse.Namespace, out: Path) -> None:
    print(f"1. parents' F1, 8 parents x 2 children, k={args.k}, {args.tokens} tokens, width 24")
    print(f"{'seed':>4} {'batchtopk':>10} {'matryoshka':>11}")
    for seed in args.seeds:
        x, _, parent_on = hierarchical_data(d=32, parents=8, children=2, p_parent=0.2, p_child=0.5, seed=seed)
        row = []
        for kind, own in (("batchtopk", None),
                          ("matryoshka_batchtopk", MatryoshkaSettings(matryoshka_prefixes=[1 / 3]))):
            settings = TrainSettings(hook="h", kind=kind, ratios=[0.75], ks=[args.k], batch_size=256,
                                     tokens=args.tokens, seed=seed, kind_settings=own)
            [path] = train_sweep(TensorSource(x), settings, out / f"absorption-{seed}-{kind}", progress=False)
            row.append(parents_f1(sae.load(path), x, parent_on))
        print(f"{seed:>4} {row[0]:>10.3f} {row[1]:>11.3f}")


def jumprelu_defaults(args: argparse.Namespace, out: Path) -> None:
    x, truth = sparse_data(d=16, n_true=24, n=20_000, p=0.05, seed=0)
    coefficients = [0.03, 0.3, 3.0, 30.0]
    print(f"\n2. JumpReLU on 24 planted directions (1.2 active per vector), {args.jumprelu_tokens} tokens, batch 512")
    print(f"{'threshold':>9} {'bandwidth':>9} " + " ".join(f"{'L0 / MMCS at λ ' + format(c, 'g'):>22}"
                                                          for c in coefficients))
    saelens = JumpReLUSettings(jumprelu_init_threshold=0.01, jumprelu_bandwidth=0.05)
    starts = [(f"start-{t:g}", JumpReLUSettings(jumprelu_init_threshold=t)) for t in args.jumprelu_starts]
    for name, own in [("saelens", saelens), ("ours", JumpReLUSettings())] + starts:
        settings = TrainSettings(hook="h", kind="jumprelu", ratios=[2.0], l0_coefficients=coefficients,
                                 batch_size=512, tokens=args.jumprelu_tokens, kind_settings=own)
        paths = train_sweep(TensorSource(x), settings, out / f"jumprelu-{name}", progress=False)
        cells = []
        for path in paths:
            d = sae.load(path)
            mmcs = float((truth @ d.directions.T).max(dim=1).values.mean())
            cells.append(f"{d.config['metrics']['l0']:>13.2f} / {mmcs:.3f}")
        print(f"{own.jumprelu_init_threshold:>9g} {own.jumprelu_bandwidth:>9g} " + " ".join(f"{c:>22}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=150_000, help="training tokens of the absorption runs")
    parser.add_argument("--jumprelu-tokens", type=int, default=500_000)
    parser.add_argument("--jumprelu-starts", type=float, nargs="*", default=[],
                        help="part 2: also these threshold starts at our default bandwidth (e.g. 0.1 0.03)")
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if 1 in args.parts:
            absorption(args, Path(tmp))
        if 2 in args.parts:
            jumprelu_defaults(args, Path(tmp))
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
