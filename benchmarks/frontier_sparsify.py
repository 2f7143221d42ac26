"""The sparsify side of `bench_frontier.py`: runs in `--reference-python` (a venv with eai-sparsify), as a script.

Split from bench_frontier.py so the toolkit process never imports sparsify
and the benchmark stays readable; `bench_frontier._run_worker` starts
`python frontier_sparsify.py '<spec json>'`. How the loop mirrors
sparsify's Trainer is in bench_frontier.py's docstring.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

SPEED_WARMUP = 3  # untimed steps before a speed measurement
EVAL_BATCH = 4096  # held-out tokens per evaluation batch


class _SparsifyRun:
    """sparsify SparseCoders (one per k) and its Trainer's default optimiser; `step(x)` is one Trainer step."""

    def __init__(self, spec: dict, d_in: int):
        import torch
        from schedulefree import ScheduleFreeWrapper
        from sparsify import SparseCoder, SparseCoderConfig
        from sparsify.sign_sgd import SignSGD

        self.saes = {}
        for k in spec["ks"]:
            torch.manual_seed(spec["seed"])  # sparsify's Trainer: torch.manual_seed(seed) right before each SparseCoder
            self.saes[k] = SparseCoder(d_in, SparseCoderConfig(k=k, num_latents=spec["num_latents"]), "cpu",
                                       dtype=torch.float32)
        self.lrs = {k: spec["lr"] or 5e-3 / (sae.num_latents / 2 ** 14) ** 0.5 for k, sae in self.saes.items()}
        self.opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=self.lrs[k])
                                                for k, sae in self.saes.items()]), momentum=0.95)
        self.opt.train()
        self.auxk_alpha, self.dead_after = spec["auxk_alpha"], spec["dead_feature_threshold"]
        self.since_fired = {k: torch.zeros(spec["num_latents"], dtype=torch.long) for k in self.saes}
        self.did_fire = {k: torch.zeros(spec["num_latents"], dtype=torch.bool) for k in self.saes}
        self.fvu_sum = {k: 0.0 for k in self.saes}
        self.steps = 0

    def step(self, x) -> None:
        import torch

        total_variance = (x - x.mean(0)).pow(2).sum()
        for k, sae in self.saes.items():
            if self.steps == 0:
                sae.b_dec.data = x.mean(0).to(sae.dtype)
            if sae.cfg.normalize_decoder:
                sae.set_decoder_norm_to_unit_norm()
            dead_mask = self.since_fired[k] > self.dead_after if self.auxk_alpha > 0 else None
            o = sae(x=x, y=x, dead_mask=dead_mask, total_variance=total_variance)
            self.did_fire[k][o.latent_indices.flatten()] = True
            self.fvu_sum[k] += float(o.fvu.detach())
            (o.fvu + self.auxk_alpha * o.auxk_loss + o.multi_topk_fvu / 8).backward()
        for sae in self.saes.values():
            sae.remove_gradient_parallel_to_decoder_directions()
        self.opt.step()
        self.opt.zero_grad()
        with torch.no_grad():
            for k in self.saes:
                self.since_fired[k] += x.shape[0]
                self.since_fired[k][self.did_fire[k]] = 0
                self.did_fire[k].zero_()
        self.steps += 1


def _without_sinks(x, max_norm: float | None):
    """The batch as `sae.data.CacheSource` hands it to our trainer: rows over the sink limit dropped."""
    if max_norm is None:
        return x
    keep = x.norm(dim=1) <= max_norm
    return x[keep] if bool(keep.any()) else x


def sparsify_worker(spec: dict) -> None:
    """Train one sparsify TopK SAE per k on our cache's training split; save, time and measure them.

    With spec["mode"] == "speed": time `steps` steps on batches already in memory (after 3 untimed ones).
    """
    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    import torch

    torch.set_num_threads(spec["threads"])
    import sparsify

    from activations.reader import ActivationCache

    hook, batch = spec["hook"], spec["batch_size"]
    steps = spec["tokens"] // batch
    with ActivationCache(spec["cache"]) as cache:
        d_in = cache.width(hook)
        if spec.get("mode") == "speed":
            data = [_without_sinks(x, spec.get("max_norm")) for x in cache.iter_batches(
                hook, batch, n_tokens=(steps + SPEED_WARMUP) * batch, seed=spec["seed"],
                contexts=tuple(spec["train_contexts"]), skip_first=True)]
    run = _SparsifyRun(spec, d_in)
    if spec.get("mode") == "speed":
        for x in data[:SPEED_WARMUP]:
            run.step(x)
        started = time.perf_counter()
        for x in data[SPEED_WARMUP:]:
            run.step(x)
        print(json.dumps({"seconds": time.perf_counter() - started, "steps": len(data) - SPEED_WARMUP}))
        return
    out = Path(spec["out"])
    tokens_seen = 0
    started = time.perf_counter()
    with ActivationCache(spec["cache"]) as cache:
        for x in cache.iter_batches(hook, batch, n_tokens=steps * batch, seed=spec["seed"],
                                    contexts=tuple(spec["train_contexts"]), skip_first=True):
            x = _without_sinks(x, spec.get("max_norm"))
            run.step(x)
            tokens_seen += x.shape[0]
            if spec.get("progress") and run.steps % max(1, steps // 10) == 0:
                print(f"  sparsify {hook} batch {batch}: step {run.steps}/{steps}, "
                      f"{time.perf_counter() - started:.0f}s", flush=True)
    seconds = time.perf_counter() - started
    run.opt.eval()  # sparsify's Trainer saves the schedule-free average (optimizer.eval() in _checkpoint)
    hookpoint = f"layers.{hook.split('.')[1]}"  # sparsify's name for the output of decoder layer L
    folders = {}
    for k, sae in run.saes.items():
        folder = out / f"k{k}" / hookpoint
        sae.save_to_disk(folder)
        folders[k] = str(folder)
    metrics = _sparsify_heldout(run.saes, spec, hook)
    record = {"library": f"sparsify {sparsify.__version__}", "torch": torch.__version__, "threads": spec["threads"],
              "hook": hook, "batch_size": batch, "steps": steps, "tokens": tokens_seen,
              "num_latents": spec["num_latents"], "lr": {str(k): v for k, v in run.lrs.items()},
              "optimizer": "ScheduleFreeWrapper(SignSGD, momentum=0.95)", "auxk_alpha": run.auxk_alpha,
              "seconds": seconds, "models": len(run.saes), "tokens_per_s_per_model": tokens_seen * len(run.saes) / seconds,
              "decoder_norm_range": {str(k): [float(s.W_dec.detach().norm(dim=1).min()),
                                             float(s.W_dec.detach().norm(dim=1).max())]
                                     for k, s in run.saes.items()},
              "train_fvu_mean": {str(k): run.fvu_sum[k] / max(1, steps) for k in run.saes},
              "folders": {str(k): v for k, v in folders.items()}, "heldout_sparsify_forward": metrics}
    (out / "run.json").write_text(json.dumps(record, indent=1))


def _sparsify_heldout(saes: dict, spec: dict, hook: str) -> dict:
    """FVU, L0, dead fraction with sparsify's own forward, by the formula of sae.metrics.reconstruction_metrics."""
    import torch

    n, total, total_sq = 0, None, None
    acc = {k: {"sq": 0.0, "l0": 0.0, "fired": torch.zeros(s.num_latents, dtype=torch.bool)} for k, s in saes.items()}
    with torch.no_grad():
        x_all = heldout_tokens(Path(spec["cache"]), hook, spec["eval_contexts"])
        for x in _without_sinks(x_all, spec.get("max_norm")).split(EVAL_BATCH):
            x64 = x.to(torch.float64)
            total = x64.sum(0) if total is None else total + x64.sum(0)
            total_sq = (x64 ** 2).sum(0) if total_sq is None else total_sq + (x64 ** 2).sum(0)
            n += x.shape[0]
            for k, sae in saes.items():
                top_acts, top_idx, _ = sae.encode(x)
                x_hat = sae.decode(top_acts, top_idx)
                acc[k]["sq"] += float((x_hat.to(torch.float64) - x64).pow(2).sum())
                active = top_acts > 0
                acc[k]["l0"] += float(active.sum())
                acc[k]["fired"][top_idx[active]] = True
    mean = total / n
    variance = float((total_sq / n - mean ** 2).clamp_min(0).sum())
    return {str(k): {"fvu": a["sq"] / n / variance, "l0": a["l0"] / n,
                     "dead_fraction": float((~a["fired"]).float().mean()), "eval_tokens": n} for k, a in acc.items()}


class SparsifyMaths:
    """A sparsify save read with safetensors and evaluated with sparsify's own maths, for `reconstruction_metrics`.

    c = TopK_k(ReLU(W_enc (x − b_dec) + b_enc)) (sparsify's `encode`; its
    ranking ignores decoder norms), x̂ = c W_dec + b_dec (its `decode`). Used
    when `sae.load` refuses the save; sparsify itself is not imported.
    """

    def __init__(self, folder: Path):
        from safetensors.torch import load_file

        cfg = json.loads((Path(folder) / "cfg.json").read_text())
        t = load_file(str(Path(folder) / "sae.safetensors"))
        self.w_enc, self.b_enc, self.w_dec, self.b_dec = t["encoder.weight"], t["encoder.bias"], t["W_dec"], t["b_dec"]
        self.k, self.d_in, self.n_features = int(cfg["k"]), int(cfg["d_in"]), int(self.w_enc.shape[0])

    def encode(self, x):
        import torch

        pre = torch.relu((x - self.b_dec) @ self.w_enc.T + self.b_enc)
        values, index = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, index, values)

    def decode(self, c):
        return c @ self.w_dec + self.b_dec


def heldout_tokens(cache: Path, hook: str, contexts) -> "torch.Tensor":
    """Every held-out token vector (position 0 excluded), float32, in the reader's seeded order.

    Read one context's worth per batch (so the reader drops nothing) and
    concatenated: evaluation then runs in a few large batches. Tiny batches
    are slow on a loaded machine, where every op waits for all its threads.
    """
    import torch

    from activations.reader import ActivationCache

    with ActivationCache(cache) as c:
        return torch.cat(list(c.iter_batches(hook, c.context_length - 1, n_tokens=None, seed=1,
                                             contexts=tuple(contexts), skip_first=True)))


if __name__ == "__main__":
    sparsify_worker(json.loads(sys.argv[1]))
