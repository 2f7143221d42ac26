"""Issue 16's scale target end to end: 10,000 features of one dictionary summarised and written as a report.

Target: under 60 s on this machine and under 200 MB on disk. The dictionary
and cache are `bench_feature_stats`'s (an untrained TopK SAE, k = 32, whose
rows are random cache tokens minus the mean, on the default model's
Wikipedia fragments cache: its docstring says why), so the two benchmarks
measure the same thing. A token-list explanation record per feature (with a
score) is written too, so the index's table and search carry 10,000
explanations as a real run's would.

    python benchmarks/bench_report.py [--cache /tmp/bench_feature_stats_L3.h5] [--keep OUT]

prints the wall time of each part (summarise = report.feature_stats; write =
report.build_report with those summaries: feature pages, table, the rest of
index.html), the total, the report's size on disk (du: blocks, as the
target means it) and in bytes, the number of files, the ratios to the
targets, and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGET_S = 60.0
TARGET_MB = 200.0


def write_records(run: Path, folder: Path, n_features: int, hook: str) -> None:
    """One token-list-style record per feature: an explanation and a score, as `explain` writes them."""
    out = run / "explanations" / "tokens"
    out.mkdir(parents=True)
    with (out / "explanations.jsonl").open("w", encoding="utf-8") as f:
        for i in range(n_features):
            score = ((i * 7919) % 1000) / 1000
            f.write(json.dumps({"dictionary": folder.name, "dictionary_path": str(folder), "kind": "topk", "hook": hook,
                                "explainer": "tokens", "simulator": "tokens", "feature": i, "status": "ok",
                                "explanation": f"tokens like w{i % 997} and w{(i * 31) % 997}", "candidates": [],
                                "scores": {"top_and_random": score, "top": score, "random": score / 2},
                                "exemplars": {"top": [], "random": []}}) + "\n")


def disk_usage(folder: Path) -> tuple[float, float, int]:
    """(MB on disk as du counts blocks, MB of file contents, number of files)."""
    du = subprocess.run(["du", "-sk", str(folder)], capture_output=True, text=True, check=True).stdout
    files = [p for p in folder.rglob("*") if p.is_file()]
    return int(du.split()[0]) / 1024, sum(p.stat().st_size for p in files) / 1e6, len(files)


def main() -> None:
    from bench_feature_stats import add_setup_arguments, make_dictionary, prepare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_setup_arguments(parser)
    parser.add_argument("--keep", type=Path, default=None, help="write the run folder (and its report/) here")
    args = parser.parse_args()
    prepare(args)
    from report.feature_stats import summarize_dictionaries
    from report.build import build_report

    with tempfile.TemporaryDirectory() as tmp:
        run = args.keep or Path(tmp) / "run"
        run.mkdir(parents=True, exist_ok=False)
        folder = make_dictionary(args.cache, args.hook, args.n_features, args.k, run / "dicts" / "topk_bench")
        write_records(run, folder, args.n_features, args.hook)
        t0 = time.perf_counter()
        summaries, skipped = summarize_dictionaries(args.cache, [folder], progress=False)
        t1 = time.perf_counter()
        index = build_report(run, run / "report", summaries=(summaries, skipped), progress=False)
        t2 = time.perf_counter()
        disk_mb, bytes_mb, n_files = disk_usage(index.parent)
        pages = len(list((index.parent / "features").rglob("*.html")))
        index_mb = index.stat().st_size / 1e6
    total = t2 - t0
    load = os.getloadavg()
    print(f"features: {sum(len(s.features) for s in summaries)} of {args.n_features} (k={args.k}), "
          f"{summaries[0].n_tokens if summaries else 0} tokens, skipped: {skipped}")
    print(f"summarise: {t1 - t0:.1f}s   write report: {t2 - t1:.1f}s   total: {total:.1f}s "
          f"({total / TARGET_S:.2f} of the {TARGET_S:.0f} s target)")
    print(f"report on disk: {disk_mb:.1f} MB (du; {disk_mb / TARGET_MB:.2f} of the {TARGET_MB:.0f} MB target), "
          f"{bytes_mb:.1f} MB of contents in {n_files} files ({pages} feature pages; index.html {index_mb:.1f} MB)")
    print(f"threads: {args.threads}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min), "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
