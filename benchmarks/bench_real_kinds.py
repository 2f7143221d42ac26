"""The new kinds on real activations (issue 29 item 5): held-out FVU and spliced KL at L0 ≈ 20 and ≈ 50.

One activation cache of the default model (SmolLM2-135M-Instruct, layer 3's
residual stream by default), one run, the same training tokens for every SAE:

- ours, through `train-sae`'s code path (`bench_frontier.train_ours` →
  `sae.commands.train_sae_command`, so a rerun reuses finished dictionaries):
  topk, batchtopk and matryoshka_batchtopk at k = each target L0, and
  jumprelu over an L0-coefficient sweep (JumpReLU's L0 is not set directly:
  the table interpolates FVU and KL at the target L0s between its points), once
  per `--jumprelu-starts` value of the threshold start (the default's 0.3 and
  others, to look into its dead latents);
- ours, the L1 kinds (untied_sae, tied_sae) over an α sweep (`--l1s`; their
  L0 is not set directly either);
- SAELens's Matryoshka BatchTopK (k = each target, its auxiliary loss on the
  prefixes, the same nested widths as ours), JumpReLU (its quadratic penalty
  towards a target L0, as SynthSAEBench's experiments train it) and Standard
  L1 SAE (over `--saelens-l1s`, its L1 coefficient on its summed squared
  error; its default is 1 and its default rate 3e-4: pass `--saelens-lrs`), built by
  `synth_saelens.training_sae` and trained by SAELens's own `SAETrainer` on
  exactly the batches our trainer reads (same cache split, batch size, seed),
  normalised as ours are (x·√d / E‖x‖ with our estimate of E‖x‖, folded into
  the weights at the end as SAELens folds its own), saved with
  `save_inference_model`.

Everything is then measured by the same code, `sae.evaluate.evaluate_dictionaries`
(what `cli.py evaluate` runs; SAELens's saves open through our SAELens
loader): held-out FVU, L0 and dead share on the last `--eval-fraction` of the
cache's contexts, and KL / ΔCE with each reconstruction spliced into the model
on `--ce-contexts` of those held-out contexts.

Run in the benchmark virtual environment (sae-lens is not a toolkit dependency):

    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 5 /work/bench-venv/bin/python benchmarks/bench_real_kinds.py \
        --out runs/real_kinds

`--train-only` with `--kinds` / `--saelens-kinds` trains a part and stops, so parts can train in separate
processes; the same command without it then keeps every finished SAE and measures them all together.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_frontier import train_ours  # noqa: E402
from frontier_tables import _fmt, hook_of, interpolate  # noqa: E402
from synth_saelens import train_saelens, training_sae  # noqa: E402

TOPK_FAMILY = ("topk", "batchtopk", "matryoshka_batchtopk")
SAELENS = {"matryoshka": "SAELens matryoshka", "jumprelu": "SAELens jumprelu", "standard": "SAELens standard"}
L1_KINDS = ("untied_sae", "tied_sae")


def saelens_folder(args, source, scale: float, kind: str, target: int, lr: float, widths: list[int], out: Path,
                   model_id: str) -> Path:
    """Train one SAELens SAE on our training batches and save it for `sae.load` (kept if already saved)."""
    if (out / "cfg.json").exists():
        return out
    sae = training_sae(kind, target, source.d_in, widths[-1], tuple(widths[:-1]))
    sae = train_saelens(sae, source.batches(args.batch_size, args.tokens + 4 * args.batch_size, args.seed),
                        args.tokens, args.batch_size, lr, "cpu", scaling_factor=scale)
    sae.cfg.metadata.hook_name = hook_of(args.layer)
    sae.cfg.metadata.model_name = model_id
    sae.save_inference_model(str(out))
    return out


def table(rows: list[dict], targets: list[int]) -> str:
    lines = ["| library | kind | setting | lr | held-out L0 | held-out FVU | dead % | twin % of L0 | KL | ΔCE |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        twins = r.get("twin_l0_share")
        lines.append(f"| {r['library']} | {r['kind']} | {r['setting']} | {r['lr']:g} | {r['l0']:.1f} | "
                     f"{r['fvu']:.4f} | {100 * r['dead_fraction']:.1f} | "
                     f"{'–' if twins is None else f'{100 * twins:.1f}'} | {_fmt(r.get('kl'))} | "
                     f"{_fmt(r.get('ce_increase'))} |")
    series: dict[str, list[dict]] = {}
    for r in rows:
        series.setdefault(r["series"], []).append(r)
    head = " | ".join(f"FVU @ {t} | KL @ {t}" for t in targets)
    lines += ["", f"| series | {head} |", "|---" + "|---:" * (2 * len(targets)) + "|"]
    for name, members in series.items():
        cells = []
        for t in targets:
            for metric in ("fvu", "kl"):
                cells.append(_fmt(*interpolate([(m["l0"], m[metric]) for m in members if m.get(metric) is not None],
                                               t)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "At each target L0, FVU and KL are log-log interpolated between a series' points (~: extrapolated up "
                  "to 5 % beyond its L0 range; –: outside it)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="/work/demo-run/cache_train.h5")
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--out", default="runs/real_kinds")
    parser.add_argument("--tokens", type=int, default=131_072,
                        help="training tokens per SAE (512 steps of 256: just under one pass over the default "
                             "cache's training split)")
    parser.add_argument("--targets", type=int, nargs="+", default=[20, 50], help="target L0s (k of the TopK family, "
                                                                                 "SAELens JumpReLU's target_l0)")
    parser.add_argument("--l0-coefficients", nargs="+", default=["0.1,0.3,1,3"],
                        help="our JumpReLU's L0 coefficients: comma-separated groups, each group one train-sae sweep "
                             "(a group added later trains alone; the finished ones are kept)")
    parser.add_argument("--jumprelu-starts", type=float, nargs="+", default=[0.3],
                        help="our JumpReLU's threshold starts (--jumprelu-init-threshold), one sweep each")
    parser.add_argument("--kinds", nargs="*", default=list(TOPK_FAMILY) + ["jumprelu"])
    parser.add_argument("--l1s", default="0.001,0.0033,0.01,0.027",
                        help="α sweep of our L1 kinds in --kinds (train-sae's default at d = 576)")
    parser.add_argument("--saelens-kinds", nargs="*", default=["matryoshka", "jumprelu"], choices=list(SAELENS))
    parser.add_argument("--saelens-l1s", type=float, nargs="+", default=[1.0, 2.0, 5.0],
                        help="L1 coefficients of SAELens's standard SAE (its default 1; on its summed squared error, "
                             "so λ = α·d against our α)")
    parser.add_argument("--saelens-lrs", type=float, nargs="+", default=[1e-3],
                        help="SAELens's learning rates, one SAE per lr and target (1e-3, not its language-model "
                             "runner's 3e-4: a 512-step run; bench_synth's CPU scale uses 1e-3 too)")
    parser.add_argument("--ratio", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--eval-fraction", type=float, default=0.1)
    parser.add_argument("--sink-factor", type=float, default=20.0)
    parser.add_argument("--ce-contexts", type=int, default=16, help="held-out contexts of the KL / ΔCE splice")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a loaded machine more threads oversubscribe the cores; SAELens "
                             "steps ran ~9x slower with 2 at load 12)")
    parser.add_argument("--train-only", action="store_true", help="train (or keep) the SAEs and stop: a later run "
                                                                  "with the same --out measures them all together")
    args = parser.parse_args()

    import torch

    from activations.reader import ActivationCache
    from sae.data import split_cache
    from sae.evaluate import evaluate_dictionaries
    from sae.io import read_config
    from sae.kind_settings import JumpReLUSettings, MatryoshkaSettings
    from sae.kinds.stack import n_features_for
    from sae.settings import TrainSettings
    from sae.train import input_stats

    torch.set_num_threads(args.threads)
    cache, out = Path(args.cache), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    hook = hook_of(args.layer)
    source, held = split_cache(cache, hook, args.eval_fraction, skip_first=True, sink_factor=args.sink_factor)
    with ActivationCache(cache) as c:
        model_id = c.model_id
    width = n_features_for(args.ratio, source.d_in)
    print(f"cache {cache} ({model_id}, {hook}): training split {source.n_tokens:,} tokens, held-out {held.n_tokens:,};"
          f" {args.tokens:,} training tokens per SAE, width {width} (R = {args.ratio:g}), batch {args.batch_size}",
          flush=True)
    folders, meta, seconds = [], {}, {}
    for kind in args.kinds:
        starts = args.jumprelu_starts if kind == "jumprelu" else [None]
        groups = ([[float(v) for v in g.split(",")] for g in args.l0_coefficients] if kind == "jumprelu"
                  else [[float(v) for v in args.l1s.split(",")]] if kind in L1_KINDS else [args.targets])
        for start, (i, values) in [(s, g) for s in starts for g in enumerate(groups)]:
            own = JumpReLUSettings(jumprelu_init_threshold=start) if start is not None else None
            name = kind if start is None else f"jumprelu θ0={start:g}"
            folder = out / "ours" / (name.replace(" θ0=", "_t") + (f"_{i + 1}" if i else ""))
            t = time.perf_counter()
            paths = train_ours(args, cache, args.layer, kind, values, folder, own=own)
            seconds[folder.name] = time.perf_counter() - t
            for p in paths:
                c = read_config(p)
                setting = (f"λ={c['l0_coefficient']:g}" if kind == "jumprelu" else f"α={c['l1']:g}"
                           if kind in L1_KINDS else f"k={c['k']}")
                folders.append(str(p))
                meta[str(p)] = {"library": "dictlens", "kind": kind, "series": name, "setting": setting,
                                "lr": c["training"]["lr"]}
    widths = MatryoshkaSettings().widths(width)
    stats = input_stats(source, TrainSettings(hook=hook, kind="topk", seed=args.seed))
    for kind in args.saelens_kinds:
        for lr in args.saelens_lrs:
            t = time.perf_counter()
            for target in (args.saelens_l1s if kind == "standard" else args.targets):
                label = "l1" if kind == "standard" else "l0"
                folder = saelens_folder(args, source, stats.scale, kind, target, lr, widths,
                                        out / "saelens" / f"{kind}_{label}_{target:g}_lr{lr:g}", model_id)
                folders.append(str(folder))
                meta[str(folder)] = {"library": "SAELens", "kind": kind, "setting": f"target L0 {target}"
                                     if kind == "jumprelu" else f"λ={target:g}" if kind == "standard"
                                     else f"k={target}", "lr": lr,
                                     "series": SAELENS[kind] + (f" lr {lr:g}" if len(args.saelens_lrs) > 1 else "")}
            seconds[f"SAELens {kind} lr {lr:g}"] = time.perf_counter() - t
            print(f"SAELens {kind} lr {lr:g}: {seconds[f'SAELens {kind} lr {lr:g}']:.0f} s", flush=True)
    if args.train_only:
        print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
        return
    t = time.perf_counter()
    measured = evaluate_dictionaries(cache, folders, tokens=held.n_tokens, ce_contexts=args.ce_contexts,
                                     eval_fraction=args.eval_fraction, sink_factor=args.sink_factor, progress=False)
    seconds["evaluate"] = time.perf_counter() - t
    rows = [{**meta[f], **{k: m.get(k) for k in ("fvu", "l0", "dead_fraction", "twin_l0_share", "twin_fraction",
                                                 "kl", "ce_increase", "eval_tokens",
                                                 "ce_contexts", "kl_recovered", "ce_loss_recovered")}, "folder": f}
            for f, m in zip(folders, measured)]
    text = table(rows, args.targets)
    print("\n" + text)
    print("\nseconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    (out / "real_kinds.md").write_text(text + "\n")
    (out / "real_kinds.json").write_text(json.dumps({"args": vars(args), "width": width, "input_scale": stats.scale,
                                                     "rows": rows, "seconds": seconds,
                                                     "total_seconds": time.perf_counter() - started}, indent=1))
    print(f"wall time {time.perf_counter() - started:.0f} s; tables in {out / 'real_kinds.md'}")


if __name__ == "__main__":
    main()
