"""Training throughput with 1 and 2 processes (data-parallel under torchrun) at a realistic shape.

    python benchmarks/bench_scaling_train.py [--kind topk|tied_sae] [--ratio 8] [--k 32] [--batch-size 4096]
                                             [--steps 5] [--procs 1,2]

Synthetic activations of width 576 (the default model's d_model), so no
cache is needed. Each configuration runs in fresh processes, exactly the
objects train-sae uses (`build_groups`, `build_optimizer`, `Stepper` for one
process, `sae.distributed.DataParallelStepper` under torchrun with gloo),
on the same global batch of `--batch-size` rows. Prints training tokens/s of
  1 process x 1 thread, 1 process x 2 threads, and N processes x 1 thread,
and the ratio of N processes to 1 process x 1 thread (ideal: N). With
`--rounds R` the configurations run interleaved R times and the median of
each is shown (a shared machine's load drifts between runs). Reading
the cache is not timed: train-sae overlaps it with the steps (`prefetch`).
Run by hand; the machine's load (`uptime`) changes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
D_IN = 576
POOL = 3  # distinct batches cycled through (building one is not part of a step)


def _worker(args: argparse.Namespace) -> None:
    """One process of one configuration: time `--steps` training steps after one warm-up step."""
    import torch

    sys.path.insert(0, str(REPO))
    from activations.distributed import barrier, destroy_process_group, init_process_group, launch_from_env
    from sae.distributed import DataParallelStepper
    from sae.step import Stepper
    from sae.train import TrainSettings, build_groups, build_optimizer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    launch = launch_from_env()
    init_process_group(launch)
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(4 * D_IN, D_IN, generator=g)
    truth /= truth.norm(dim=1, keepdim=True)
    batches = [((torch.rand(args.batch_size, truth.shape[0], generator=g) < 0.01)
                * torch.rand(args.batch_size, truth.shape[0], generator=g)) @ truth for _ in range(POOL)]
    scale = D_IN ** 0.5 / float(batches[0].norm(dim=1).mean())
    batches = [b * scale for b in batches]
    settings = TrainSettings(hook="bench", kind=args.kind, ratios=[args.ratio], ks=[args.k], l1s=[1e-3],
                             batch_size=args.batch_size)
    groups = build_groups(settings, D_IN, "cpu", data_mean=batches[0].mean(0))
    optimizer = build_optimizer(groups, settings, "cpu")
    step = DataParallelStepper(groups, optimizer, "cpu", launch) if launch.distributed else \
        Stepper(groups, optimizer, "cpu")
    step(batches[0])
    barrier(launch)
    start = time.perf_counter()
    for i in range(args.steps):
        step(batches[i % POOL])
    barrier(launch)
    seconds = time.perf_counter() - start
    if launch.is_main:
        print("RESULT " + json.dumps({"seconds_per_step": seconds / args.steps,
                                      "tokens_per_s": args.batch_size * args.steps / seconds}), flush=True)
    destroy_process_group(launch)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(procs: int, threads: int, args: argparse.Namespace, passthrough: list[str]) -> dict:
    me = [str(Path(__file__).resolve()), "--worker", *passthrough]
    cmd = [sys.executable, *me] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), *me]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"{procs} process(es) x {threads} thread(s) failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="topk", choices=("topk", "tied_sae", "untied_sae"))
    parser.add_argument("--ratio", type=float, default=8.0)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--procs", default="1,2", help="comma-separated process counts (1 is always run)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions; the median is shown")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    passthrough = ["--kind", args.kind, "--ratio", str(args.ratio), "--k", str(args.k),
                   "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
    what = f"k={args.k}" if args.kind == "topk" else "alpha=1e-3"
    print(f"{args.kind} d_in={D_IN} R={args.ratio:g} ({what}), global batch {args.batch_size}, "
          f"{args.steps} timed steps after 1 warm-up; load: {os.getloadavg()[0]:.2f} (1 min)")
    counts = sorted({1, *(int(p) for p in args.procs.split(","))})
    configs = [(1, 1), (1, 2)] + [(n, 1) for n in counts if n > 1]
    runs: dict[tuple[int, int], list[dict]] = {c: [] for c in configs}
    for _ in range(args.rounds):
        for procs, threads in configs:
            runs[(procs, threads)].append(_run(procs, threads, args, passthrough))
    base = None
    for (procs, threads), results in runs.items():
        r = sorted(results, key=lambda x: x["tokens_per_s"])[len(results) // 2]
        base = base or r["tokens_per_s"]
        spread = "" if len(results) == 1 else \
            f"  [range {min(x['tokens_per_s'] for x in results):.0f}-{max(x['tokens_per_s'] for x in results):.0f}]"
        print(f"  {procs} process(es) x {threads} thread(s): {r['tokens_per_s']:9.0f} tokens/s "
              f"({r['seconds_per_step']:.2f} s/step)  x{r['tokens_per_s'] / base:.2f} vs 1x1{spread}")
    print(f"load after: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
