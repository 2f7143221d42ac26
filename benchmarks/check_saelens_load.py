"""Do dictionaries exported with `--export saelens` load in real SAELens with the same codes? (issue 29 item 2)

Run in the benchmark virtual environment, which has sae-lens (never a toolkit dependency):

    PYTHONPATH=. /work/bench-venv/bin/python benchmarks/check_saelens_load.py --out /tmp/saelens-check

It trains one tiny dictionary of each kind given (default: jumprelu and matryoshka_batchtopk, the two kinds
trained here since issue 29, plus topk and batchtopk) on planted sparse data, exports each in SAELens's
layout, loads the export with `sae_lens.SAE.load_from_disk`, and prints the largest difference between
SAELens's `encode` / `decode` and ours on fresh inputs. The tests check the same round trip with our own
SAELens reader (tests/test_sae_jumprelu_matryoshka.py); this is the check against SAELens's code itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import sae  # noqa: E402
from sae.data import TensorSource  # noqa: E402
from sae.export import export_saelens  # noqa: E402
from sae.registry import kind_spec  # noqa: E402
from sae.settings import TrainSettings  # noqa: E402
from sae.train import train_sweep  # noqa: E402

SWEEP_VALUE = {"l1s": [1e-2], "ks": [4], "l0_coefficients": [1.0]}


def planted(d: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    truth = torch.nn.functional.normalize(torch.randn(3 * d, d, generator=g), dim=1)
    codes = (torch.rand(n, 3 * d, generator=g) < 0.05) * torch.rand(n, 3 * d, generator=g) * 3
    return codes @ truth + 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the dictionaries and their exports")
    parser.add_argument("--kinds", nargs="+", default=["jumprelu", "matryoshka_batchtopk", "topk", "batchtopk"])
    parser.add_argument("--d", type=int, default=32, help="input width")
    args = parser.parse_args()

    from sae_lens import SAE, __version__

    x = planted(args.d, 20_000, seed=0)
    probe = planted(args.d, 2_000, seed=1)
    print(f"sae-lens {__version__}; {len(probe)} fresh inputs of width {args.d}")
    print(f"{'kind':22} {'SAELens arch':13} {'active':>7} {'max |codes diff|':>17} {'max |decode diff|':>18}")
    for kind in args.kinds:
        field = kind_spec(kind).sweep.field
        settings = TrainSettings(hook="blocks.0.hook_resid_post", kind=kind, ratios=[2.0], batch_size=256,
                                 tokens=100_000, **{field: SWEEP_VALUE[field]})
        [folder] = train_sweep(TensorSource(x), settings, Path(args.out) / kind, progress=False)
        ours = sae.load(folder)
        exported = export_saelens(ours, folder / "saelens")
        theirs = SAE.load_from_disk(str(exported), device="cpu")
        with torch.no_grad():
            codes = ours.encode(probe)
            their_codes = theirs.encode(probe)
            decode_diff = float((theirs.decode(codes) - ours.decode(codes)).abs().max())
        active = float((codes > 0).float().mean())
        print(f"{kind:22} {theirs.cfg.architecture():13} {active:7.3f} "
              f"{float((their_codes - codes).abs().max()):17.2e} {decode_diff:18.2e}")


if __name__ == "__main__":
    main()
