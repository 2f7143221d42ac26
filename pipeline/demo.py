"""`cli.py demo`: the whole pipeline, corpus to dashboard, offline, in one resumable command.

Stages (folder layout in `report.layout`), each called through the settings
dataclass its subcommand is built from: cache the training set and the
fragment set → train a tied SAE α-sweep (one pass) → fit the neuron / PCA /
ICA / random baselines → evaluate every dictionary (FVU, L0, dead, KL/ΔCE)
→ explain features of the SAE whose L0 is nearest `target_l0` and of every
baseline with the `tokens` scorers, and a few with an LLM → compare bases →
IOI patching with that SAE and PCA → the report.

Resuming: cache, train-sae, baselines, explain and patch-ioi (per finished
dictionary) resume by themselves (a killed run continues where it stopped).
Evaluate and compare do not, so every stage writes `RUN/stages/<stage>.json` (with its wall time)
only after its outputs are complete, and a rerun skips every stage that has
its marker. The settings are written to `RUN/demo_settings.json` first; a
rerun with other settings is refused before anything is touched, because
the stages' outputs would no longer belong together.

`cli.py demo` is `demo_command(DemoSettings)`; Python callers may use
`run_demo(settings, out)`.

The defaults are sized to finish in about 15 minutes on 2 CPU cores; they
are a demonstration, not the papers' experiments (see docs/RESULTS.md).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

from common.errors import UserError
from activations.devices import check_device
from common.locks import LOCK_NAME
from common.runstate import claim_output, read_json, write_json_atomic, write_text_atomic
from pipeline.settings import RUNTIME_FIELDS, DemoSettings
from report.layout import (COMPARE_JSON, COMPARE_PNG, DICTS_DIR, EXPLANATIONS_DIR, FRAGMENT_CACHE, IOI_DIR,
                           REPORT_DIR, SETTINGS_FILE, STAGES_DIR, TRAIN_CACHE)


class DemoError(UserError):
    """The run folder belongs to another demo, or a stage left nothing to continue with."""


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())


def _check_foreign(run: Path) -> None:
    """Refuse a folder that is not a demo's before anything in it is touched (the settings are `claim_output`'s)."""
    if not (run / SETTINGS_FILE).exists() and run.is_dir() and any(p.name != LOCK_NAME for p in run.iterdir()):
        raise DemoError(f"{run} is not empty and holds no {SETTINGS_FILE}: it is not a demo run; "
                        "pass an empty or new folder with --out")


class Stages:
    """Runs named stages once each; a stage's marker (written last) makes a rerun skip it."""

    def __init__(self, run: Path, total: int):
        self.folder = run / STAGES_DIR
        self.total = total
        self.count = 0

    def marker(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def run(self, name: str, what: str, fn: Callable[[], Any], resumes: bool, always: bool = False) -> dict:
        self.count += 1
        marker = self.marker(name)
        if marker.exists() and not always:
            done = read_json(marker, "a stage marker", f"delete {marker} to rerun that stage")
            print(f"[{self.count}/{self.total}] {what}: done earlier ({done.get('seconds', 0):.0f}s); skipping")
            return done
        note = "resumed" if resumes and marker.with_suffix(".started").exists() else ""
        print(f"[{self.count}/{self.total}] {what}{' (resuming)' if note else ''}", flush=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(marker.with_suffix(".started"), _now() + "\n")
        started = time.perf_counter()
        fn()
        done = {"stage": name, "what": what, "seconds": round(time.perf_counter() - started, 2),
                "finished_at": _now(), "note": note}
        write_json_atomic(marker, done)
        marker.with_suffix(".started").unlink(missing_ok=True)
        return done


def _sae_folders(dicts: Path, settings: DemoSettings) -> list[Path]:
    from sae.train import dictionary_name

    return [dicts / dictionary_name(True, settings.ratio, a) for a in settings.l1s]


def choose_sae(folders: list[Path], target_l0: float) -> Path:
    """The SAE whose evaluated mean L0 is nearest `target_l0` on a log scale (the papers pick L0 ≈ 20)."""
    best, best_gap = None, math.inf
    for folder in folders:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        l0 = (config.get("metrics") or {}).get("l0")
        if not isinstance(l0, (int, float)) or l0 <= 0:
            continue
        gap = abs(math.log(l0) - math.log(target_l0))
        if gap < best_gap:
            best, best_gap = folder, gap
    if best is None:
        raise DemoError(f"no SAE in {folders[0].parent} has a positive mean L0 (every feature is dead): "
                        "lower the l1 values in the demo settings")
    return best


def _llm_feature_ids(tokens_run: Path, dictionary: Path, count: int) -> list[int]:
    """The first `count` features (by id) that the tokens run explained: skipped features waste an LLM's time."""
    from explain.records_file import RESULTS_FILE, read_records

    ok = sorted(int(r["feature"]) for r in read_records(tokens_run / RESULTS_FILE)
                if r.get("status") == "ok" and Path(r.get("dictionary_path", "")) == dictionary.resolve())
    return ok[:count]


def demo_command(settings: DemoSettings) -> Path:
    """`cli.py demo`: run (or resume) every stage into `settings.out`; returns the report's index.html."""
    return run_demo(settings)


def run_demo(settings: DemoSettings, out: str | Path | None = None) -> Path:
    """Run (or resume) every stage into `out` (default `settings.out`); returns the report's index.html."""
    settings.validate()
    check_device(settings.device)
    run = Path(settings.out if out is None else out)
    with claim_output(run, None, None, record=SETTINGS_FILE, ignore=RUNTIME_FIELDS, what="demo",
                      error=DemoError) as claim:  # one demo per run folder at a time
        _check_foreign(run)
        claim.compare(settings.to_json()).write_record()
        return _run_demo_locked(settings, run)


def _run_demo_locked(settings: DemoSettings, run: Path) -> Path:
    s, dicts = settings, run / DICTS_DIR
    stages = Stages(run, total=9 + int(s.use_llm))
    wall = time.perf_counter()
    _caches(stages, s, run)
    saes, baselines = _dictionaries(stages, s, run / TRAIN_CACHE, dicts)
    chosen = choose_sae(saes, s.target_l0)
    print(f"explaining and patching {chosen.name} (mean L0 nearest {s.target_l0:g})")
    _explanations(stages, s, run, chosen, baselines)
    _patch_ioi(stages, s, run, [chosen] + [p for p in baselines if p.name == "pca"])
    index: list[Path] = []
    stages.run("10_report", "write the report", lambda: index.append(_report(run)), resumes=False, always=True)
    print(f"demo finished in {(time.perf_counter() - wall) / 60:.1f} min (this invocation)")
    return index[0]


def _caches(stages: Stages, s: DemoSettings, run: Path) -> None:
    from activations.cache_writer import write_cache
    from activations.settings import CacheSettings

    common = dict(model=s.model, corpus=s.corpus, hooks=[s.hook], batch_size=s.cache_batch_size, dtype=s.dtype,
                  device=s.device)
    train = CacheSettings(context_length=s.context_length, max_tokens=s.train_cache_tokens,
                          out=str(run / TRAIN_CACHE), **common)
    frags = CacheSettings(context_length=s.fragment_length, max_tokens=s.fragments * s.fragment_length,
                          fragments=True, out=str(run / FRAGMENT_CACHE), **common)
    stages.run("01_cache_train", f"cache {s.train_cache_tokens} training tokens at {s.hook}",
               lambda: write_cache(train, progress=s.progress), resumes=True)
    stages.run("02_cache_fragments", f"cache {s.fragments} fragments of {s.fragment_length} tokens",
               lambda: write_cache(frags, progress=s.progress), resumes=True)


def _dictionaries(stages: Stages, s: DemoSettings, train_cache: Path, dicts: Path) -> tuple[list[Path], list[Path]]:
    """Train the SAE sweep, fit the baselines, evaluate them all; returns (SAE folders, baseline folders)."""
    from sae.commands import baselines_command, evaluate_command, train_sae_command
    from sae.settings import BaselinesSettings, EvaluateSettings, TrainSettings

    saes = _sae_folders(dicts, s)
    baselines = [dicts / k for k in s.baselines]
    stages.run("03_train_sae", f"train {len(s.l1s)} tied SAEs (R={s.ratio:g}) in one pass", lambda: train_sae_command(TrainSettings(
        cache=str(train_cache), hook=s.hook, ratios=[s.ratio], l1s=list(s.l1s), batch_size=s.sae_batch_size, lr=s.lr,
        tokens=s.sae_tokens, seed=s.seed, device=s.device, out=str(dicts))), resumes=True)
    stages.run("04_baselines", f"fit baselines {','.join(s.baselines)}", lambda: baselines_command(BaselinesSettings(
        cache=str(train_cache), hook=s.hook, kinds=list(s.baselines), tokens=s.baseline_tokens, seed=s.seed,
        out=str(dicts), ica_samples=s.ica_samples)), resumes=True)
    stages.run("05_evaluate", "evaluate every dictionary", lambda: evaluate_command(EvaluateSettings(
        cache=str(train_cache), dicts=[str(p) for p in saes + baselines], tokens=s.eval_tokens, model=s.model,
        no_model=s.ce_contexts < 1, ce_contexts=max(1, s.ce_contexts))), resumes=False)
    return saes, baselines


def _explanations(stages: Stages, s: DemoSettings, run: Path, chosen: Path, baselines: list[Path]) -> None:
    """Explain every basis with the `tokens` scorer, a few features with the LLM, then compare the bases."""
    from explain.commands import compare_command, explain_command
    from explain.settings import CompareSettings, ExplainSettings

    frag_cache = str(run / FRAGMENT_CACHE)
    tokens_run = run / EXPLANATIONS_DIR / "tokens"
    stages.run("06_explain_tokens", f"explain {s.features} features per basis (tokens scorer)", lambda: explain_command(
        ExplainSettings(cache=frag_cache, dicts=[str(p) for p in [chosen] + baselines], features=s.features,
                        explainer="tokens", simulator="tokens", seed=s.seed, out=str(tokens_run))), resumes=True)
    runs = [tokens_run]
    if s.use_llm:
        targets = [p for p in [chosen] + baselines if _kind(p) in s.llm_kinds]
        llm_runs = [run / EXPLANATIONS_DIR / f"llm-{p.name}" for p in targets]
        runs += llm_runs

        def explain_llm() -> None:
            for folder, out_dir in zip(targets, llm_runs):
                ids = _llm_feature_ids(tokens_run, folder, s.llm_features)
                if not ids:
                    print(f"{folder.name}: no explainable feature in the tokens run; no LLM explanation")
                    continue
                explain_command(ExplainSettings(cache=frag_cache, dicts=[str(folder)], feature_ids=ids,
                                                explainer=s.llm, simulator=s.llm, base_url=s.base_url, seed=s.seed,
                                                out=str(out_dir)))

        stages.run("07_explain_llm", f"explain {s.llm_features} features of {', '.join(s.llm_kinds)} with {s.llm}",
                   explain_llm, resumes=True)
    stages.run("08_compare", "compare bases", lambda: compare_command(CompareSettings(
        explanations=[str(r) for r in runs if (r / "explanations.jsonl").exists()], plot=str(run / COMPARE_PNG),
        json_path=str(run / COMPARE_JSON))), resumes=False)


def _patch_ioi(stages: Stages, s: DemoSettings, run: Path, ioi_dicts: list[Path]) -> None:
    from causal.commands import has_settings_record, patch_ioi_command
    from causal.settings import PatchIOISettings

    out = run / IOI_DIR
    out.mkdir(exist_ok=True)

    def patch() -> None:
        # a folder without a settings record (an older demo) is replaced; one with a record resumes or is refused
        patch_ioi_command(PatchIOISettings(
            model=s.model, dicts=[str(p) for p in ioi_dicts], n_prompts=s.ioi_prompts, seed=s.seed, out=str(out),
            plot=str(out / "ioi.png"), device=s.device, candidates=s.ioi_candidates, names=s.ioi_names,
            overwrite=not has_settings_record(out)))

    stages.run("09_patch_ioi", f"IOI patching with {', '.join(p.name for p in ioi_dicts)}", patch, resumes=True)


def _report(run: Path) -> Path:
    """The dashboard, as `cli.py report --run RUN` writes it (it prints where)."""
    from report.commands import report_command
    from report.settings import ReportSettings

    return report_command(ReportSettings(run=str(run), out=str(run / REPORT_DIR)))


def _kind(folder: Path) -> str:
    return str(json.loads((folder / "config.json").read_text(encoding="utf-8")).get("kind"))
