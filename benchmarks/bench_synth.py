"""Ground truth nobody here chose: our dictionaries and SAELens's on SynthSAEBench, same samples, same run.

SynthSAEBench (Chanin & Garriga-Alonso 2026, shipped in sae-lens as
`sae_lens.synthetic`) generates activations from known features under the
conditions that separate architectures on real models: Zipfian firing, a
hierarchy with mutually exclusive children, low-rank correlations,
superposition. This script builds its model from the published config
(`synth_models.py`; kept on disk and loaded when present), writes its
samples once into an activation cache with the true features recorded
(`activations.truth`), trains our kinds through `train-sae`'s code path
(`--scale cpu`; at `--scale published` the 200M samples are drawn from the
generator batch by batch instead), trains SAELens's kinds on exactly the
same batches (`synth_saelens.py`), and evaluates every SAE with
SynthSAEBench's own `eval_sae_on_synthetic_data` on one fresh draw — ours
through our SAELens export loaded by SAELens, so the metric code is theirs.

Kinds: ours default to every kind `train-sae` trains (`sae.registry.learned_kinds()`), so a kind registered
later is benchmarked by name; TopK-family kinds get k = each target L0, L1 kinds the --l1 values, any other
sweep `--sweep KIND=v1,v2` (SAELens's: `--saelens-sweep`). Targets (issue 29 item 4) are checked and printed at
equal L0 (`synth_report.py`: F1 interpolated in L0 between sweep points). Each SAE's row is kept in
OUT/rows.partial.json with the setup it was measured under, so several runs into one --out can share the
kinds out side by side, a rerun with a wider sweep trains only the new values, and `--report-only` prints the
tables of everything measured.

Run in the benchmark virtual environment (sae-lens is not a toolkit dependency):

    PYTHONPATH=. /work/bench-venv/bin/python benchmarks/bench_synth.py --scale cpu --model-dir /work/synth/cpu
    PYTHONPATH=. python benchmarks/bench_synth.py --scale published --device cuda   # a GPU; never in a test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synth_models import SCALES, Scale, load_or_build  # noqa: E402
from synth_report import check_targets, equal_l0_table, table  # noqa: E402
from synth_saelens import Replay, evaluate, load_ours, train_saelens, training_sae  # noqa: E402

HOOK = "blocks.0.hook_resid_post"  # a placeholder hook name: the cache holds one "layer", the generator's output
CONTEXT = 128  # samples per placeholder context of the cache
EVAL_FRACTION = 0.05  # held out of the cache: what our trainer's stored metrics and `evaluate` measure on
SEED = 0


def write_cache(model, scale: Scale, samples: int, path: Path) -> Path:
    """`samples` training samples plus the held-out share, drawn once, as a cache with the true features."""
    from activations.truth import sparse_rows, write_synthetic_cache

    corpus = f"SynthSAEBench {scale.name} ({scale.num_features} features, d={scale.hidden_dim}), seed {SEED}"
    n_ctx = -(-int(samples / (1 - EVAL_FRACTION)) // CONTEXT) + 1
    if path.exists():
        import h5py

        with h5py.File(path, "r") as f:
            if f.attrs.get("corpus") == corpus and int(f.attrs["n_contexts"]) >= n_ctx:  # a larger draw serves too
                print(f"using the cache {path} ({int(f.attrs['n_contexts']) * CONTEXT:,} samples)")
                return path
    torch.manual_seed(SEED)
    acts, indptrs, indices, offset = [], [np.zeros(1, np.int64)], [], 0
    started = time.perf_counter()
    for start in range(0, n_ctx, 64):
        hidden, features = model.sample_with_features(min(64, n_ctx - start) * CONTEXT)
        acts.append(hidden.float().cpu().numpy().reshape(-1, CONTEXT, scale.hidden_dim))
        ptr, idx = sparse_rows(features.cpu())
        indptrs.append(ptr[1:] + offset)
        indices.append(idx)
        offset += int(ptr[-1])
    print(f"drew {n_ctx * CONTEXT:,} samples in {time.perf_counter() - started:.0f} s")
    return write_synthetic_cache(path, np.concatenate(acts), HOOK, corpus, model.feature_dict.feature_vectors.cpu(),
                                 np.concatenate(indptrs), np.concatenate(indices))


class GeneratorSource:
    """A `sae.data.BatchSource` drawing each batch from the generator, seeded by its number (published scale)."""

    def __init__(self, generator, samples: int, device: str):
        self.generator, self.n_tokens, self.device = generator, samples, device
        self.d_in = generator.cfg.hidden_dim
        self.model_id = "synthetic"
        self.info = {"generator": "SynthSAEBench", "tokens": samples}
        self.model: dict = {}  # no model record: the data has no language model behind it

    def batches(self, batch_size: int, n_tokens: int, seed: int, start_batch: int = 0):
        for step in range(start_batch, max(1, n_tokens // batch_size)):
            with torch.random.fork_rng(devices=[] if self.device == "cpu" else [torch.device(self.device)]):
                torch.manual_seed(seed * 1_000_003 + step)
                yield self.generator.sample(batch_size).float()


def sweep_values(kind: str, args, done: set = frozenset()) -> dict:
    """The values of `kind`'s sweep this run trains: --sweep's, else the target L0s (k) or --l1; less those in
    `done` (measured by an earlier run into the same --out, whose rows are kept)."""
    from sae.registry import kind_spec

    sweep = kind_spec(kind).sweep
    if kind in args.sweep:
        values = [sweep.cast(v) for v in args.sweep[kind]]
    elif sweep.field == "ks":
        values = list(args.l0s)
    elif sweep.field == "l1s":
        values = list(args.l1)
    else:
        raise SystemExit(f"kind {kind!r} sweeps {sweep.flag}: give its values with --sweep {kind}=v1,v2")
    return {sweep.field: [v for v in values if float(v) not in done]}


def own_settings(kind: str, scale: Scale, overrides: dict | None = None):
    """Our Matryoshka nests the same prefixes as SAELens's in this run (the published experiments' widths, as
    fractions of the width), so the two differ in implementation, not in configuration; other kinds: defaults.
    `overrides` (--our-setting FIELD=VALUE) set the fields a kind's settings class has, e.g. decoder_norm."""
    from dataclasses import fields, replace

    from sae.kind_settings import MatryoshkaSettings
    from sae.registry import default_settings, settings_class

    own = default_settings(kind)
    if settings_class(kind) is MatryoshkaSettings:
        own = MatryoshkaSettings(matryoshka_prefixes=[w / scale.width for w in scale.matryoshka_widths
                                                      if w < scale.width])
    if own is None:
        return None
    names = {f.name for f in fields(own)}
    chosen = {k: v for k, v in (overrides or {}).items() if k in names}
    return replace(own, **chosen) if chosen else own


def own_fingerprint(kind: str, scale: Scale, args, samples: int) -> dict:
    """Our kind's own settings as this run trains them, its learning rate where that is not the row's base
    rate (--our-lr, or the default of a run outside the row's `lr_steps` / `lr_rise_steps`) and its schedule where
    that is not the usual warm-up 0.05 / decay 0.2: a row measured under other ones (older defaults, another
    recipe) is trained again, not reused. Rows trained at the base rate and schedule record neither, as every row
    did before the defaults followed the run's length."""
    from dataclasses import asdict

    from sae.registry import kind_spec
    from sae.settings import TrainSettings

    settings = TrainSettings(hook=HOOK, kind=kind, tokens=samples, batch_size=args.batch_size, lr=args.our_lr)
    lr, schedule = settings.learning_rate, settings.schedule
    own = own_settings(kind, scale, args.our_setting)
    return {**(asdict(own) if own is not None else {}), **({"lr": lr} if lr != kind_spec(kind).lr else {}),
            **({"lr_schedule": list(schedule)} if schedule != (0.05, 0.2) else {})}


def train_ours(kind: str, args, scale: Scale, samples: int, cache: Path | None, source, out: Path,
               values: dict) -> list[Path]:
    from sae.commands import train_sae_command
    from sae.settings import TrainSettings
    from sae.train import train_sweep

    settings = TrainSettings(hook=HOOK, kind=kind, ratios=[scale.width / scale.hidden_dim], tokens=samples,
                             batch_size=args.batch_size, eval_fraction=EVAL_FRACTION, keep_first_position=True,
                             sink_factor=0, seed=SEED, cache=str(cache or ""), out=str(out), device=args.device,
                             export="saelens", kind_settings=own_settings(kind, scale, args.our_setting),
                             lr=args.our_lr, **values)
    if cache is not None:  # exactly `train-sae`'s path: split_cache, train_sweep, export
        return train_sae_command(settings)
    from sae.export import export_saelens
    from sae.io import load

    folders = train_sweep(source, settings, out, device=args.device)
    for folder in folders:
        export_saelens(load(folder), folder / "saelens")
    return folders


def our_recovery(folder: Path, cache: Path, held_out) -> dict:
    """Our package's F1 / MCC / MMCS of one dictionary on the cache's held-out samples (a cross-check of
    `sae.ground_truth` against SynthSAEBench's code: same definitions, other samples)."""
    from sae.ground_truth import ground_truth_metrics
    from sae.io import load

    got = ground_truth_metrics([load(folder)], cache, HOOK, tuple(held_out.contexts), held_out.n_tokens,
                               skip_first=False)[0]
    return {"ours_f1": got["truth_f1"], "ours_mcc": got["truth_mcc"], "ours_mmcs": got["truth_mmcs"]}


def saelens_values(kind: str, args) -> list[float]:
    """SAELens's values for `kind`: --saelens-sweep's, else the L1 coefficients (standard) or the k / target L0s."""
    if kind in args.saelens_sweep:
        return [float(v) if kind == "standard" else int(v) for v in args.saelens_sweep[kind]]
    return list(args.saelens_l1) if kind == "standard" else list(args.saelens_l0s or args.l0s)


def setup_of(args, samples: int, eval_samples: int, lr: float | None) -> dict:
    """What a row's numbers depend on beyond its kind and value: a row measured under another setup is not reused."""
    return {"samples": samples, "batch_size": args.batch_size, "eval_samples": eval_samples, "saelens_lr": lr,
            "saelens_dead_window": args.saelens_dead_window}


def earlier_rows(out: Path, setup: dict) -> list[dict]:
    """Rows an earlier run into the same --out measured under the same setup (same cache, same evaluation draw:
    both are seeded), so a sweep can be widened without retraining what was measured."""
    path = out / "rows.partial.json"
    if not path.exists():
        return []
    rows = [r for r in json.loads(path.read_text()) if r.get("setup") == setup]
    print(f"{len(rows)} rows measured earlier under the same setup are reused ({path})")
    return rows


def _value(text: str):
    """A --our-setting value: JSON where it parses (numbers, lists, true), else the string (free)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--samples", type=int, default=None, help="training samples per SAE (default: the scale's)")
    parser.add_argument("--out", default="runs/bench_synth")
    parser.add_argument("--model-dir", default=None, help="where the synthetic model is kept (default: OUT/model)")
    parser.add_argument("--kinds", default=None, help="our kinds, comma-separated, or none "
                                                              "(default: every kind train-sae trains)")
    parser.add_argument("--saelens-kinds", default="standard,batchtopk,jumprelu,matryoshka", help="or none")
    parser.add_argument("--l0s", type=int, nargs="+", default=None, help="target L0s (default 20 25)")
    parser.add_argument("--saelens-l0s", type=int, nargs="+", default=None, help="SAELens's k / JumpReLU target "
                                                                                  "L0s (default: --l0s)")
    parser.add_argument("--l1", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3], help="our L1 kinds' alphas")
    parser.add_argument("--saelens-l1", type=float, nargs="+", default=[2.0, 5.0, 10.0], help="SAELens Standard's L1")
    parser.add_argument("--sweep", action="append", default=[], help="KIND=v1,v2: another kind's sweep values")
    parser.add_argument("--saelens-sweep", action="append", default=[], help="KIND=v1,v2: one SAELens kind's "
                                                                             "values (L1 coefficient, k or target L0)")
    parser.add_argument("--batch-size", type=int, default=None, help="both libraries (default: the scale's)")
    parser.add_argument("--saelens-lr", type=float, default=None, help="default: the scale's")
    parser.add_argument("--our-lr", type=float, default=None, help="our kinds' learning rate (default: each kind's)")
    parser.add_argument("--our-setting", action="append", default=[], metavar="FIELD=VALUE",
                        help="a field of our kinds' own settings, for the kinds that have it (e.g. decoder_norm=free)")
    parser.add_argument("--saelens-dead-window", type=int, default=None,
                        help="steps without firing after which SAELens calls a latent dead (its aux loss acts on it); "
                             "default: the scale's (published: SyntheticSAERunner's 1,000; cpu: 781 = our "
                             "--dead-tokens 100,000 / batch 128)")
    parser.add_argument("--eval-samples", type=int, default=None)
    parser.add_argument("--stream", action="store_true", help="draw every batch from the generator instead of "
                                                              "writing a cache (the published scale always does)")
    parser.add_argument("--report-only", action="store_true", help="train nothing: the tables and verdicts of every "
                                                                     "row measured into --out under these settings")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from dataclasses import fields

    from sae.registry import learned_kinds, settings_class

    scale = SCALES[args.scale]
    args.sweep = {k: v.split(",") for k, v in (s.split("=", 1) for s in args.sweep)}
    args.saelens_sweep = {k: v.split(",") for k, v in (s.split("=", 1) for s in args.saelens_sweep)}
    args.our_setting = {k: _value(v) for k, v in (s.split("=", 1) for s in args.our_setting)}
    args.l0s = args.l0s or list(scale.l0s)
    args.batch_size = args.batch_size or scale.batch_size
    args.saelens_dead_window = args.saelens_dead_window or scale.saelens_dead_window
    samples = args.samples or scale.samples
    eval_samples = args.eval_samples or scale.eval_samples
    kinds = [k for k in args.kinds.split(",") if k != "none"] if args.kinds else list(learned_kinds())
    saelens_kinds = [k for k in args.saelens_kinds.split(",") if k != "none"]
    unused = set(args.our_setting) - {f.name for k in kinds if settings_class(k) is not None
                                      for f in fields(settings_class(k))}
    if unused:
        raise SystemExit(f"--our-setting {', '.join(sorted(unused))}: no kind of --kinds has such a setting")
    torch.set_num_threads(args.threads)
    out = Path(args.out) / scale.name
    out.mkdir(parents=True, exist_ok=True)
    args.saelens_lr = args.saelens_lr or scale.saelens_lr
    setup = setup_of(args, samples, eval_samples, args.saelens_lr)
    if args.report_only:  # every row measured into this --out under this setup (e.g. by runs side by side)
        finish(earlier_rows(out, setup), args, scale.name, samples, eval_samples, {}, 0.0, out)
        return
    started = time.perf_counter()
    model = load_or_build(scale, Path(args.model_dir) if args.model_dir else out / "model", args.device)
    print(f"synthetic model ({scale.num_features} features, d={scale.hidden_dim}) ready in "
          f"{time.perf_counter() - started:.0f} s; SAE width {scale.width}, {samples:,} training samples per SAE, "
          f"batch {args.batch_size}")
    cache, source = None, None
    if scale.write_cache and not args.stream:
        from sae.data import split_cache

        cache = write_cache(model, scale, samples, out / "synth.h5")
        source, held_out = split_cache(cache, HOOK, EVAL_FRACTION, skip_first=False, sink_factor=0)
    else:
        source = GeneratorSource(model, samples, args.device)

    t = time.perf_counter()
    replay = Replay(model.activation_generator, eval_samples, args.batch_size)
    print(f"drew the {eval_samples:,} evaluation samples in {time.perf_counter() - t:.0f} s", flush=True)
    kept, rows, timing = earlier_rows(out, setup), [], {}
    for kind in kinds:
        from sae.registry import kind_spec

        t = time.perf_counter()
        sweep = kind_spec(kind).sweep
        wanted = sweep_values(kind, args)
        own = own_fingerprint(kind, scale, args, samples)
        rows += [r for r in kept if r["library"] == "dictlens" and r["kind"] == kind and r.get("own") == own
                 and r["value"] in map(float, wanted[sweep.field])]
        values = sweep_values(kind, args, {r["value"] for r in rows if r["kind"] == kind})
        if not values[sweep.field]:
            continue
        for folder in train_ours(kind, args, scale, samples, cache, source, out / "ours" / kind, values):
            config = json.loads((folder / "config.json").read_text())
            row = {"name": folder.name, "kind": kind, "library": "dictlens", "value": float(config[sweep.key]),
                   "setup": setup, "own": own, "folder": str(folder), **evaluate(load_ours(folder), model, replay, args.batch_size)}
            if cache is not None:  # our own F1 / MCC (sae.ground_truth, what `evaluate` shows) on the held-out part
                row.update(our_recovery(folder, cache, held_out))
            rows.append(row)
            progress(row, rows, out)
        timing[f"dictlens {kind}"] = time.perf_counter() - t
        print(f"{kind}: trained and evaluated in {timing[f'dictlens {kind}']:.0f} s", flush=True)
    for kind in saelens_kinds:
        t = time.perf_counter()
        for value in saelens_values(kind, args):
            same = [r for r in kept if r["library"] == "SAELens" and r["kind"] == kind and r["value"] == value]
            if same:
                rows.append(same[0])
                continue
            sae = training_sae(kind, value, scale.hidden_dim, scale.width, scale.matryoshka_widths)
            sae = train_saelens(sae, source.batches(args.batch_size, samples + 4 * args.batch_size, SEED), samples,
                                args.batch_size, args.saelens_lr, args.device,
                                dead_window=args.saelens_dead_window)
            rows.append({"name": f"saelens_{kind}_{value:g}", "kind": kind, "library": "SAELens", "value": value,
                         "setup": setup, **evaluate(sae, model, replay, args.batch_size)})
            progress(rows[-1], rows, out)
        timing[f"SAELens {kind}"] = time.perf_counter() - t
        print(f"SAELens {kind}: trained and evaluated in {timing[f'SAELens {kind}']:.0f} s", flush=True)
    finish(rows, args, scale.name, samples, eval_samples, timing, time.perf_counter() - started, out)


def finish(rows: list[dict], args, scale: str, samples: int, eval_samples: int, timing: dict, seconds: float,
           out: Path) -> None:
    """The tables, the item-4 verdicts, and results.json."""
    print()
    print(table(rows))
    print()
    equal, cells = equal_l0_table(rows, args.l0s)
    print(f"F1 at equal L0 (linear in L0 between the nearest sweep points on either side of the target):\n{equal}")
    verdicts = check_targets(cells, args.l0s)
    for line in verdicts:
        print(line)
    record = {"scale": scale, "samples": samples, "eval_samples": eval_samples, "batch_size": args.batch_size,
              "saelens_lr": args.saelens_lr, "rows": rows, "verdicts": verdicts,
              "equal_l0": [{k: v for k, v in c.items() if k not in ("members", "nearest")} for c in cells],
              "seconds": timing, "total_seconds": seconds}
    (out / "results.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {out / 'results.json'}")


def progress(row: dict, rows: list[dict], out: Path) -> None:
    """Each SAE's numbers as soon as they exist (a long run cut short keeps what it measured; a rerun reuses them)."""
    print(f"{row['library']} {row['name']}: L0 {row['l0']:.1f} F1 {row['f1']:.3f} MCC {row['mcc']:.3f} "
          f"uniqueness {row['uniqueness']:.3f} EV {row['explained_variance']:.3f} dead {row['dead']}", flush=True)
    path = out / "rows.partial.json"
    earlier = json.loads(path.read_text()) if path.exists() else []
    key = (lambda r: (r["library"], r["kind"], r.get("value"), json.dumps(r.get("setup"), sort_keys=True)))
    merged = {key(r): r for r in earlier + rows}
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(list(merged.values()), indent=1))
    partial.replace(path)  # two runs into one --out (ours and SAELens's side by side) never read a half-written file


if __name__ == "__main__":
    main()
