"""`cli.py demo`: the whole pipeline, corpus to dashboard, offline, in one resumable command.

Stages (folder layout in `report.layout`): cache the training set and the
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

The defaults are sized to finish in about 15 minutes on 2 CPU cores; they
are a demonstration, not the papers' experiments (see docs/RESULTS.md).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from activations.errors import UserError
from report.layout import (COMPARE_JSON, COMPARE_PNG, DICTS_DIR, EXPLANATIONS_DIR, FRAGMENT_CACHE, IOI_DIR,
                           REPORT_DIR, SETTINGS_FILE, STAGES_DIR, TRAIN_CACHE)

# Settings that only decide where or how fast things run; a rerun may change them.
RUNTIME_FIELDS = ("device", "progress")


@dataclass
class DemoSettings:
    """Everything the demo decides; written to RUN/demo_settings.json."""

    model: str = "default"
    corpus: str = "default"
    layer: int = 3
    site: str = "hook_resid_post"
    # activation caches
    context_length: int = 128
    train_cache_tokens: int = 150_000
    fragment_length: int = 64
    fragments: int = 2_500  # documents in the explanation set (one fragment each)
    cache_batch_size: int = 32
    dtype: str = "float16"
    # dictionaries
    ratio: float = 2.0
    l1s: list[float] = field(default_factory=lambda: [1e-4, 4e-4, 1.6e-3, 6.4e-3])
    sae_tokens: int = 300_000  # two epochs over the training cache
    sae_batch_size: int = 256
    lr: float = 1e-3
    baselines: list[str] = field(default_factory=lambda: ["neuron", "pca", "ica", "random"])
    baseline_tokens: int = 150_000
    ica_samples: int = 8_192  # FastICA's time grows with its sample; 8k tokens = 14x the width of 576
    eval_tokens: int = 100_000
    ce_contexts: int = 16  # contexts for KL/ΔCE with the reconstruction spliced in (0: skip)
    # explanations
    target_l0: float = 20.0  # the SAE explained and patched is the one whose L0 is nearest this
    features: int = 30  # per basis, `tokens` explainer and simulator
    llm: str = "local:default"  # explainer and simulator for the few LLM-scored features ("none": skip)
    llm_features: int = 3
    llm_kinds: list[str] = field(default_factory=lambda: ["tied_sae"])
    base_url: str | None = None
    # IOI patching
    ioi_prompts: int = 16
    ioi_candidates: int | None = 32  # greedy over the K features with the largest attribution (None: all)
    ioi_names: list[str] | None = None
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    @property
    def hook(self) -> str:
        return f"blocks.{self.layer}.{self.site}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "hook": self.hook}

    def validate(self) -> None:
        if self.features < 1 or self.llm_features < 0 or self.ioi_prompts < 1:
            raise UserError("features and ioi_prompts must be at least 1 and llm_features at least 0")
        if self.fragments < 1 or self.train_cache_tokens < self.context_length:
            raise UserError(f"train_cache_tokens must hold at least one context of {self.context_length} tokens "
                            "and fragments must be at least 1")


class DemoError(UserError):
    """The run folder belongs to another demo, or a stage left nothing to continue with."""


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_settings(run: Path, settings: DemoSettings) -> None:
    path = run / SETTINGS_FILE
    if run.exists() and not run.is_dir():
        raise DemoError(f"--out {str(run)!r} is a file: pass a folder for the run")
    if not path.exists():
        if run.is_dir() and any(run.iterdir()):
            raise DemoError(f"{run} is not empty and holds no {SETTINGS_FILE}: it is not a demo run; "
                            "pass an empty or new folder with --out")
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DemoError(f"{path} is not valid JSON: delete {run} or pass another --out") from err
    new = settings.to_json()
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
             if k not in RUNTIME_FIELDS and old.get(k) != new.get(k)]
    if diffs:
        raise DemoError(f"{run} holds a demo with other settings ({'; '.join(diffs[:3])}): rerun with the same "
                        "settings to resume, or pass another --out")


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
            done = json.loads(marker.read_text(encoding="utf-8"))
            print(f"[{self.count}/{self.total}] {what}: done earlier ({done.get('seconds', 0):.0f}s); skipping")
            return done
        note = "resumed" if resumes and marker.with_suffix(".started").exists() else ""
        print(f"[{self.count}/{self.total}] {what}{' (resuming)' if note else ''}", flush=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        marker.with_suffix(".started").write_text(_now() + "\n", encoding="utf-8")
        started = time.perf_counter()
        fn()
        done = {"stage": name, "what": what, "seconds": round(time.perf_counter() - started, 2),
                "finished_at": _now(), "note": note}
        _write_json(marker, done)
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
    from explain.pipeline import RESULTS_FILE, read_records

    ok = sorted(int(r["feature"]) for r in read_records(tokens_run / RESULTS_FILE)
                if r.get("status") == "ok" and Path(r.get("dictionary_path", "")) == dictionary.resolve())
    return ok[:count]


def run_demo(settings: DemoSettings, out: str | Path) -> Path:
    """Run (or resume) every stage into `out`; returns the report's index.html."""
    from activations.cache_writer import cache_activations
    from causal.commands import has_settings_record, patch_ioi_command
    from explain.commands import compare_command, explain_command
    from report.build import build_report
    from sae.commands import baselines_command, evaluate_command, train_sae_command
    from sae.settings import BaselinesSettings, EvaluateSettings, TrainSettings

    settings.validate()
    run = Path(out)
    _check_settings(run, settings)
    run.mkdir(parents=True, exist_ok=True)
    _write_json(run / SETTINGS_FILE, settings.to_json())
    s, hook, dicts = settings, settings.hook, run / DICTS_DIR
    train_cache, frag_cache = run / TRAIN_CACHE, run / FRAGMENT_CACHE
    saes = _sae_folders(dicts, s)
    baselines = [dicts / k for k in s.baselines]
    use_llm = s.llm.lower() != "none" and s.llm_features > 0
    stages = Stages(run, total=9 + int(use_llm))
    wall = time.perf_counter()

    stages.run("01_cache_train", f"cache {s.train_cache_tokens} training tokens at {hook}", lambda: cache_activations(
        model=s.model, corpus=s.corpus, hooks=[hook], context_length=s.context_length,
        max_tokens=s.train_cache_tokens, batch_size=s.cache_batch_size, dtype=s.dtype, out=train_cache,
        device=s.device, progress=s.progress), resumes=True)
    stages.run("02_cache_fragments", f"cache {s.fragments} fragments of {s.fragment_length} tokens",
               lambda: cache_activations(
                   model=s.model, corpus=s.corpus, hooks=[hook], context_length=s.fragment_length,
                   max_tokens=s.fragments * s.fragment_length, batch_size=s.cache_batch_size, dtype=s.dtype,
                   out=frag_cache, fragments=True, device=s.device, progress=s.progress), resumes=True)
    stages.run("03_train_sae", f"train {len(s.l1s)} tied SAEs (R={s.ratio:g}) in one pass", lambda: train_sae_command(TrainSettings(
        cache=str(train_cache), hook=hook, ratios=[s.ratio], l1s=list(s.l1s), batch_size=s.sae_batch_size, lr=s.lr,
        tokens=s.sae_tokens, tied=True, seed=s.seed, device=s.device, out=str(dicts))), resumes=True)
    stages.run("04_baselines", f"fit baselines {','.join(s.baselines)}", lambda: baselines_command(BaselinesSettings(
        cache=str(train_cache), hook=hook, kinds=list(s.baselines), tokens=s.baseline_tokens, seed=s.seed,
        out=str(dicts), ica_samples=s.ica_samples)), resumes=True)
    stages.run("05_evaluate", "evaluate every dictionary", lambda: evaluate_command(EvaluateSettings(
        cache=str(train_cache), dicts=[str(p) for p in saes + baselines], tokens=s.eval_tokens, model=s.model,
        no_model=s.ce_contexts < 1, ce_contexts=max(1, s.ce_contexts))), resumes=False)
    chosen = choose_sae(saes, s.target_l0)
    print(f"explaining and patching {chosen.name} (mean L0 nearest {s.target_l0:g})")
    tokens_run = run / EXPLANATIONS_DIR / "tokens"
    stages.run("06_explain_tokens", f"explain {s.features} features per basis (tokens scorer)", lambda: explain_command(
        cache=str(frag_cache), dicts=[str(p) for p in [chosen] + baselines], features=s.features,
        explainer="tokens", simulator="tokens", seed=s.seed, out=str(tokens_run)), resumes=True)
    runs = [tokens_run]
    if use_llm:
        targets = [p for p in [chosen] + baselines if _kind(p) in s.llm_kinds]
        llm_runs = [run / EXPLANATIONS_DIR / f"llm-{p.name}" for p in targets]
        runs += llm_runs

        def explain_llm() -> None:
            for folder, out_dir in zip(targets, llm_runs):
                ids = _llm_feature_ids(tokens_run, folder, s.llm_features)
                if not ids:
                    print(f"{folder.name}: no explainable feature in the tokens run; no LLM explanation")
                    continue
                explain_command(cache=str(frag_cache), dicts=[str(folder)], feature_ids=ids, explainer=s.llm,
                                simulator=s.llm, base_url=s.base_url, seed=s.seed, out=str(out_dir))

        stages.run("07_explain_llm", f"explain {s.llm_features} features of {', '.join(s.llm_kinds)} with {s.llm}",
                   explain_llm, resumes=True)
    stages.run("08_compare", "compare bases", lambda: compare_command(
        explanations=[str(r) for r in runs if (r / "explanations.jsonl").exists()], plot=str(run / COMPARE_PNG),
        json_path=str(run / COMPARE_JSON)), resumes=False)
    ioi_dicts = [chosen] + [p for p in baselines if p.name == "pca"]
    (run / IOI_DIR).mkdir(exist_ok=True)
    stages.run("09_patch_ioi", f"IOI patching with {', '.join(p.name for p in ioi_dicts)}", lambda: patch_ioi_command(
        model=s.model, dicts=[str(p) for p in ioi_dicts], n_prompts=s.ioi_prompts, seed=s.seed,
        out=str(run / IOI_DIR), plot=str(run / IOI_DIR / "ioi.png"), device=s.device, candidates=s.ioi_candidates,
        names=s.ioi_names, overwrite=not has_settings_record(run / IOI_DIR)), resumes=True)
    index: list[Path] = []
    stages.run("10_report", "write the report", lambda: index.append(build_report(run, run / REPORT_DIR)),
               resumes=False, always=True)
    index_path = index[0] if index else build_report(run, run / REPORT_DIR)
    print(f"demo finished in {(time.perf_counter() - wall) / 60:.1f} min (this invocation)")
    print(f"report: {index_path.resolve()}")
    return index_path


def _kind(folder: Path) -> str:
    return str(json.loads((folder / "config.json").read_text(encoding="utf-8")).get("kind"))


def settings_from_kwargs(**overrides: Any) -> DemoSettings:
    known = {f.name for f in fields(DemoSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"unknown demo settings {unknown}: choose from {sorted(known)}")
    return DemoSettings(**{k: v for k, v in overrides.items() if v is not None})
