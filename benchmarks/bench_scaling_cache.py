"""Caching throughput with one process and with `torchrun --nproc_per_node 2` (issue 18 item 4).

Runs `cli.py cache` as a user would, on the default model and corpus, three
ways: one process with one thread, one process with two threads, and two
processes (torchrun, gloo) with one thread each. Prints tokens/s of the
forward-and-write loop (the slowest rank's, as the `joined` line reports it)
and of the whole command (model load and tokenisation included), the ratios,
and how the two-process cache's activations compare with the single-process
one's (float32, so any difference is the arithmetic's, not storage rounding),
and how fast readers go through the virtual dataset against the plain file.
The machine's load average is printed with the figures: on a shared machine
it decides them. Run:

    python benchmarks/bench_scaling_cache.py [--tokens 40960] [--hooks ...] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from activations.reader import ActivationCache  # noqa: E402

HOOKS = "blocks.2.hook_resid_post,blocks.5.hook_resid_post,blocks.8.hook_resid_post"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(label: str, out: Path, args: list[str], processes: int, threads: int) -> dict:
    """One `cli.py cache` run; its wall time and the loop seconds it printed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    if processes == 1:
        cmd = [sys.executable, str(ROOT / "cli.py"), *args, "--out", str(out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), str(ROOT / "cli.py"), *args, "--out", str(out)]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{label} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    text = done.stdout + done.stderr
    found = re.search(r"slowest rank's loop ([\d.]+)s", text) or re.search(r"wrote \d+ contexts .* in ([\d.]+)s", text)
    return {"label": label, "wall": wall, "loop": float(found.group(1))}


def compare(a: Path, b: Path) -> list[str]:
    lines = []
    with ActivationCache(a) as one, ActivationCache(b) as two:
        same_tokens = np.array_equal(one.tokens(), two.tokens())
        every = np.arange(one.n_contexts)
        for hook in one.hooks:
            x, y = one.acts(hook, every), two.acts(hook, every)
            diff = np.abs(x - y)
            rel = float(diff.max() / max(np.abs(x).max(), 1e-30))
            lines.append(f"  {hook}: tokens equal {same_tokens}, bit-identical {bool((x == y).all())}, "
                         f"differing values {float((x != y).mean()):.2%}, max |diff| {float(diff.max()):.3g} "
                         f"(relative to max |x|: {rel:.2g})")
    return lines


def read_speed(path: Path, hook: str) -> str:
    """Reading through the file as training (one shuffled epoch) and exemplars (256 random contexts) do."""
    with ActivationCache(path) as cache:
        started = time.perf_counter()
        n = sum(len(b) for b in cache.iter_batches(hook, 4096))
        epoch = time.perf_counter() - started
        picks = np.random.default_rng(0).choice(cache.n_contexts, size=min(256, cache.n_contexts), replace=False)
        started = time.perf_counter()
        cache.acts(hook, picks)
        rand = time.perf_counter() - started
    return (f"iter_batches {n / epoch:9.0f} tok/s ({epoch:.2f} s), {len(picks)} random contexts "
            f"{len(picks) / rand:7.0f} contexts/s ({rand:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=40960)
    parser.add_argument("--hooks", default=HOOKS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--keep", type=Path, default=None, help="write the caches here (default: a temporary folder)")
    opts = parser.parse_args()
    args = ["cache", "--model", "default", "--corpus", "default", "--hooks", opts.hooks, "--max-tokens",
            str(opts.tokens), "--batch-size", str(opts.batch_size), "--dtype", "float32"]
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        folder = opts.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        runs = [run("1 process x 1 thread", folder / "p1t1.h5", args, 1, 1),
                run("1 process x 2 threads", folder / "p1t2.h5", args, 1, 2),
                run("2 processes x 1 thread (torchrun)", folder / "p2t1.h5", args, 2, 1)]
        with ActivationCache(folder / "p1t1.h5") as cache:
            tokens = cache.n_contexts * cache.context_length
        print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"default model, {tokens} tokens, hooks {opts.hooks}, batch {opts.batch_size}, float32")
        for r in runs:
            print(f"  {r['label']:<36} loop {tokens / r['loop']:8.0f} tok/s ({r['loop']:.1f} s)   "
                  f"whole command {tokens / r['wall']:8.0f} tok/s ({r['wall']:.1f} s)")
        one, two_threads, two = runs
        print(f"ratio 2 processes / 1 process x 1 thread:  loop {one['loop'] / two['loop']:.2f}x, "
              f"whole command {one['wall'] / two['wall']:.2f}x")
        print(f"ratio 2 processes / 1 process x 2 threads: loop {two_threads['loop'] / two['loop']:.2f}x, "
              f"whole command {two_threads['wall'] / two['wall']:.2f}x")
        print("2-process cache vs 1 process x 1 thread:")
        print("\n".join(compare(folder / "p1t1.h5", folder / "p2t1.h5")))
        print("1 process x 2 threads vs 1 process x 1 thread:")
        print("\n".join(compare(folder / "p1t1.h5", folder / "p1t2.h5")))
        hook = opts.hooks.split(",")[-1]
        for name, label in (("p1t1.h5", "plain file (1 process)"), ("p2t1.h5", "virtual dataset (2 processes)")):
            read_speed(folder / name, hook)  # once to warm the page cache, then measured
            print(f"reading {hook} from the {label}: {read_speed(folder / name, hook)}")


if __name__ == "__main__":
    main()
