"""Frontier benchmark (issue 12 item 6): held-out FVU vs L0 of every learned kind against EleutherAI sparsify's TopK.

On the default model (SmolLM2-135M-Instruct) at a shallow and a deep layer,
one activation cache (made with the real `cli.py cache` command), the same
training vectors and the same number of training tokens for everything:

- ours: tied_sae and untied_sae over an α sweep, topk and batchtopk over a k
  sweep, R = 2 (1,152 latents), trained with `train-sae` (through
  `sae.commands.train_sae_command`, so a rerun reuses finished dictionaries);
- the reference: a TopK `SparseCoder` of EleutherAI's `sparsify`
  (pip `eai-sparsify`, 1.3.3 when this was written) per k, same number of
  latents, trained in a separate Python (`--reference-python`, a virtual
  environment that has sparsify; this process never imports it) by a loop
  that mirrors one step of sparsify's `Trainer` with sparsify's own defaults.

Everything is measured by the same code: every dictionary, ours and
sparsify's (saved in sparsify's own layout, cfg.json + sae.safetensors, and
opened with `sae.load`), goes through `sae.metrics.reconstruction_metrics`
in one pass over the held-out split (the last `--eval-fraction` of the
cache's contexts, position 0 excluded, as train-sae does). The sparsify
worker also measures its SAEs with sparsify's own forward pass and the same
formula; the two must agree (printed), and the worker's numbers stand in if
`sae.load` cannot open a save.

How the sparsify side mirrors `sparsify.Trainer` (1.3.3, read from its source):
- `SparseCoder(d_in, SparseCoderConfig(k=k, num_latents=F))` after
  `torch.manual_seed(seed)` (init_seeds default [0]): nn.Linear encoder with
  zero bias, decoder = encoder weight copy normalised to unit rows;
- on the first step b_dec := mean of the first batch; before every forward
  `set_decoder_norm_to_unit_norm()`; loss = fvu + auxk_alpha·auxk_loss +
  multi_topk_fvu/8 with the batch's own total variance; after backward
  `remove_gradient_parallel_to_decoder_directions()`, then the optimiser step;
- its default optimiser: `ScheduleFreeWrapper(SignSGD, momentum=0.95)` with
  one param group per SAE at lr = 5e-3 / sqrt(F / 2**14) (no schedule), and
  `optimizer.eval()` before saving (the schedule-free average is what
  sparsify saves);
- its defaults auxk_alpha = 0 (no AuxK; `--reference-auxk-alpha` turns it
  on, with dead_feature_threshold tokens, default sparsify's 10M), no input
  normalisation (raw activations), float32, all SAEs of a run in one
  optimiser and one pass over each batch, as its Trainer does for several
  hookpoints.

Deviations, all forced by the setting:
- data: sparsify computes activations on the fly from 32 sequences of 2048
  tokens per step; here batches come from our HDF5 cache through our reader
  (`ActivationCache.iter_batches`, token-shuffled, training split only,
  position 0 excluded, same seed as train-sae). Its default batch of 32
  sequences is taken as 32 contexts of this cache, 32 × 127 = 4,064 tokens
  per step ("sparsify default batch"); it is also trained at our batch size
  (256), where it reads exactly the batches our trainer reads;
- steps = tokens // batch, so at 4,064 tokens per step it sees up to 4,063
  fewer tokens than ours (reported);
- no wandb, no checkpoints, no distributed code paths; CPU, so no bf16
  autocast and no Triton decoder (sparsify's eager `embedding_bag` decoder).

Speed: tokens/s per model = training tokens × models / seconds of the whole
training loop (data reading included, evaluation excluded), for our sweep
(all models of one kind step together) and for sparsify's run (all k in one
optimiser), with the same torch thread count (`--threads`).

    python benchmarks/bench_frontier.py --out runs/frontier --reference-python /work/venv-bench/bin/python \
        [--tokens N] [--layers 3 23] [--lr-probe]

The sparsify environment:
    python -m venv /work/venv-bench --system-site-packages
    /work/venv-bench/bin/pip install --no-deps eai-sparsify==1.3.3 natsort simple-parsing schedulefree
    /work/venv-bench/bin/pip install docstring-parser datasets
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from frontier_runs import run_worker, speed_compare, sparsify_spec
from frontier_sparsify import EVAL_BATCH, SparsifyMaths, heldout_tokens
from frontier_tables import CONTROL, _fmt, hook_of, interpolate, layer_report, plot_layer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CACHE_HOOKS = "blocks.1.hook_resid_post,blocks.3.hook_resid_post,blocks.23.hook_resid_post"
CONTEXT_LENGTH = 128
SPARSIFY_DEFAULT_SEQUENCES = 32  # sparsify TrainConfig.batch_size (sequences per step)
KINDS = ("tied_sae", "untied_sae", "topk", "batchtopk")
SINK_FACTOR = 20.0  # tokens with norm above this × the median norm are attention sinks (fvu_nosink leaves them out)


# -- the toolkit side ---------------------------------------------------------------------------------

def ensure_cache(args) -> Path:
    """The real cache command; a finished cache is kept, a killed one resumes."""
    cache = Path(args.cache or Path(args.out) / "frontier.h5")
    hooks = CACHE_HOOKS.split(",")
    hooks += [hook_of(layer) for layer in args.layers if hook_of(layer) not in hooks]
    cmd = [sys.executable, str(REPO / "cli.py"), "cache", "--model", "default", "--corpus", "default",
           "--hooks", ",".join(hooks), "--context-length", str(CONTEXT_LENGTH), "--max-tokens",
           str(args.cache_tokens), "--batch-size", "32", "--dtype", "float16", "--out", str(cache)]
    if not _cache_complete(cache):
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO)
    return cache


def _cache_complete(path: Path) -> bool:
    if not path.exists():
        return False
    from activations.reader import ActivationCache

    try:
        with ActivationCache(path) as cache:
            return bool(cache.complete)
    except Exception:  # an unreadable / unfinished file: let the cache command resume or explain it
        return False


def train_ours(args, cache: Path, layer: int, kind: str, values: list, out: Path, lr: float | None = None,
               own=None) -> list[Path]:
    """`train-sae` for one kind's sweep; `own` is the kind's settings dataclass (None: its defaults)."""
    from sae.commands import train_sae_command
    from sae.registry import kind_spec
    from sae.settings import TrainSettings

    swept = kind_spec(kind).sweep  # α, k or the L0 coefficient: the kind's registry row says which
    sweep = {swept.field: [swept.cast(v) for v in values]}
    from sae.train import member_names

    settings = TrainSettings(hook=hook_of(layer), kind=kind, ratios=[args.ratio], batch_size=args.batch_size,
                             tokens=args.tokens, cache=str(cache), out=str(out), lr=lr,
                             eval_fraction=args.eval_fraction, seed=args.seed, sink_factor=args.sink_factor,
                             kind_settings=own, **sweep)
    print(f"\n== ours: layer {layer} {kind} {values} lr={settings.learning_rate:g} -> {out}", flush=True)
    existing = [out / name for name in member_names(settings)]
    if layer in getattr(args, "reuse_layers", ()) and all((p / "config.json").exists() for p in existing):
        print(f"  --reuse-layers: the {len(existing)} folders already there are measured as they are "
              "(trained by an earlier version of train-sae; see their config.json)", flush=True)
        return existing
    return train_sae_command(settings)


def fit_controls(args, cache: Path, layer: int, out: Path) -> list[Path]:
    """PCA and ICA bases fitted on the same training tokens, each kept to its top k coefficients per token."""
    from sae.commands import baselines_command
    from sae.settings import BaselinesSettings

    print(f"\n== controls: layer {layer} pca_topk, ica_topk k {list(args.ks)} -> {out}", flush=True)
    paths = baselines_command(BaselinesSettings(cache=str(cache), hook=hook_of(layer), out=str(out),
                                                kinds=["pca_topk", "ica_topk"], tokens=args.tokens, k=list(args.ks),
                                                eval_fraction=args.eval_fraction, sink_factor=args.sink_factor,
                                                seed=args.seed))
    return [Path(p) for p in paths]


def train_sparsify(args, cache: Path, layer: int, batch: int, out: Path, lr_mult: float = 1.0) -> dict:
    """Run the sparsify worker in the reference Python (skipped when its run.json exists)."""
    record = out / "run.json"
    if record.exists():
        return json.loads(record.read_text())
    spec = {**sparsify_spec(args, cache, layer, batch, args.tokens), "out": str(out), "progress": True}
    if lr_mult != 1.0:  # a multiple of the given --reference-lr, else of sparsify's own rule 5e-3 / sqrt(F / 2^14)
        spec["lr"] = (args.reference_lr or 5e-3 / (spec["num_latents"] / 2 ** 14) ** 0.5) * lr_mult
    out.mkdir(parents=True, exist_ok=True)
    print(f"\n== sparsify: layer {layer} k {list(args.ks)} batch {batch} lr {spec['lr'] or 'its rule'} -> {out}",
          flush=True)
    run_worker(args, spec)
    return json.loads(record.read_text())


def measure(cache: Path, layer: int, folders: list[Path], eval_fraction: float, sink_factor: float) -> list[dict]:
    """Every dictionary through reconstruction_metrics in one pass over the held-out split.

    Dictionaries open with `sae.load`; a sparsify save it refuses is read as
    `SparsifyMaths` (the row says so, with sae.load's reason). The main
    figures leave out "sink" tokens as train-sae does (norm over --sink-factor
    × the training split's median; at deep layers of SmolLM2 position 1 is
    sometimes a second attention sink, ~75× the median norm, and two such
    held-out tokens carry half of layer 23's variance); a second pass over
    every token gives `fvu_all`.
    """
    import torch

    import sae
    from activations.reader import ActivationCache
    from sae.data import sink_norm_limit, split_cache
    from sae.errors import DictionaryError
    from sae.metrics import reconstruction_metrics

    _, held = split_cache(cache, hook_of(layer), eval_fraction, skip_first=True, sink_factor=0)
    loaded, rows = [], []
    for folder in folders:
        try:
            loaded.append(sae.load(folder))
            rows.append({"folder": str(folder), "measured_by": "sae.load"})
        except DictionaryError as err:
            if not (Path(folder) / "sae.safetensors").exists():
                raise
            loaded.append(SparsifyMaths(Path(folder)))
            rows.append({"folder": str(folder), "measured_by": "sparsify maths (sae.load refused)",
                         "load_error": str(err)})
    train, _ = split_cache(cache, hook_of(layer), eval_fraction, skip_first=True, sink_factor=0)
    x = heldout_tokens(cache, hook_of(layer), held.contexts)
    # the limit train-sae and evaluate use (sae.data.sink_norm_limit), so "sinks out" is the toolkit's own protocol
    limit = sink_norm_limit(cache, hook_of(layer), train.contexts, True, sink_factor) or float("inf")
    keep = x.norm(dim=1) <= limit
    robust = reconstruction_metrics(loaded, x[keep].split(EVAL_BATCH))
    metrics = reconstruction_metrics(loaded, x.split(EVAL_BATCH))
    for row, m, m2 in zip(rows, metrics, robust):
        m2.pop("firing_rates", None)
        row.update(m2, fvu_all=m["fvu"], l0_all=m["l0"], sink_limit=limit, sinks_excluded=int((~keep).sum()))
    return rows


def run_layer(args, cache: Path, layer: int) -> tuple[str, dict, list[dict], dict]:
    from sae.io import read_config

    base = Path(args.out) / f"L{layer}"
    folders, meta, speeds = [], {}, {}
    sweeps = {"tied_sae": args.alphas_tied, "untied_sae": args.alphas_untied, "topk": args.ks, "batchtopk": args.ks}
    for kind in args.kinds:
        paths = train_ours(args, cache, layer, kind, sweeps[kind], base / "ours")
        cfgs = [read_config(p) for p in paths]
        m0 = cfgs[0]["metrics"]
        speeds[kind] = {"seconds": m0["train_seconds"], "models": len(paths),
                        "tokens_per_s_per_model": args.tokens * len(paths) / m0["train_seconds"],
                        "resumed_from_step": m0.get("resumed_from_step", 0), "lr": cfgs[0]["training"]["lr"]}
        for p, c in zip(paths, cfgs):
            folders.append(p)
            meta[str(p)] = {"series": kind, "sweep": f"α={c['l1']:g}" if "l1" in c and kind in ("tied_sae", "untied_sae")
                            else f"k={c['k']}", "config_metrics": c["metrics"]}
    if args.controls:
        for path in fit_controls(args, cache, layer, base / "controls"):
            c = read_config(path)
            folders.append(path)
            meta[str(path)] = {"series": c["kind"] + CONTROL, "sweep": f"k={c.get('k')}", "config_metrics": c.get("metrics")}
    worker = {}
    runs = [(batch, m) for batch in args.reference_batches
            for m in (args.reference_lr_multipliers if batch == args.batch_size else [1.0])]
    for batch, m in runs:
        label = f"sparsify topk B={batch}" + ("" if m == 1 else f" lr×{m:g}")
        rec = train_sparsify(args, cache, layer, batch, base / (f"sparsify_b{batch}" + ("" if m == 1 else f"_lrx{m:g}")),
                             lr_mult=m)
        speeds[label] = {"seconds": rec["seconds"], "models": rec["models"],
                         "tokens_per_s_per_model": rec["tokens_per_s_per_model"], "tokens": rec["tokens"],
                         "lr": rec["lr"], "batch_size": batch, "decoder_norm_range": rec["decoder_norm_range"]}
        for k, folder in rec["folders"].items():
            folders.append(Path(folder))
            meta[folder] = {"series": label, "sweep": f"k={k}"}
            worker[folder] = rec["heldout_sparsify_forward"][k]
    rows = measure(cache, layer, folders, args.eval_fraction, args.sink_factor)
    for r in rows:
        r.update(meta[r["folder"]])
        if r["folder"] in worker:  # sparsify's own forward in its own process: must agree
            w = r["sparsify_forward"] = worker[r["folder"]]
            if w["eval_tokens"] == r["eval_tokens"] and (abs(w["fvu"] - r["fvu"]) > 1e-4 * max(1.0, r["fvu"])
                                                        or abs(w["l0"] - r["l0"]) > 1e-3):
                print(f"  WARNING {r['folder']}: sparsify's forward gives FVU {w['fvu']:.6f} L0 {w['l0']:.3f}, "
                      f"reconstruction_metrics {r['fvu']:.6f} / {r['l0']:.3f}", flush=True)
    table, verdict = layer_report(layer, rows, speeds, args.batch_size)
    return table, verdict, rows, speeds


def lr_probe(args, cache: Path, layer: int, frontier_rows: list[dict]) -> str:
    """×m of each kind's default lr for one sweep value at `layer`; FVU compared at equal L0 with the default frontier."""
    from sae.settings import DEFAULT_LR

    base = Path(args.out) / f"L{layer}" / "lr"
    value = {"tied_sae": args.lr_probe_alpha_tied, "untied_sae": args.lr_probe_alpha_untied, "topk": args.lr_probe_k,
             "batchtopk": args.lr_probe_k}
    folders, meta = [], {}
    for kind in args.lr_probe_kinds:
        for m in args.lr_multipliers:
            lr = DEFAULT_LR[kind] * m
            paths = train_ours(args, cache, layer, kind, [value[kind]], base / f"{kind}_x{m:g}", lr=lr)
            folders += paths
            meta[str(paths[0])] = {"series": kind, "lr": lr, "mult": m}
    rows = measure(cache, layer, folders, args.eval_fraction, args.sink_factor)
    for r in frontier_rows:  # the default-lr member of the main sweep, for the ×1 line
        if r.get("series") in args.lr_probe_kinds and r["sweep"] in (f"α={value[r['series']]:g}", f"k={value[r['series']]}"):
            rows.append({**r, "lr": DEFAULT_LR[r["series"]], "mult": 1.0})
    for r in rows:
        if "mult" not in r:
            r.update(meta[r["folder"]])
    lines = [f"### Learning-rate sensitivity, layer {layer} (tied α = {args.lr_probe_alpha_tied:g}, untied α = "
             f"{args.lr_probe_alpha_untied:g}, k = {args.lr_probe_k})", "",
             "| kind | lr (× default) | held-out L0 | held-out FVU | dead % | default-lr frontier FVU at this L0 | ratio |",
             "|---|---|---:|---:|---:|---:|---:|"]
    frontier = {}
    for r in frontier_rows:
        if "fvu" in r and r.get("series") in KINDS:
            frontier.setdefault(r["series"], []).append((r["l0"], r["fvu"]))
    for r in sorted(rows, key=lambda r: (KINDS.index(r["series"]), r["mult"])):
        ref, ex = interpolate(frontier.get(r["series"], []), r["l0"])
        ratio = r["fvu"] / ref if ref else None
        lines.append(f"| {r['series']} | {r['lr']:g} (×{r['mult']:g}) | {r['l0']:.1f} | {r['fvu']:.4f} | "
                     f"{100 * r['dead_fraction']:.1f} | {_fmt(ref, ex)} | {_fmt(ratio, False, 3)} |")
    lines += ["", "ratio < 1: better than the default-lr sweep at the same L0 (L1 kinds move along L0 when lr "
              "changes, so FVU alone would mislead); TopK kinds fix L0, so their FVUs compare directly."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/frontier", help="run folder (cache, dictionaries, results)")
    parser.add_argument("--cache", default=None, help="activation cache (default <out>/frontier.h5, made if missing)")
    parser.add_argument("--cache-tokens", type=int, default=200_000, help="--max-tokens of the cache command")
    parser.add_argument("--layers", type=int, nargs="+", default=[3, 23])
    parser.add_argument("--tokens", type=int, default=None,
                        help="training tokens per model (default: one epoch of the training split)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--alphas-tied", type=float, nargs="+", default=[5e-4, 1e-3, 2e-3, 4e-3, 8e-3],
                        help="α of the tied sweep (normalised units; chosen by a probe so that L0 spans ~10..100)")
    parser.add_argument("--alphas-untied", type=float, nargs="+", default=[6e-4, 1e-3, 1.7e-3, 3e-3, 5e-3],
                        help="α of the untied sweep")
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 20, 50, 100])
    parser.add_argument("--ratio", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=256, help="our batch size")
    parser.add_argument("--eval-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--controls", action="store_true", help="also fit PCA and ICA top-k controls (baselines "
                        "pca_topk, ica_topk at the same k values) and put them in the tables")
    parser.add_argument("--sink-factor", type=float, default=20.0,
                        help="train-sae's --sink-factor, also applied to the sparsify runs' training batches")
    parser.add_argument("--reuse-layers", type=int, nargs="*", default=[],
                        help="layers whose dictionaries, if present, are measured as they are instead of retrained "
                             "(e.g. ones trained before --sink-factor existed, at a layer where it drops no token)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, ours and sparsify's")
    parser.add_argument("--reference-python", default=None,
                        help="python of an environment with eai-sparsify (e.g. /work/venv-bench/bin/python); "
                             "without it only our kinds are trained")
    parser.add_argument("--reference-batches", type=int, nargs="+", default=None,
                        help="sparsify batch sizes in tokens (default: its 32 sequences = 32 × 127, and ours)")
    parser.add_argument("--reference-lr", type=float, default=None, help="sparsify lr (default: its own rule)")
    parser.add_argument("--reference-lr-multipliers", type=float, nargs="+", default=[1.0],
                        help="also train sparsify at these multiples of its lr, at our batch size only (1: its own)")
    parser.add_argument("--reference-auxk-alpha", type=float, default=0.0, help="sparsify auxk_alpha (its default 0)")
    parser.add_argument("--reference-dead-tokens", type=int, default=10_000_000,
                        help="sparsify dead_feature_threshold (its default)")
    parser.add_argument("--lr-probe", action="store_true", help="also train ×--lr-multipliers of each kind's default "
                                                                "lr at the first layer")
    parser.add_argument("--lr-probe-kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--lr-multipliers", type=float, nargs="+", default=[0.3, 3.0])
    parser.add_argument("--lr-probe-alpha-tied", type=float, default=1e-3)
    parser.add_argument("--lr-probe-alpha-untied", type=float, default=3e-3)
    parser.add_argument("--lr-probe-k", type=int, default=20)
    parser.add_argument("--speed", action="store_true", help="also time ours and sparsify's step loops in "
                                                            "interleaved rounds (needs --reference-python)")
    parser.add_argument("--speed-steps", type=int, default=100)
    parser.add_argument("--speed-rounds", type=int, default=3)
    parser.add_argument("--speed-batches", type=int, nargs="+", default=None,
                        help="batch sizes of the speed rounds (default: ours and sparsify's default)")
    parser.add_argument("--plots", default=str(REPO / "docs" / "frontier"), help="folder of the PNGs")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    cache = ensure_cache(args)
    from sae.data import split_cache

    train, held = split_cache(cache, hook_of(args.layers[0]), args.eval_fraction, skip_first=True, sink_factor=0)
    if args.tokens is None:
        args.tokens = train.n_tokens // args.batch_size * args.batch_size
    if args.reference_batches is None:
        args.reference_batches = [SPARSIFY_DEFAULT_SEQUENCES * (CONTEXT_LENGTH - 1), args.batch_size]
    if not args.reference_python:
        args.reference_batches = []
    started = time.perf_counter()
    print(f"cache {cache}: training split {train.n_tokens:,} tokens ({train.contexts}), held-out {held.n_tokens:,} "
          f"({held.contexts}); {args.tokens:,} training tokens per model; {args.threads} torch threads", flush=True)
    reports, summary = [], {"tokens": args.tokens, "threads": args.threads, "cache": str(cache), "layers": {}}
    for layer in args.layers:
        table, verdict, rows, speeds = run_layer(args, cache, layer)
        png = Path(args.plots) / f"frontier_L{layer}.png"
        plot_layer(layer, rows, png, args.tokens)
        reports.append(table + f"\n\n![FVU vs L0, layer {layer}]({png.name})\n")
        summary["layers"][layer] = {"rows": rows, "speeds": speeds,
                                    "verdict": {m: {str(t): v for t, v in vs.items()} for m, vs in verdict.items()}}
    if args.lr_probe:  # after every frontier, so a kill during the probe loses none of them
        first = args.layers[0]
        reports.append(lr_probe(args, cache, first, summary["layers"][first]["rows"]))
    if args.speed and args.reference_python:
        args.speed_batches = args.speed_batches or args.reference_batches
        reports.append(speed_compare(args, cache, args.layers[0]))
    speed_lines = ["### Training-run speed (whole training loop, tokens/s per model)", "",
                   "| layer | series | batch | models | seconds | tokens/s per model | ours ÷ this |", "|---|---|---:|---:|---:|---:|---:|"]
    for layer, data in summary["layers"].items():
        sp = data["speeds"]
        ours_topk = sp.get("topk", {}).get("tokens_per_s_per_model")
        for name, s in sp.items():
            rel = ours_topk / s["tokens_per_s_per_model"] if ours_topk and name.startswith("sparsify") else None
            speed_lines.append(f"| {layer} | {name} | {s.get('batch_size', args.batch_size)} | {s['models']} | "
                               f"{s['seconds']:.0f} | {s['tokens_per_s_per_model']:,.0f} | {_fmt(rel, False, 2)} |")
    speed_lines += ["", f"{args.threads} torch threads; ours ÷ this compares our TopK sweep with each sparsify run "
                        "(same k values, same tokens)."]
    reports.append("\n".join(speed_lines))
    text = "\n\n".join(reports)
    print("\n" + text)
    (Path(args.out) / "frontier.md").write_text(text + "\n")
    (Path(args.out) / "frontier.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"\nwall time {time.perf_counter() - started:.0f}s; tables in {Path(args.out) / 'frontier.md'}")


if __name__ == "__main__":
    main()
