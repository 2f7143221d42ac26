"""How far one Adam step turns the tied SAE's rows, at a given lr and input width d.

Adam moves every coordinate by about lr per step, so a row of d coordinates
moves by about lr·√d, while the row's norm at Xavier initialisation,
√(2/(1 + R)), does not depend on d. The angle a row turns per step therefore
grows as lr·√d: one lr is three times "faster" at d = 576 (SmolLM2's
residual stream) than at d = 64 (bench_recovery's planted sets). This script
measures that angle on a real cache, so the tied SAE's default lr rule
(`sae.registry`, docs/RESULTS.md "L1 defaults under superposition") rests on
a measurement. It trains `--steps` steps of the tied stack exactly as
train-sae builds it (normalised inputs, default init, Adam, constant lr, no
warm-up) and prints, per lr, the mean angle (degrees) a row turns per step
over the second half of the steps, and the mean row norm at the end.

    python benchmarks/tied_step_angle.py --cache CACHE --hook HOOK --ratio 2 --lr 0.005 0.015
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae.data import split_cache  # noqa: E402
from sae.settings import TrainSettings  # noqa: E402
from sae.step import Stepper  # noqa: E402
from sae.train import build_groups, build_optimizer, input_stats  # noqa: E402


def turn_per_step(cache: str, hook: str, ratio: float, alpha: float, lr: float, steps: int) -> tuple[float, float]:
    """(mean angle in degrees a row turns per step over the second half of `steps`, mean row norm at the end)."""
    settings = TrainSettings(hook=hook, kind="tied_sae", ratios=[ratio], l1s=[alpha], lr=lr, cache=cache)
    source, _ = split_cache(cache, hook, settings.eval_fraction, skip_first=True, sink_factor=settings.sink_factor)
    stats = input_stats(source, settings)
    groups = build_groups(settings, source.d_in, "cpu", data_mean=stats.mean)
    optimizer = build_optimizer(groups, settings, "cpu")
    step = Stepper(groups, optimizer, "cpu", use_graph=False)
    angles = []
    for i, x in enumerate(source.batches(settings.batch_size, settings.batch_size * steps, settings.seed)):
        before = torch.nn.functional.normalize(groups[0].M.detach()[0].clone(), dim=1)
        step(x.to(torch.float32) * stats.scale)
        after = torch.nn.functional.normalize(groups[0].M.detach()[0], dim=1)
        if i >= steps // 2:
            cos = (before * after).sum(1).clamp(-1, 1)
            angles.append(float(torch.rad2deg(torch.acos(cos)).mean()))
    return sum(angles) / len(angles), float(groups[0].M.detach()[0].norm(dim=1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--hook", required=True)
    parser.add_argument("--ratio", type=float, default=2.0)
    parser.add_argument("--l1", type=float, default=3e-3)
    parser.add_argument("--lr", type=float, nargs="+", default=[5e-3, 1.5e-2])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(2)
    for lr in args.lr:
        angle, norm = turn_per_step(args.cache, args.hook, args.ratio, args.l1, lr, args.steps)
        d = split_cache(args.cache, args.hook, 0.1, skip_first=True, sink_factor=20.0)[0].d_in
        print(f"d={d} R={args.ratio:g} alpha={args.l1:g} lr={lr:g}: {angle:.3f} deg per step "
              f"(lr*sqrt(d) = {lr * math.sqrt(d):.3f}), mean row norm after {args.steps} steps {norm:.3f}")


if __name__ == "__main__":
    main()
