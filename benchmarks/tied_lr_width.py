"""Is it the width d or the data that makes a higher lr kill the tied SAE's latents on real activations?

docs/RESULTS.md ("L1 defaults under superposition") measured that the tied
SAE at lr 1.5e-2 recovers far more planted directions than at 5e-3 (d = 64),
but leaves many latents dead on SmolLM2's layer 3 (d = 576). Those two runs
differ in both d and the data. Here the same real activations are reduced to
`--dims` dimensions (their top principal components, or a random orthonormal
projection) and the tied SAE is trained on them by train-sae's own
`train_sweep` at each `--lr`, an alpha sweep in one pass; held-out L0, FVU
and dead fraction are printed per (lr, alpha). If the dead latents follow d,
they disappear at small d; if they follow the data, they stay.

    python benchmarks/tied_lr_width.py --cache CACHE --hook HOOK --dims 64 --basis pca --lr 0.005 0.015
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae.data import TensorSource, split_cache  # noqa: E402
from sae.settings import TrainSettings  # noqa: E402
from sae.train import train_sweep  # noqa: E402


def _all(source, seed: int = 0) -> torch.Tensor:
    """Every vector of a cache split, once (one epoch in one batch order)."""
    n = source.n_tokens
    return torch.cat(list(source.batches(4096, (n // 4096) * 4096, seed))).to(torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--hook", required=True)
    parser.add_argument("--dims", type=int, default=64)
    parser.add_argument("--basis", choices=("pca", "random"), default="pca")
    parser.add_argument("--ratio", type=float, default=2.0)
    parser.add_argument("--l1", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2])
    parser.add_argument("--lr", type=float, nargs="+", default=[5e-3, 1.5e-2])
    parser.add_argument("--tokens", type=int, default=300_000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    train_split, held_split = split_cache(args.cache, args.hook, 0.1, skip_first=True, sink_factor=20.0)
    train, held = _all(train_split), _all(held_split)
    d = train.shape[1]
    if args.dims < d:
        centred = train - train.mean(0)
        if args.basis == "pca":
            basis = torch.linalg.svd(centred[:50_000], full_matrices=False).Vh[:args.dims]
        else:
            q, _ = torch.linalg.qr(torch.randn(d, args.dims, generator=torch.Generator().manual_seed(0)))
            basis = q.T
        train, held = train @ basis.T, held @ basis.T
    print(f"{args.cache} {args.hook}: d {d} -> {train.shape[1]} ({args.basis}), {train.shape[0]} training and "
          f"{held.shape[0]} held-out vectors, {args.tokens} training tokens, R {args.ratio:g}")
    for lr in args.lr:
        settings = TrainSettings(hook=args.hook, kind="tied_sae", ratios=[args.ratio], l1s=args.l1, lr=lr,
                                 tokens=args.tokens)
        with tempfile.TemporaryDirectory() as out:
            for path in train_sweep(TensorSource(train), settings, out, progress=False,
                                    eval_source=TensorSource(held)):
                m = json.loads((path / "config.json").read_text())["metrics"]
                print(f"  lr {lr:<7g} {path.name:22s} L0 {m['l0']:7.2f}  FVU {m['fvu']:.4f}  "
                      f"dead {m['dead_fraction']:6.1%}")


if __name__ == "__main__":
    main()
