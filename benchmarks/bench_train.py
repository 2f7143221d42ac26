"""Training throughput: one tied SAE vs an 8-α sweep in one pass vs the bare matmuls.

    python benchmarks/bench_train.py [--device cpu|cuda] [--steps N] [--batch-size B]

Synthetic data of width 576 (the default model's d_model), R = 2, so no cache
is needed. Prints tokens/s of
  (a) one tied SAE training step (forward, loss, backward, Adam) exactly as train-sae runs it
      (eager on CPU; replayed from a CUDA graph on a GPU),
  (b) 8 tied SAEs (8 α values) stepped together on each batch, same path,
  (c) forward + backward of the two matmuls of (a)'s shapes only, launched eagerly,
and the ratios wall(b)/wall(a) (target <= 2) and a/c (target >= 0.7). On a
GPU it also prints (c') the same bare matmuls replayed from a CUDA graph, the
stricter floor, so the ratio against it can be read too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae.step import Stepper  # noqa: E402
from sae.train import TrainSettings, build_groups, build_optimizer  # noqa: E402

D_IN = 576
RATIO = 2.0


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _time(step, data: torch.Tensor, steps: int, warmup: int, device: str) -> float:
    """Seconds per step, median of 3 runs of `steps` steps."""
    n = data.shape[0]
    for i in range(warmup):
        step(data[i % n])
    _sync(device)
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        for i in range(steps):
            step(data[i % n])
        _sync(device)
        runs.append((time.perf_counter() - start) / steps)
    return sorted(runs)[1]


def sweep_step(n_alpha: int, device: str):
    l1s = [float(a) for a in torch.logspace(-4, -2, n_alpha)] if n_alpha > 1 else [1e-3]
    settings = TrainSettings(hook="bench", ratios=[RATIO], l1s=l1s)
    groups = build_groups(settings, D_IN, device)
    optimizer = build_optimizer(groups, settings, device)
    return Stepper(groups, optimizer, device)


def bare_step(device: str, batch_size: int, graph: bool = False):
    """The matmul floor: x Wᵀ then c W, forward and backward (grads of W only, as in training)."""
    f = int(round(RATIO * D_IN))
    w = torch.nn.init.xavier_uniform_(torch.empty(f, D_IN, device=device)).requires_grad_()

    def step(x: torch.Tensor) -> None:
        c = x @ w.T
        (c @ w).sum().backward()
        w.grad = None

    if not graph:
        return step
    static = torch.zeros(batch_size, D_IN, device=device)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step(static)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        (static @ w.T @ w).sum().backward()

    def replay(x: torch.Tensor) -> None:
        static.copy_(x)
        g.replay()

    return replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.device(args.device).type == "cuda"
    steps = args.steps or (500 if cuda else 30)
    warmup = 50 if cuda else 5
    g = torch.Generator().manual_seed(0)
    data = torch.randn(64, args.batch_size, D_IN, generator=g).to(args.device)
    print(f"device {args.device} ({torch.cuda.get_device_name() if cuda else f'{torch.get_num_threads()} threads'}), "
          f"d_in {D_IN}, R {RATIO:g}, batch {args.batch_size}, {steps} timed steps x 3")
    wall = {
        "a": _time(sweep_step(1, args.device), data, steps, warmup, args.device),
        "b": _time(sweep_step(8, args.device), data, steps, warmup, args.device),
        "c": _time(bare_step(args.device, args.batch_size), data, steps, warmup, args.device),
    }
    if cuda:
        wall["c'"] = _time(bare_step(args.device, args.batch_size, graph=True), data, steps, warmup, args.device)
    labels = {"a": "one tied SAE (full step)", "b": "8-alpha sweep, one pass", "c": "bare matmuls fwd+bwd",
              "c'": "bare matmuls, CUDA graph"}
    for key in wall:
        print(f"({key:<2}) {labels[key]:<26} {wall[key] * 1e3:8.3f} ms/step  {args.batch_size / wall[key]:12,.0f} tokens/s")
    print(f"(b') sweep per model               {wall['b'] / 8 * 1e3:8.3f} ms/step  "
          f"{8 * args.batch_size / wall['b']:12,.0f} model-tokens/s")
    rb = wall["b"] / wall["a"]
    ra = wall["c"] / wall["a"]
    print(f"wall(b)/wall(a) = {rb:.2f}  (target <= 2: {'met' if rb <= 2 else 'NOT met'})")
    print(f"a/c (tokens/s)  = {ra:.2f}  (target >= 0.7: {'met' if ra >= 0.7 else 'NOT met'})")
    if cuda:
        floor = wall["c'"] / wall["a"]
        print(f"a/c' (tokens/s) = {floor:.2f}  (against the graph-replayed floor)")


if __name__ == "__main__":
    main()
