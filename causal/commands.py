"""`cli.py patch-ioi`: IOI feature patching, KL against number of patched features.

Everything the user can get wrong (an unwritable --out, missing or
mismatched dictionaries, a hook the model lacks, a tokenizer without
one-token names) is checked before the model runs and before anything under
OUT is written. The command is four steps: validate (no files read),
plan (dictionaries, settings record, what an earlier run finished), run
(one greedy curve per dictionary) and persist (ioi.json after each one).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from common.errors import UserError
from common.options import identity_fields
from common.runstate import Claim, check_output_file, check_output_folder, claim_output, read_json, write_json_atomic
from causal.patching import (coefficient_delta, decoder_rows, last_logits, pad_token_id,
                             pair_batch, task_check)
from causal.prompts import IOIConfig, make_ioi_pairs
from causal.selection import GreedyConfig, PatchProblem, default_taus, greedy_curve
from causal.settings import REACH_FRACTIONS, PatchIOISettings
from causal.suffix import SuffixRunner

RESULT_FILE = "ioi.json"
CONFIG_FILE = "ioi_config.json"
PROMPTS_FILE = "ioi_prompts.json"
# Edited copies per forward pass are chosen so one pass holds about this many tokens on a GPU.
GPU_TOKENS_PER_FORWARD = 65_536


@dataclass
class PatchIOIConfig:
    """What OUT/ioi_config.json records about the run (with the model's source, the hook and the identity)."""

    model: str
    dicts: list[str]
    n_prompts: int = 50
    seed: int = 0
    device: str = "cpu"
    candidates: int | None = None
    names: list[str] | None = None
    taus: list[float] = field(default_factory=default_taus)
    rows_per_forward: int = 1


def load_dictionaries(paths: list[str]) -> list:
    """Load every dictionary and check they share one hook, before any model work."""
    import sae

    if not paths:
        raise UserError("no dictionaries given: pass at least one folder with --dict DIR [DIR ...]")
    dictionaries = []
    for path in paths:
        if Path(path).is_file():
            raise UserError(f"--dict {path!r} is a file, not a dictionary folder: pass the folder that holds "
                            "config.json and weights.safetensors")
        if not Path(path).is_dir():
            raise UserError(f"dictionary folder {path!r} does not exist: pass folders made by `cli.py train-sae` or `cli.py baselines`")
        dictionaries.append(sae.load(path))
    hooks = {d.name: d.hook for d in dictionaries}
    if len(set(hooks.values())) != 1:
        listing = ", ".join(f"{name} at {hook or '(no hook)'}" for name, hook in hooks.items())
        raise UserError(f"the dictionaries do not share one hook ({listing}): run patch-ioi once per hook, "
                        "passing only the dictionaries trained at that hook")
    names = [d.name for d in dictionaries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"several dictionaries are named {duplicates} (the folder name): give the folders distinct names")
    return dictionaries


def _check_against_model(model, dictionaries: list) -> str:
    from activations.hooks import hook_width, validate_hooks

    hook = validate_hooks(model, [dictionaries[0].hook])[0]
    width = hook_width(model, hook)
    for d in dictionaries:
        if int(d.d_in) != width:
            raise UserError(f"dictionary {d.name!r} has d_in {d.d_in} but {hook.name} of this model has width {width}: "
                            "use dictionaries trained on this model's activations")
    return hook.name


def _check_pairing(loaded, dictionaries: list, allow: bool) -> dict[str, dict]:
    """Each dictionary against the loaded model (`activations.provenance`): a dictionary of another model of the
    same width would give a full, plausible and wrong curve. {name: pairing entry}, recorded in both JSON files."""
    from activations.provenance import check_pairing, loaded_record

    used_on = loaded_record(loaded)
    return {d.name: check_pairing(d, used_on, f"--model {loaded.model_id}", allow=allow) for d in dictionaries}


def features_to_reach(points: list[list[float]] | None, kl_none: float) -> dict[str, int | None]:
    """Fewest patched features among measured states with KL ≤ fraction · KL(clean ‖ cf); None if none gets there.

    The paper's summary of a curve: how many features move the IO information.
    """
    out: dict[str, int | None] = {}
    for fraction in REACH_FRACTIONS:
        ok = [int(n) for n, kl, *_ in (points or []) if kl is not None and kl <= fraction * kl_none]
        out[f"{fraction:g}"] = min(ok) if ok else None
    return out


def _reach_text(reach: dict[str, int | None]) -> str:
    return ", ".join(f"{float(k):.0%}: {'never' if v is None else v}" for k, v in reach.items())


def has_settings_record(out_dir: str | Path) -> bool:
    """Was OUT written by a patch-ioi that records its settings (so a rerun can resume it)?"""
    try:
        return "identity" in read_json(Path(out_dir) / CONFIG_FILE, "IOI config", "")
    except (UserError, TypeError):
        return False


def _previous_results(claim: Claim, identity: dict, paths: dict[str, str]) -> dict[str, dict]:
    """Finished dictionaries of an earlier run into the same folder with the same settings (the resume).

    A run is slow (minutes per dictionary on a CPU) and ioi.json is rewritten
    after each dictionary, so a rerun after a kill keeps what was finished.
    Both files carry the settings record (`claim_output` compares both), and
    ioi.json's is the one that vouches for its curves. Other settings, a folder
    from an older version, or a result under the same name from another folder
    fail here, before anything is written, unless --overwrite.
    """
    result_path = claim.path / RESULT_FILE
    if not claim.compare(identity).resumes or not result_path.exists():
        return {}
    fix = "pass another --out, or --overwrite to replace it"
    previous = dict(read_json(result_path, "the IOI results", fix).get("dictionaries") or {})
    for name, entry in previous.items():
        if name in paths and entry.get("path") != paths[name]:
            raise UserError(f"--out {str(claim.path)!r} already has a result for a dictionary named {name!r} from "
                            f"{entry.get('path')}, not {paths[name]}: {fix}")
    return previous


def _rows_per_forward(device: str, n_prompts: int, max_len: int) -> int:
    if not str(device).startswith("cuda"):
        return 1  # on a CPU a wider batch costs proportionally more, so speculation would only waste work
    return max(1, GPU_TOKENS_PER_FORWARD // (n_prompts * max_len))


def identity_of(settings: PatchIOISettings, hook: str) -> dict:
    """The settings record of an IOI run: what decides its curves (the τ grid and the dictionaries' hook too)."""
    identity = identity_fields(settings)
    identity["names"] = list(settings.names) if settings.names else None
    identity.update(taus=default_taus(), hook=hook)
    return identity


@dataclass
class _Plan:
    """What the run will do, known before the model loads: dictionaries, settings record, finished results."""

    settings: PatchIOISettings
    claim: Claim  # --out, held by this process
    dictionaries: list
    paths: dict[str, str]  # dictionary name -> resolved folder
    identity: dict
    previous: dict[str, dict]  # finished earlier with these settings: kept, whatever this run does
    candidates_given: bool  # False: the CPU default chose them (`PatchIOISettings.greedy_choice`)

    @property
    def out_dir(self) -> Path:
        return self.claim.path

    def done(self, name: str) -> bool:
        return self.previous.get(name, {}).get("path") == self.paths[name]


def _validate(settings: PatchIOISettings) -> None:
    """Every check that reads no input file: the numbers, the device, and that --out and --plot can be written."""
    from activations.devices import check_device

    settings.validate()
    check_device(settings.device)
    check_output_folder(settings.out)
    if settings.plot is not None:
        check_output_file(settings.plot, "--plot")
        if not Path(settings.plot).resolve().parent.is_dir():
            raise UserError(f"the folder of --plot {settings.plot!r} does not exist: create it or pass another path")


def _plan(settings: PatchIOISettings, candidates_given: bool, claim: Claim) -> _Plan:
    dictionaries = load_dictionaries(list(settings.dicts))
    paths = {d.name: str(Path(p).resolve()) for d, p in zip(dictionaries, settings.dicts)}
    identity = identity_of(settings, dictionaries[0].hook)
    previous = _previous_results(claim, identity, paths)
    return _Plan(settings, claim, dictionaries, paths, identity, previous, candidates_given)


def _persist_setup(plan: _Plan, config: PatchIOIConfig, loaded, hook: str, pairs: list, pairing: dict) -> None:
    """OUT/ioi_config.json and ioi_prompts.json; with --overwrite the old ioi.json goes first,
    so a kill from here on cannot leave old curves beside the new settings record."""
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    if plan.settings.overwrite:
        (plan.out_dir / RESULT_FILE).unlink(missing_ok=True)
    plan.claim.write_record({**asdict(config), "model_source": loaded.source, "model_revision": loaded.revision,
                             "hook": hook, "pairing": pairing})
    write_json_atomic(plan.out_dir / PROMPTS_FILE, {"pairs": [asdict(p) for p in pairs]})


def _persist(plan: _Plan, result: dict) -> None:
    """ioi.json, after each dictionary: a killed run keeps the finished ones."""
    write_json_atomic(plan.out_dir / RESULT_FILE, result)


def _task_result(settings: PatchIOISettings, hook: str, batch, check, taus: list[float], plan: _Plan) -> dict:
    """ioi.json before any curve: the model's IOI behaviour on these prompts, and the curves kept from earlier."""
    warning = None
    if not check.does_ioi:
        warning = (f"the model does not do the IOI task on these prompts (mean logit diff IO-S = {check.logit_diff:.3f} <= 0): "
                   "the patching curves below do not measure where IOI information lives")
        print(f"WARNING: {warning}")
    return {
        "model": settings.model,
        "hook": hook,
        "n_prompts": batch.n,
        "clean_logit_diff": check.logit_diff,
        "clean_accuracy": check.accuracy,
        "clean_top1_accuracy": check.top1_accuracy,
        "clean_io_prob": check.io_prob,
        "counterfactual_logit_diff": check.cf_logit_diff,
        "model_does_ioi": check.does_ioi,
        "warning": warning,
        "kl_clean_vs_counterfactual": check.kl_clean_vs_cf,
        "per_prompt": check.per_prompt,  # [[logit diff IO-S, correct], ...] per clean prompt, in prompts.json order
        "taus": taus,
        "identity": plan.identity,
        "dictionaries": dict(plan.previous),
    }


def _run_dictionary(d, plan: _Plan, runner: SuffixRunner, x_cf: torch.Tensor, w: torch.Tensor,
                    cf_logits: torch.Tensor, greedy: GreedyConfig, kl_none: float, n_prompts: int) -> dict:
    """One dictionary's curve (and the attribution screen's ladder with --candidates), as ioi.json stores it."""
    candidates, device = plan.settings.candidates, plan.settings.device
    if candidates is not None and candidates >= d.n_features:
        given = f"--candidates {candidates}" if plan.candidates_given else f"the default screen of {candidates}"
        print(f"note: {given} is not fewer than the {d.n_features} features of {d.name}: "
              "the greedy runs on every feature (ioi.json records candidates: null)")
    delta = coefficient_delta(d, runner.x_clean, x_cf, runner.batch.differs, device)
    problem = PatchProblem(runner, delta, w, cf_logits)
    started = time.perf_counter()
    screened, ladder = None, None
    if candidates is not None and candidates < d.n_features:
        from causal.attribution import attribution_scores, screen_ladder

        scores = attribution_scores(problem)
        screened = scores.abs().topk(candidates).indices.tolist()
        ladder = screen_ladder(problem, scores, candidates)
    res = greedy_curve(problem, greedy, desc=d.name, candidates=screened)
    seconds = time.perf_counter() - started
    curve = [[p.n_features, p.kl, p.edit_norm] for p in res.curve]
    reach = features_to_reach(curve, kl_none)
    reach_screen = features_to_reach(ladder, kl_none) if ladder else None
    best = min(p.kl for p in res.curve)
    reached = f"features for KL <= {_reach_text(reach)}"
    if reach_screen:
        reached += f" (screen's top-m: {_reach_text(reach_screen)})"
    print(f"{d.name} ({d.kind}): {d.n_features} features, {res.n_trivial} never differ; "
          f"min KL {best:.4g}; {reached}; {res.evaluations} evaluations ({res.prompt_runs} prompt runs, "
          f"{res.prompt_runs / (res.evaluations * n_prompts or 1):.0%} of all prompts) in {seconds:.1f} s")
    return {
        "path": plan.paths[d.name],
        "kind": d.kind,
        "hook": d.hook,
        "n_features": d.n_features,
        "curve": curve,
        "n_trivial_features": res.n_trivial,
        "candidates": candidates if screened is not None else None,
        # top-m by the screen's ranking, m = K, 2K, 4K, ...: measured KLs between "all" and the greedy's start
        "screen_curve": ladder,
        # fewest features with KL ≤ 25% / 10% of KL(clean ‖ cf): on the greedy curve, and on the screen's states
        "features_to_reach": reach,
        "features_to_reach_screen": reach_screen,
        "patched_final": res.patched_final,
        "evaluations": res.evaluations,
        "prompt_runs": res.prompt_runs,
        "forward_passes": res.forwards,
        "seconds": seconds,
    }


def patch_ioi_command(settings: PatchIOISettings) -> dict:
    """Run the whole IOI patching experiment and write OUT/ioi.json (and the plot).

    Rerunning into the same folder with the same settings keeps every dictionary already in ioi.json
    (same name and folder; the weights are not re-read, so pass --overwrite after retraining one in place)
    and runs only the rest; dictionaries of earlier runs that are not passed again stay in ioi.json and in
    ioi_config.json's `dicts`. The device is not part of the settings: CPU and GPU curves may share a file.
    """
    _validate(settings)
    candidates, chosen_by = settings.greedy_choice()
    if settings.candidates is None and candidates is not None:
        print(f"on {settings.device} the greedy runs on the {candidates} features with the largest attribution per "
              "dictionary (the paper's greedy over every feature takes hours here: pass --full-greedy for it)")
    # the choice is part of the settings record, so a rerun on another device with other defaults is refused
    settings = replace(settings, candidates=candidates)
    with claim_output(settings.out, None, settings.overwrite, record=(CONFIG_FILE, RESULT_FILE), key="identity",
                      what="IOI run") as claim:  # one patch-ioi per --out at a time
        return _patch_ioi_locked(settings, chosen_by, claim)


def _patch_ioi_locked(settings: PatchIOISettings, chosen_by: str, claim: Claim) -> dict:
    from activations.hooks import run_with_cache
    from activations.models import load_model

    s = settings
    plan = _plan(s, candidates_given=chosen_by == "--candidates", claim=claim)
    loaded = load_model(s.model, device=s.device)
    hook = _check_against_model(loaded.model, plan.dictionaries)
    pairing = _check_pairing(loaded, plan.dictionaries, s.allow_model_mismatch)
    decoders = {d.name: decoder_rows(d, device=s.device) for d in plan.dictionaries}  # raises on a non-affine decoder
    pairs = make_ioi_pairs(loaded.tokenizer, IOIConfig(n_prompts=s.n_prompts, seed=s.seed, names=s.names or None))

    kept_paths = [e.get("path", "") for n, e in plan.previous.items() if n not in plan.paths]  # earlier runs' extras
    config = PatchIOIConfig(model=s.model, dicts=[str(d) for d in s.dicts] + kept_paths, n_prompts=s.n_prompts,
                            seed=s.seed, device=s.device, candidates=s.candidates, names=s.names or None)
    batch = pair_batch(pairs, pad_token_id(loaded.tokenizer), device=s.device)
    config.rows_per_forward = _rows_per_forward(s.device, batch.n, int(batch.clean_ids.shape[1]))
    _persist_setup(plan, config, loaded, hook, pairs, pairing)

    clean_logits = last_logits(loaded.model, batch.clean_ids, batch.lengths)
    cf_logits = last_logits(loaded.model, batch.cf_ids, batch.lengths)
    check = task_check(batch, clean_logits, cf_logits)
    print(f"IOI on {batch.n} clean prompts: mean logit diff IO-S = {check.logit_diff:.3f}, "
          f"accuracy (IO > S) = {check.accuracy:.2%}, IO top-1 = {check.top1_accuracy:.2%}, "
          f"KL(clean || counterfactual) = {check.kl_clean_vs_cf:.4f}")
    result = _task_result(s, hook, batch, check, config.taus, plan)
    result["greedy"] = {"candidates": s.candidates, "chosen_by": chosen_by}
    result["pairing"] = pairing
    x_cf = run_with_cache(loaded.model, batch.cf_ids, [hook])[hook]
    runner = SuffixRunner(loaded.model, hook, batch)
    if not runner.suffix_only:
        print("note: running full forward passes (this model's forward did not match a suffix-only run)")
    greedy = GreedyConfig(taus=config.taus, rows=config.rows_per_forward)
    for d in plan.dictionaries:
        if plan.done(d.name):
            print(f"{d.name}: already in {plan.out_dir / RESULT_FILE} from an earlier run with these settings, kept")
            continue
        result["dictionaries"][d.name] = _run_dictionary(d, plan, runner, x_cf, decoders[d.name], cf_logits, greedy,
                                                         check.kl_clean_vs_cf, batch.n)
        _persist(plan, result)
    _persist(plan, result)
    if s.plot:
        from causal.plot import plot_curves

        plot_curves(result, s.plot)
    return result
