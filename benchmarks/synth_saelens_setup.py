"""bench_synth with our BatchTopK-family SAEs trained in SAELens's setup instead of ours (a diagnostic, not a recipe).

Our Matryoshka BatchTopK trails SAELens's by 0.01-0.03 F1 at the scaled L0 10 of `--scale cpu` and matches it
at 12 (docs/RESULTS.md). Every single difference in the training setup read from SAELens's source was tried
alone without closing the gap; this script changes all of them at once, so the question "is it our objective
or our setup?" has a measured answer. Against our defaults it changes:

- the start: b_d at 0 instead of the data mean; decoder rows, and the encoder (their copy), at norm 0.1
  (SAELens's `decoder_init_norm`) instead of 1;
- the learning rate: constant `--setup-lr` (SAELens's rate in this benchmark, 1e-3) with no warm-up or decay;
- the gradient: clipped per model to global norm `--setup-clip`. SAELens's trainer always clips at 1, and its
  loss is a squared error summed over dimensions, V times our FVU (V: the data's variance per sample, 197 on
  this cache in our normalised units; its measured pre-clip norm is 50-160, so the clip always acts), hence
  1/197 here.

SAELens's per-level AuxK at weight 1 is bench_synth's own flags: `--our-setting auxk_alpha=1 --our-setting
matryoshka_aux=true` (since Matryoshka's defaults took three parts of this setup, its defaults; `--our-setting
auxk_alpha=0.03125 --our-setting matryoshka_aux=false` leaves it out). `--without PART ...` leaves parts at
BatchTopK's defaults, which were Matryoshka's when this was measured (which of them matter). Every other
argument goes to bench_synth. The rows' fingerprint records this setup, the parts left out and the seed, so they
are never mixed with rows of the defaults or of another setup in one --out.

    PYTHONPATH=. /work/bench-venv/bin/python benchmarks/synth_saelens_setup.py --scale cpu \\
        --model-dir /work/synth/cpu --out runs/synth-setup --kinds matryoshka_batchtopk \\
        --sweep matryoshka_batchtopk=10,12 --saelens-kinds none --l0s 10 12 \\
        --our-setting auxk_alpha=1 --our-setting matryoshka_aux=true
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_synth  # noqa: E402
import sae.kinds.stack as stack  # noqa: E402
import sae.train as train  # noqa: E402
from sae.kinds.threshold import BatchTopKStack  # noqa: E402
from sae.registry import kind_spec, registered  # noqa: E402

BATCHTOPK_FAMILY = ("batchtopk", "matryoshka_batchtopk")  # the stacks whose gradient `install` clips
SAELENS_CLIP = 1.0  # SAELens's trainer: clip_grad_norm_(sae.parameters(), 1.0) on its summed squared error
PARTS = ("b_d", "norm", "rate", "clip")  # what --without can leave at our defaults (AuxK: bench_synth's flags)


def clip_per_model(module: torch.nn.Module, n_models: int, max_norm: float) -> None:
    """Scale each stacked model's gradient (its slice of every parameter) to global norm ≤ max_norm."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    norms = torch.stack([g.pow(2).reshape(n_models, -1).sum(-1) for g in grads]).sum(0).sqrt()
    factor = (max_norm / norms.clamp_min(1e-12)).clamp(max=1.0)
    for g in grads:
        g.mul_(factor.view(n_models, *([1] * (g.dim() - 1))))


def install(lr: float, clip: float, seed: int, without: frozenset[str] = frozenset()) -> None:
    """Patch the trainer so that BatchTopK-family stacks train in SAELens's setup (module docstring), less the
    parts named in `without` (of PARTS), which keep our defaults."""
    if "b_d" not in without:
        init_affine = stack.SweepStack.init_affine
        stack.SweepStack.init_affine = lambda self, data_mean, row_norm=1.0: init_affine(self, None, row_norm)
    if "rate" not in without:
        train.lr_factor = lambda step, total, warmup, decay: 1.0
    if "clip" not in without:
        before_update = BatchTopKStack.before_update

        def clipped(self) -> None:
            before_update(self)
            clip_per_model(self, len(self.values), clip)

        BatchTopKStack.before_update = clipped
    bench_synth.SEED = seed
    fingerprint = bench_synth.own_fingerprint
    bench_synth.own_fingerprint = lambda *a: {**fingerprint(*a), "setup": "saelens", "setup_lr": lr,
                                              "setup_clip": clip, "seed": seed, "without": sorted(without)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--setup-lr", type=float, default=1e-3, help="constant learning rate (SAELens's here)")
    parser.add_argument("--setup-clip", type=float, default=SAELENS_CLIP / 197.1,
                        help="per-model gradient norm cap in FVU units (SAELens's 1 / the data's variance)")
    parser.add_argument("--seed", type=int, default=0, help="bench_synth's SEED: batch order and initialisation")
    parser.add_argument("--kinds", default="matryoshka_batchtopk", help="batchtopk and/or matryoshka_batchtopk")
    parser.add_argument("--without", nargs="+", choices=PARTS, default=[],
                        help="parts of the setup left at BatchTopK's defaults (b_d: start at the data mean; norm: "
                             "rows at 1; rate: BatchTopK's falling learning rate with warm-up and decay; clip: no "
                             "clipping)")
    ours, rest = parser.parse_known_args()
    if ours.setup_lr <= 0 or ours.setup_clip <= 0:
        raise SystemExit("--setup-lr and --setup-clip must be positive")
    kinds = [k for k in ours.kinds.split(",") if k]
    if not kinds or set(kinds) - set(BATCHTOPK_FAMILY):
        raise SystemExit(f"--kinds {ours.kinds!r}: this setup is written for {', '.join(BATCHTOPK_FAMILY)} only "
                         "(other kinds would get its start and rate but not its clip); name one or both")
    without = frozenset(ours.without)
    install(ours.setup_lr, ours.setup_clip, ours.seed, without)
    rate = [] if "rate" in without else ["--our-lr", str(ours.setup_lr)]
    # the row start is the kinds' own setting (BatchTopKSettings.decoder_init_norm), not a patch; pinned both
    # ways, as Matryoshka's default is SAELens's 0.1 and BatchTopK's 1
    start = 1.0 if "norm" in without else stack.SAELENS_DECODER_INIT_NORM
    sys.argv = [sys.argv[0], "--our-setting", f"decoder_init_norm={start}", *rest, "--kinds", ",".join(kinds), *rate]
    # "rate" left out: every kind trains at BatchTopK's rule and schedule (Matryoshka's own is SAELens's constant)
    batchtopk = kind_spec("batchtopk")
    rows = [replace(kind_spec(k), lr=batchtopk.lr, lr_steps=batchtopk.lr_steps, lr_rise_steps=None,
                    lr_schedule=batchtopk.lr_schedule) for k in kinds] if "rate" in without else []
    with registered(*rows):
        bench_synth.main()


if __name__ == "__main__":
    main()
