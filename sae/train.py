"""Train a whole sweep of one kind of SAE in one pass over the data.

Every learned kind (tied / untied L1, TopK, BatchTopK) goes through this one
loop; the objective, the swept parameter and the folder names come from the
kind's row in `sae.registry`.
Models of equal size R share one stack; every stack steps on the same
batch, so the data is read once however many α or k values there are.

Inputs are scaled by one constant s (E‖s·x‖ = √d, estimated once from the
training split) so that α means the same sparsity at every layer and on
every model; s is folded into the saved weights, so a dictionary encodes
and decodes raw activations. Every stored metric is measured on held-out
tokens when the source has a held-out split, and says so.

Training is resumable: rerunning the same command finds the checkpoint
(keyed by a hash of everything that decides the result) and continues to
a bit-identical end on CPU.

Under torchrun (`launch` with world size > 1, see `sae.distributed`) the
same loop runs on every rank: data-parallel, rank 0 writes checkpoints and
dictionaries and a checkpoint is independent of the number of ranks;
sweep-parallel, each rank trains, checkpoints and writes its own members.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from activations.distributed import Launch, barrier
from common.errors import UserError
from common.runstate import require_same_digest, settings_digest
from sae.checkpoint import load_checkpoint, read_state, remove_stale, save_checkpoint
from sae.data import BatchSource, dead_tokens_line, passes, passes_line, prefetch
from sae.errors import TrainingDiverged
from sae.io import CONFIG_FILE, read_config, save_dictionary
from sae.kinds.stack import StackOptions, SweepStack
from sae.metrics import density_histogram, quality_warnings, reconstruction_metrics
from sae.registry import kind_spec, objective_class
from sae.settings import TrainSettings
from sae.step import Stepper, lr_factor, make_optimizer, set_lr

EVAL_TOKENS = 65_536  # tokens for the final metrics stored with each dictionary
STATS_TOKENS = 65_536  # tokens read once to estimate the input scale and the data mean
STATS_SEED_OFFSET = 2


def dictionary_name(kind: str | bool, ratio: float, value: float) -> str:
    """Folder name of one sweep member; `kind` True/False means tied/untied (the historical signature)."""
    if isinstance(kind, bool):
        kind = "tied_sae" if kind else "untied_sae"
    spec = kind_spec(kind)
    return f"{spec.prefix}_R{ratio:g}_{spec.sweep.key}_{value:g}"


@dataclass
class InputStats:
    """Input scale s (x' = s·x) and the mean of x' over the training split."""

    scale: float
    mean: torch.Tensor
    mean_norm: float


def input_stats(source: BatchSource, settings: TrainSettings) -> InputStats:
    """One read of up to STATS_TOKENS training vectors: s = √d / E‖x‖ (1 when not normalising), and E[s·x]."""
    n = max(1, min(STATS_TOKENS, source.n_tokens))
    batch = max(1, min(4096, n))
    total, norms, count = torch.zeros(source.d_in, dtype=torch.float64), 0.0, 0
    for x in source.batches(batch, max(batch, n), settings.seed + STATS_SEED_OFFSET):
        x64 = x.to(torch.float64)
        x64 = x64[torch.isfinite(x64).all(dim=1)]  # non-finite rows are the training loop's to report, with steps
        total += x64.sum(0)
        norms += float(x64.norm(dim=-1).sum())
        count += x.shape[0]
    mean_norm = norms / max(1, count)
    if settings.normalise and not (mean_norm > 0 and math.isfinite(mean_norm)):
        raise UserError(f"the training activations have mean norm {mean_norm}: they cannot be normalised; "
                        "check the cache (re-cache with --dtype float32 if it holds inf) or pass --no-normalise")
    scale = math.sqrt(source.d_in) / mean_norm if settings.normalise else 1.0
    return InputStats(scale=scale, mean=(total / max(1, count) * scale).to(torch.float32), mean_norm=mean_norm)


# -- plan ------------------------------------------------------------------------------------------

def _identity(settings: TrainSettings, source: BatchSource) -> tuple[dict, str]:
    """What decides the trained weights; a checkpoint or folder is reused only if this matches."""
    ident = {**settings.public(), "ratios": sorted(map(float, settings.ratios)),
             "sweep": sorted(settings.sweep_values), "model_id": source.model_id, "d_in": source.d_in,
             "data_tokens": source.info.get("cache_tokens"), "data_contexts": source.info.get("contexts"),
             "position_0": source.info.get("position_0")}
    return ident, settings_digest(ident)


def _existing(out: Path, names: list[str], ident: dict) -> bool:
    """True if every folder is already finished by this same run; error if any is from another run."""
    done = 0
    for name in names:
        folder = out / name
        if not folder.exists():
            continue
        if not (folder / CONFIG_FILE).exists():
            raise UserError(f"{folder} exists but is not a dictionary folder: move it away or choose another --out")
        require_same_digest(read_config(folder), "training_identity", ident, f"--out {str(out)!r}: {name}",
                            source=CONFIG_FILE, what="dictionary")
        done += 1
    return done == len(names)


def build_groups(settings: TrainSettings, d_in: int, device: str,
                 data_mean: torch.Tensor | None = None,
                 members: list[tuple[float, float]] | None = None) -> list[SweepStack]:
    """One stack per ratio, each holding every swept value, in a fixed (sorted) order.

    `members` (ratio, value) pairs restrict the sweep to those models (a rank's
    share under `--distribute sweep`); each model's initial weights depend on its
    own (seed, kind, R, value) only, so it starts the same in any share.
    """
    options = StackOptions(kind_settings=settings.own_settings, data_mean=data_mean)
    cls = objective_class(settings.kind)
    if members is None:
        return [cls(d_in, r, sorted(settings.sweep_values), settings.seed, options).to(device)
                for r in sorted(map(float, settings.ratios))]
    by_ratio: dict[float, list[float]] = {}
    for r, v in members:
        by_ratio.setdefault(float(r), []).append(v)
    return [cls(d_in, r, sorted(vs), settings.seed, options).to(device) for r, vs in sorted(by_ratio.items())]


def build_optimizer(groups: list[SweepStack], settings: TrainSettings, device: str) -> torch.optim.Adam:
    return make_optimizer([p for g in groups for p in g.parameters()], settings.learning_rate, settings.betas, device)


def member_names(settings: TrainSettings, members: list[tuple[float, float]] | None = None) -> list[str]:
    """Folder names in the order `build_groups` lays the models out (ratio, then swept value, both sorted)."""
    return [dictionary_name(settings.kind, r, v) for r, v in (sweep_members(settings) if members is None else members)]


def sweep_members(settings: TrainSettings) -> list[tuple[float, float]]:
    """Every (ratio, value) of the sweep, in `build_groups`' order."""
    values = sorted(settings.sweep_values)
    return [(r, v) for r in sorted(map(float, settings.ratios)) for v in values]


# -- run -------------------------------------------------------------------------------------------

def train_sweep(source: BatchSource, settings: TrainSettings, out: str | Path, device: str = "cpu",
                progress: bool = True, eval_tokens: int = EVAL_TOKENS, log_every: int = 20,
                eval_source: BatchSource | None = None,
                stepper_factory: Callable[..., Stepper] = Stepper,
                launch: Launch | None = None, distribute: str | None = None) -> list[Path]:
    """Train every (ratio, value) pair together; returns one dictionary folder per pair under `out`.

    `eval_source` holds the held-out tokens every stored metric is measured
    on (None: the training source, and the metrics say so). `stepper_factory`
    makes the object that performs one optimisation step (tests pass one
    that misbehaves on purpose). `launch` / `distribute`: this process's place
    in a torchrun launch (process group already joined) and the mode
    ('data' or 'sweep', see `sae.distributed`); a single process ignores both.
    Under 'sweep' the folders returned are this rank's members only.
    """
    from sae.distributed import DataParallelStepper, resolve_mode, share_members

    settings = settings.for_data(source.d_in)
    settings.validate()
    launch = launch or Launch()
    mode = resolve_mode(launch, distribute, settings.kind)
    out = Path(out)
    ident, digest = _identity(settings, source)
    _check_k(settings, source.d_in)
    if launch.is_main and settings.tokens > source.n_tokens:
        print(passes_line(settings.tokens, source.n_tokens))
    note = dead_tokens_line(settings) if launch.is_main else None
    if note:
        print(note)
    members = sweep_members(settings)
    names = member_names(settings)
    if _existing(out, names, ident):
        if launch.is_main:
            print(f"{len(names)} dictionaries in {out} are already trained with these settings; nothing to do.")
        return [out / n for n in names]
    ckpt = out / f".train-{digest}"
    writer = launch.is_main  # the rank that checkpoints and persists
    if mode == "sweep":
        members = [members[i] for i in share_members([r for r, _ in members], launch.world_size)[launch.rank]]
        names, writer = member_names(settings, members), True
        ckpt = out / f".train-{digest}-{settings_digest({'members': names})[:12]}"
        if not members or _existing(out, names, ident):
            print(f"rank {launch.rank}: " + ("no sweep member to train (more ranks than members)" if not members
                                             else f"{', '.join(names)} already trained with these settings"))
            return [out / n for n in names]
        print(f"rank {launch.rank} of {launch.world_size} trains {', '.join(names)}")
    stats = input_stats(source, settings)
    groups = build_groups(settings, source.d_in, device, data_mean=stats.mean,
                          members=members if mode == "sweep" else None)
    optimizer = build_optimizer(groups, settings, device)
    start = 0
    if writer and read_state(ckpt) is not None:
        remove_stale(ckpt)
    if mode == "data":
        barrier(launch)  # rank 0 has tidied the checkpoint folder before any rank reads it
    if read_state(ckpt) is not None:
        start = load_checkpoint(ckpt, groups, optimizer)
        if writer:
            print(f"resuming from the checkpoint at step {start} of {settings.steps} in {ckpt}")
    loop = _Loop(settings, groups, optimizer, names, ckpt, ident, device, progress and launch.is_main, log_every, start,
                 stats.scale, writer=writer)
    stepper = (DataParallelStepper(groups, optimizer, device, launch) if mode == "data"
               else stepper_factory(groups, optimizer, device))
    last, elapsed = loop.run(source, stepper)
    paths = [out / n for n in names]
    if writer:
        paths = _persist(_Finished(settings=settings, groups=groups, names=names, digest=digest, last=last,
                                   elapsed=elapsed, start=start, stats=stats),
                         source=source, eval_source=eval_source, out=out, device=device, eval_tokens=eval_tokens)
        shutil.rmtree(ckpt, ignore_errors=True)
    return paths


def _check_k(settings: TrainSettings, d_in: int) -> None:
    """--k above a dictionary's width is a one-line error with the limit (it was a traceback from the stack)."""
    from sae.kinds.stack import n_features_for
    from sae.settings import TOPK_KINDS

    if settings.kind not in TOPK_KINDS:
        return
    for ratio in settings.ratios:
        width = n_features_for(float(ratio), d_in)
        too_big = [int(k) for k in settings.ks if k > width]
        if too_big:
            raise UserError(f"--k {too_big[0]} is more than the {width} features of a --ratio {ratio:g} dictionary of "
                            f"width {d_in}: pass --k of at most {width}, or a larger --ratio")


class _Loop:
    """The step loop: schedule, NaN checks, checkpoints, progress."""

    def __init__(self, settings: TrainSettings, groups: list[SweepStack], optimizer, names: list[str], ckpt: Path,
                 ident: dict, device: str, progress: bool, log_every: int, start: int, scale: float,
                 writer: bool = True):
        self.s, self.groups, self.optimizer, self.names = settings, groups, optimizer, names
        self.writer = writer  # False on data-parallel ranks other than 0: they step but never write
        self.ckpt, self.ident, self.device, self.progress = ckpt, ident, device, progress
        self.log_every, self.start, self.scale = log_every, start, scale
        self.last_good = start if start else None

    def fail(self, step: int, bad: list[str]) -> None:
        kept = (f"the last good checkpoint (step {self.last_good}) is kept in {self.ckpt}" if self.last_good is not None
                else "no checkpoint had been written yet")
        raise TrainingDiverged(
            f"loss or weights became NaN/inf by step {step} for {', '.join(bad)}; {kept}. "
            f"Lower --lr or drop those {self.s.sweep.flag} values, "
            "and check the cache for inf values (a float16 overflow: re-cache with --dtype float32)")

    def check(self, step: int, flags: list[torch.Tensor], weights: bool = False) -> None:
        if weights:
            flags = [f | w for f, w in zip(flags, nonfinite_models(self.groups, self.optimizer))]
        bad = [self.names[sum(len(g.values) for g in self.groups[:gi]) + i]
               for gi, f in enumerate(flags) for i in torch.nonzero(f.cpu()).flatten().tolist()]
        if bad:
            self.fail(step, bad)

    def run(self, source: BatchSource, stepper: Stepper) -> tuple[list[dict], float]:
        s, device = self.s, self.device
        flags = [torch.zeros(len(g.values), dtype=torch.bool, device=device) for g in self.groups]
        last: list[dict] = []
        bar = tqdm(total=s.steps, initial=self.start, desc=f"train {len(self.names)} {s.kind}", unit="step",
                   disable=not self.progress, smoothing=0.05)
        started = time.perf_counter()
        step = self.start
        batches = prefetch(lambda: source.batches(s.batch_size, s.tokens, s.seed, start_batch=self.start))
        lr, schedule = s.learning_rate, s.schedule  # resolved once: each reads the registry
        for x in batches:
            x = x.to(device, torch.float32, non_blocking=True)
            if self.scale != 1.0:
                x = x * self.scale
            set_lr(self.optimizer, lr * lr_factor(step, s.steps, *schedule))
            for g in self.groups:
                g.at_step(step, s.steps)
            results = stepper(x)
            for f, r in zip(flags, results):
                f |= ~torch.isfinite(r["loss"].detach())
            step += 1
            bar.update(1)
            if step % self.log_every == 0 or step == s.steps:
                self.check(step, flags)
                last = [{k: r[k].detach() for k in ("loss", "mse", "l1")} for r in results]
                if self.progress:
                    bar.set_postfix_str(_live_stats(x, results))
            if step % s.checkpoint_every == 0 and step < s.steps:
                # the losses were computed before this step's update: only the weights themselves can
                # show that the state about to become "the last good checkpoint" really is finite
                self.check(step, flags, weights=True)
                if self.writer:  # atomic on disk, and no rank reads it during the run: no barrier needed
                    save_checkpoint(self.ckpt, step, self.groups, self.optimizer, {"identity": self.ident,
                                                                                 "names": self.names})
                self.last_good = step
        bar.close()
        self.check(step, flags, weights=True)
        if step < s.steps:
            raise UserError(f"the data ran out after {step} of {s.steps} steps: lower --tokens")
        return last, time.perf_counter() - started


def nonfinite_models(groups: list[SweepStack], optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Per group, a bool per model: does any of its weights or Adam moments hold NaN/inf?

    Every parameter (and so every Adam moment) is stacked with the model index
    first, so a model's verdict is one reduction over the rest of the dims.
    """
    flags = []
    with torch.no_grad():
        for g in groups:
            params = list(g.parameters())
            bad = torch.zeros(len(g.values), dtype=torch.bool, device=params[0].device)
            for p in params:
                moments = [v for v in optimizer.state.get(p, {}).values()
                           if torch.is_tensor(v) and v.shape == p.shape]
                for t in (p, *moments):
                    bad |= ~torch.isfinite(t).reshape(t.shape[0], -1).all(dim=1)
            flags.append(bad)
    return flags


def _live_stats(x: torch.Tensor, results: list[dict]) -> str:
    with torch.no_grad():
        var = (x - x.mean(0)).pow(2).mean()
        loss = torch.cat([r["loss"] for r in results])
        l0 = torch.cat([(r["c"] > 0).float().sum(-1).mean(-1) for r in results])
        fvu = torch.cat([r["mse"] for r in results]) / var
    return (f"loss {float(loss.mean()):.4g} L0 {float(l0.min()):.1f}-{float(l0.max()):.1f} "
            f"FVU {float(fvu.min()):.3f}-{float(fvu.max()):.3f}")


# -- persist ---------------------------------------------------------------------------------------

@dataclass
class _Finished:
    """What the step loop hands to `_persist`: the trained models and how they got there."""

    settings: TrainSettings
    groups: list[SweepStack]
    names: list[str]  # one per model, in the groups' order
    digest: str
    last: list[dict]  # the last logged batch's per-model loss / mse / l1
    elapsed: float
    start: int  # the step this invocation resumed from
    stats: InputStats


def _persist(run: _Finished, *, source: BatchSource, eval_source: BatchSource | None, out: Path, device: str,
             eval_tokens: int) -> list[Path]:
    """Fold the input scale into each model, measure it on held-out tokens, and save one folder each."""
    settings, groups, names, digest, last = run.settings, run.groups, run.names, run.digest, run.last
    elapsed, start, stats = run.elapsed, run.start, run.stats
    base = {"hook": settings.hook, "model_id": source.model_id, **getattr(source, "model", {}),
            "training": settings.public(),
            "data": dict(source.info), "training_identity": digest,
            "training_identity_record": _identity(settings, source)[0], "input_scale": stats.scale,
            "passes": round(passes(settings.tokens, source.n_tokens), 3),
            "input_mean_norm": stats.mean_norm}
    dicts = [d for g in groups for d in g.dictionaries(base, input_scale=stats.scale)]
    measured = eval_source if eval_source is not None else source
    n_eval = max(1, min(eval_tokens, measured.n_tokens))
    eval_batch = max(1, min(4096, n_eval, measured.n_tokens // 2 or 1))
    n_eval = max(eval_batch, n_eval)
    metrics = reconstruction_metrics([d.to(device) for d in dicts],
                                     measured.batches(eval_batch, n_eval, settings.seed + 1), device=device)
    tokens_used = {"split": "held-out" if eval_source is not None else "training",
                   "contexts": measured.info.get("contexts"), "position_0": measured.info.get("position_0"),
                   "sink_norm_limit": measured.info.get("sink_norm_limit"),
                   "n_tokens": metrics[0].get("eval_tokens") if metrics else None}
    final = [{k: float(v[i]) for k, v in grp.items()} for grp in last for i in range(len(grp["loss"]))] \
        if last else [{} for _ in dicts]
    for m in metrics:
        m["density"] = density_histogram(m.pop("firing_rates"))
        m["warnings"] = quality_warnings(m)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, d, m, f in zip(names, dicts, metrics, final):
        d.to("cpu")
        d.config["metrics"] = {**m, "measured_on": tokens_used, **{f"final_batch_{k}": v for k, v in f.items()},
                               "train_seconds": round(elapsed, 2), "resumed_from_step": start}
        paths.append(save_dictionary(d, out / name))
    where = "held-out" if eval_source is not None else "training (no held-out split)"
    print(f"trained {len(paths)} dictionaries in {elapsed:.1f}s -> {out}; metrics on {where} tokens")
    for name, m in zip(names, metrics):
        twins = f"  twins {100 * m['twin_l0_share']:.1f}% of L0" if "twin_l0_share" in m else ""
        print(f"  {name}: FVU {m['fvu']:.4f}  L0 {m['l0']:.1f}  dead {100 * m['dead_fraction']:.1f}%{twins}")
        for warning in m["warnings"]:
            print(f"  warning: {name}: {warning}")
    return paths
