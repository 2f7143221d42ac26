"""Throughput of `explain --concurrency N` against a served model with a fixed latency (issue 18, item 3).

A fake OpenAI-compatible server (`tests/fake_served.py`, its own process,
threaded) answers every request after a fixed latency (default 200 ms), so
the ideal throughput at concurrency N is N / latency requests per second.
For each N (default 1, 4, 16, 64) a fresh child process runs features
through the pipeline's own per-feature path (`explain.feature_pool.ordered_map`
over `explain.feature.explain_feature`, with the real `LLMExplainer`,
`SimulationScorer` and `OpenAIBackend`, and an LLM call cache on disk):
per feature one explainer request and one simulation request per scored
fragment (10). Synthetic exemplars (random words, random activations) stand
in for a fragment cache, so that only the request path is timed; every
feature's prompts differ, so nothing is answered from the cache.

Printed per N: requests/s, features/s, the ratio to N x the concurrency-1
throughput (target >= 0.8 up to 16), the most requests the server saw in
flight at once, and the child's peak RSS (memory must stay bounded:
`ordered_map` keeps at most 2N features submitted). Each level runs about
`--seconds` of ideal work. CPU time of the child is printed too: on a
loaded 2-core machine the client's own work per request (JSON, HTTP,
threads) is what bends the curve at high N.

    python benchmarks/bench_endpoint.py                      # 200 ms, N = 1 4 16 64
    python benchmarks/bench_endpoint.py --latency 0.1 --concurrency 1 8 32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORDS = ["the", "river", "Paris", "walked", "quickly", "seven", "blue", "under", "market", "song", "of", "and",
         "castle", "winter", "runs", "green", "table", "north", "bright", "paper"]
REQUESTS_PER_FEATURE = 11  # 1 explanation + 5 top and 5 random test fragments simulated one per prompt


def synthetic_features(n: int, seed: int, tokens: int = 24) -> list:
    """Exemplars of `n` made-up features: 20 top and 20 random fragments each, all different."""
    import numpy as np

    from explain.exemplars import FeatureExemplars, Fragment

    rng = np.random.default_rng(seed)
    out = []
    for f in range(n):
        def frag(i: int, peak: float) -> Fragment:
            toks = [" " + w for w in rng.choice(WORDS, size=tokens)]
            toks[0] = f" f{f}x{i}"  # every prompt differs: nothing comes from the cache
            acts = (rng.random(tokens) * peak).round(3).tolist()
            return Fragment(index=f * 100 + i, tokens=toks, activations=acts)

        top = [frag(i, 5.0) for i in range(20)]
        rnd = [frag(20 + i, 1.0) for i in range(20)]
        out.append(FeatureExemplars(feature=f, n_fragments=1000, n_active=100, max_activation=5.0, top=top,
                                    random=rnd))
    return out


def child(url: str, concurrency: int, n_features: int, workdir: Path) -> dict:
    """One level: run `n_features` features at `concurrency`; returns the measurements."""
    from explain.explainer import ExplainerConfig, LLMExplainer
    from explain.feature import explain_feature
    from explain.feature_pool import ordered_map
    from explain.llm.backends import make_backend
    from explain.llm.cache import LLMCache
    from explain.records_file import ResultsWriter
    from explain.scorers.simulation import SimulationScorer
    from explain.settings import ExemplarConfig

    features = synthetic_features(n_features, seed=concurrency)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    backend = make_backend("openai:fake", base_url=url, concurrency=concurrency,
                           cache=LLMCache(workdir / f"llm_cache_{concurrency}.sqlite"))
    explainer = LLMExplainer(backend, ExplainerConfig(format="highlight", k=1, seed=0))
    scorer = SimulationScorer.create(backend)
    config = ExemplarConfig()
    base = {"dictionary": "synthetic", "explainer": "openai:fake", "simulator": "openai:fake"}
    statuses: dict[str, int] = {}
    cpu0, t0 = time.process_time(), time.perf_counter()
    with ResultsWriter(workdir / f"explanations_{concurrency}.jsonl") as writer:
        for record in ordered_map(lambda ex: explain_feature(ex, explainer, scorer, config, base), features,
                                  concurrency if concurrency > 1 else 1):
            writer.write(record)
            statuses[record["status"]] = statuses.get(record["status"], 0) + 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    backend.close()
    return {"concurrency": concurrency, "features": n_features, "requests": backend.n_calls, "wall_s": wall,
            "cpu_s": cpu, "statuses": statuses, "rss_before_mb": rss_before / 1024,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _server_stats(url: str, reset: bool) -> dict:
    """The fake server's counters (GET .../stats; `reset` zeroes max_in_flight for the next level)."""
    with urllib.request.urlopen(f"{url}/stats{'?reset=1' if reset else ''}", timeout=10) as resp:
        return json.loads(resp.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the fake server takes per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, default=8.0, help="ideal duration of each level")
    parser.add_argument("--child", nargs=3, metavar=("URL", "N", "FEATURES"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        url, n, feats = args.child
        print(json.dumps(child(url, int(n), int(feats), Path(args.workdir))))
        return
    server = subprocess.Popen([sys.executable, "-m", "tests.fake_served", "--latency", str(args.latency)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    rows = []
    try:
        url = server.stdout.readline().strip()
        with tempfile.TemporaryDirectory() as tmp:
            for n in args.concurrency:
                ideal_rps = n / args.latency
                feats = max(2, round(args.seconds * ideal_rps / REQUESTS_PER_FEATURE))
                _server_stats(url, reset=True)
                out = subprocess.run([sys.executable, __file__, "--child", url, str(n), str(feats), "--workdir", tmp],
                                     cwd=REPO, capture_output=True, text=True)
                if out.returncode != 0:  # say why, and keep the levels already measured
                    print(f"N={n}: the run failed:\n{out.stderr[-2000:]}", file=sys.stderr, flush=True)
                    break
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row["max_in_flight"] = _server_stats(url, reset=False)["max_in_flight"]
                rows.append(row)
                print(f"N={n}: {row['requests']} requests in {row['wall_s']:.1f}s", file=sys.stderr, flush=True)
    finally:
        server.terminate()
        server.wait()
    base = rows[0]["requests"] / rows[0]["wall_s"] / rows[0]["concurrency"]
    print(f"\nfake server latency {args.latency * 1000:.0f} ms per request; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")
    print("| concurrency | features | requests | wall s | requests/s | features/s | ratio to N x single | "
          "max in flight | client CPU s | peak RSS MB (before run) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rps = r["requests"] / r["wall_s"]
        print(f"| {r['concurrency']} | {r['features']} | {r['requests']} | {r['wall_s']:.1f} | {rps:.1f} | "
              f"{r['features'] / r['wall_s']:.2f} | {rps / (r['concurrency'] * base):.2f} | {r['max_in_flight']} | "
              f"{r['cpu_s']:.1f} | {r['peak_rss_mb']:.0f} ({r['rss_before_mb']:.0f}) |")


if __name__ == "__main__":
    main()
