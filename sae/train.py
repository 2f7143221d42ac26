"""Train a whole (R, α) sweep of L1 sparse autoencoders in one pass over the data.

Models of equal size R share a `StackedSAE`; every group steps on the same
batch, so the data is read once however many α values there are. Training is
resumable: rerunning the same command finds the checkpoint (keyed by a hash
of everything that decides the result) and continues to a bit-identical end
on CPU.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from activations.errors import UserError
from sae.checkpoint import load_checkpoint, read_state, remove_stale, save_checkpoint
from sae.data import BatchSource, prefetch
from sae.errors import TrainingDiverged
from sae.io import CONFIG_FILE, read_config, save_dictionary
from sae.metrics import reconstruction_metrics
from sae.settings import TrainSettings
from sae.stacked import StackedSAE
from sae.step import Stepper, make_optimizer

EVAL_TOKENS = 65_536  # tokens for the final metrics stored with each dictionary


def dictionary_name(tied: bool, ratio: float, l1: float) -> str:
    return f"{'tied' if tied else 'untied'}_R{ratio:g}_l1_{l1:g}"


def _identity(settings: TrainSettings, source: BatchSource) -> tuple[dict, str]:
    """What decides the trained weights; a checkpoint or folder is reused only if this matches."""
    ident = {**settings.public(), "ratios": sorted(map(float, settings.ratios)),
             "l1s": sorted(map(float, settings.l1s)), "model_id": source.model_id, "d_in": source.d_in,
             "data_tokens": source.info.get("cache_tokens")}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return ident, digest


def _existing(out: Path, names: list[str], digest: str) -> bool:
    """True if every folder is already finished by this same run; error if any is from another run."""
    done = 0
    for name in names:
        folder = out / name
        if not folder.exists():
            continue
        if not (folder / CONFIG_FILE).exists():
            raise UserError(f"{folder} exists but is not a dictionary folder: move it away or choose another --out")
        if read_config(folder).get("training_identity") != digest:
            raise UserError(f"{folder} exists from a training run with other settings: "
                            "delete it or choose another --out (nothing was overwritten)")
        done += 1
    return done == len(names)


def build_groups(settings: TrainSettings, d_in: int, device: str) -> list[StackedSAE]:
    return [StackedSAE(settings.tied, d_in, r, sorted(map(float, settings.l1s)), settings.seed).to(device)
            for r in sorted(map(float, settings.ratios))]


def build_optimizer(groups: list[StackedSAE], settings: TrainSettings, device: str) -> torch.optim.Adam:
    return make_optimizer([p for g in groups for p in g.parameters()], settings.lr, settings.betas, device)


def train_sweep(source: BatchSource, settings: TrainSettings, out: str | Path, device: str = "cpu",
                progress: bool = True, eval_tokens: int = EVAL_TOKENS, log_every: int = 20) -> list[Path]:
    """Train every (ratio, l1) pair together; returns one dictionary folder per pair under `out`."""
    settings.validate()
    out = Path(out)
    ident, digest = _identity(settings, source)
    groups = build_groups(settings, source.d_in, device)
    names = [dictionary_name(settings.tied, g.ratio, a) for g in groups for a in g.l1s]
    if _existing(out, names, digest):
        print(f"{len(names)} dictionaries in {out} are already trained with these settings; nothing to do.")
        return [out / n for n in names]
    optimizer = build_optimizer(groups, settings, device)
    ckpt = out / f".train-{digest}"
    start = 0
    if read_state(ckpt) is not None:
        remove_stale(ckpt)
        start = load_checkpoint(ckpt, groups, optimizer)
        print(f"resuming from the checkpoint at step {start} of {settings.steps} in {ckpt}")
    last_good = start if start else None

    def fail(step: int, bad: list[str]) -> None:
        kept = (f"the last good checkpoint (step {last_good}) is kept in {ckpt}" if last_good is not None
                else "no checkpoint had been written yet")
        raise TrainingDiverged(
            f"loss or weights became NaN/inf by step {step} for {', '.join(bad)}; {kept}. "
            "Lower --lr or drop those --l1 values, "
            "and check the cache for inf values (a float16 overflow: re-cache with --dtype float32)")

    def with_weights(flags: list[torch.Tensor]) -> list[torch.Tensor]:
        return [f | w for f, w in zip(flags, nonfinite_models(groups, optimizer))]

    def check(step: int, flags: list[torch.Tensor]) -> None:
        bad = [names[sum(len(g.l1s) for g in groups[:gi]) + i]
               for gi, f in enumerate(flags) for i in torch.nonzero(f.cpu()).flatten().tolist()]
        if bad:
            fail(step, bad)

    flags = [torch.zeros(len(g.l1s), dtype=torch.bool, device=device) for g in groups]
    last: list[dict] = []
    bar = tqdm(total=settings.steps, initial=start, desc=f"train {len(names)} SAEs", unit="step",
               disable=not progress, smoothing=0.05)
    started = time.perf_counter()
    step = start
    stepper = Stepper(groups, optimizer, device)
    batches = prefetch(lambda: source.batches(settings.batch_size, settings.tokens, settings.seed, start_batch=start))
    for x in batches:
        x = x.to(device, torch.float32, non_blocking=True)
        results = stepper(x)
        for f, r in zip(flags, results):
            f |= ~torch.isfinite(r["loss"].detach())
        step += 1
        bar.update(1)
        if step % log_every == 0 or step == settings.steps:
            check(step, flags)
            last = [{k: r[k].detach() for k in ("loss", "mse", "l1")} for r in results]
            if progress:
                bar.set_postfix_str(_live_stats(x, results))
        if step % settings.checkpoint_every == 0 and step < settings.steps:
            # the losses were computed before this step's update: only the weights themselves can
            # show that the state about to become "the last good checkpoint" really is finite
            check(step, with_weights(flags))
            save_checkpoint(ckpt, step, groups, optimizer, {"identity": ident, "names": names})
            last_good = step
    bar.close()
    check(step, with_weights(flags))
    if step < settings.steps:
        raise UserError(f"the data ran out after {step} of {settings.steps} steps: lower --tokens")
    elapsed = time.perf_counter() - started
    paths = _finish(source, settings, groups, names, ident, digest, last, out, device, eval_tokens, elapsed, start)
    shutil.rmtree(ckpt, ignore_errors=True)
    return paths


def nonfinite_models(groups: list[StackedSAE], optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Per group, a bool per model: does any of its weights or Adam moments hold NaN/inf?

    Every parameter (and so every Adam moment) is stacked with the model index
    first, so a model's verdict is one reduction over the rest of the dims.
    """
    flags = []
    with torch.no_grad():
        for g in groups:
            params = list(g.parameters())
            bad = torch.zeros(len(g.l1s), dtype=torch.bool, device=params[0].device)
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


def _finish(source, settings, groups, names, ident, digest, last, out, device, eval_tokens, elapsed, start):
    base = {"hook": settings.hook, "model_id": source.model_id, "training": settings.public(),
            "data": dict(source.info), "training_identity": digest}
    dicts = [d for g in groups for d in g.dictionaries(base)]
    n_eval = max(settings.batch_size, min(eval_tokens, settings.tokens))
    eval_batch = max(1, min(4096, n_eval, source.n_tokens // 2 or 1))
    eval_batches = source.batches(eval_batch, n_eval, settings.seed + 1)
    on_device = [d.to(device) for d in dicts]
    metrics = reconstruction_metrics(on_device, eval_batches, device=device, progress=False)
    final = [{k: float(v[i]) for k, v in grp.items()} for grp in last for i in range(len(grp["loss"]))] \
        if last else [{} for _ in dicts]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, d, m, f in zip(names, dicts, metrics, final):
        d.to("cpu")
        d.config["metrics"] = {**m, **{f"final_batch_{k}": v for k, v in f.items()},
                               "train_seconds": round(elapsed, 2), "resumed_from_step": start}
        paths.append(save_dictionary(d, out / name))
    print(f"trained {len(paths)} dictionaries in {elapsed:.1f}s -> {out}")
    for name, m in zip(names, metrics):
        print(f"  {name}: FVU {m['fvu']:.4f}  L0 {m['l0']:.1f}  dead {100 * m['dead_fraction']:.1f}%")
    return paths
