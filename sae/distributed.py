"""Training a sweep under `torchrun`: data-parallel steps (DDP) or sweep members shared out across ranks.

Why these two modes. Data-parallel (`--distribute data`, the default under
torchrun): every rank draws the same global batch sequence as a single
process would (same seed, same sink filter), keeps a contiguous block of its
rows, and DDP averages the gradients. Each rank's loss is weighted so that
the average of the ranks' gradients is the gradient of the single-process
loss on the whole batch, so N processes follow the single-process trajectory
to float tolerance, and a checkpoint is the same whatever N wrote it.
Sweep-parallel (`--distribute sweep`): members of the (R, α/k) sweep that do
not fit on one device are shared out; each rank trains its members on the
whole batch with no gradient exchange, as it would alone.

What has to stay identical across ranks in data-parallel mode, and how:
- the learning-rate schedule: a function of the step alone;
- weights and Adam moments: every rank applies the same averaged gradient;
  decoder-norm projections (`before_update` / `after_update`) act on it;
- TopK's dead-latent counter `since_fired` (read by AuxK): updated from the
  global batch here (OR of the ranks' "fired" masks, + global row count),
  exactly as one process updates it;
- the losses used for NaN checks and stored metrics: reduced over ranks.
- JumpReLU's L0-coefficient warm-up: a function of the step alone, set by
  the loop on every rank (`SweepStack.at_step`); its threshold gradients
  (straight-through) are sums over rows like every other gradient.
BatchTopK and Matryoshka keep the k·B largest activations of the *whole*
batch, which no rank sees alone, so they train data-parallel nowhere:
`--distribute sweep`. Which kinds train data-parallel, and how each one's
loss depends on the batch, is their registry row's (`data_parallel`, `loss_over`).
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
from torch import Tensor, nn

from activations.distributed import Launch
from common.errors import UserError
from sae.kinds.topk import batch_variance
from sae.registry import kind_spec

MODES = ("data", "sweep")


def data_parallel(kind: str) -> bool:
    """Does `kind` train data-parallel? Its registry row says (its loss is a sum over rows up to a global
    constant, and its only batch-updated state is `since_fired`)."""
    return kind_spec(kind).data_parallel


def variance_normalised(kind: str) -> bool:
    """Is the loss of `kind` Σ err² / (the batch's total variance), as TopKStack.forward's, not a mean over rows?"""
    return kind_spec(kind).loss_over == "variance"


def resolve_mode(launch: Launch, distribute: str | None, kind: str) -> str | None:
    """None for one process (`--distribute` changes nothing there), else 'data' or 'sweep'."""
    if not launch.distributed:
        return None
    mode = distribute or "data"
    if mode not in MODES:
        raise UserError(f"--distribute {mode!r} is not a mode: choose data or sweep")
    if mode == "data" and not data_parallel(kind):
        raise UserError(f"--kind {kind} cannot train data-parallel (its top-k spans the whole batch, which no rank "
                        "holds): add --distribute sweep, or train it in one process")
    return mode


def share_members(ratios: Sequence[float], world: int) -> list[list[int]]:
    """Member indices per rank: the largest first, each to the least-loaded rank (cost ∝ R); deterministic."""
    load = [0.0] * world
    shares: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(ratios)), key=lambda j: (-float(ratios[j]), j)):
        rank = min(range(world), key=lambda r: (load[r], r))
        shares[rank].append(i)
        load[rank] += float(ratios[i])
    return [sorted(s) for s in shares]


def row_block(n_rows: int, launch: Launch) -> tuple[int, int]:
    """[lo, hi) of this rank's contiguous block of a global batch of `n_rows` (sizes differ by at most one)."""
    base, extra = divmod(n_rows, launch.world_size)
    lo = launch.rank * base + min(launch.rank, extra)
    return lo, lo + base + (1 if launch.rank < extra else 0)


class _Groups(nn.Module):
    """All stacks as one module, so one DDP wrapper reduces every gradient in buckets."""

    def __init__(self, groups: list[nn.Module]):
        super().__init__()
        self.groups = nn.ModuleList(groups)

    def forward(self, x: Tensor) -> list[dict[str, Tensor]]:
        return [g(x) for g in self.groups]


class DataParallelStepper:
    """Callable global batch -> per-group results, like `sae.step.Stepper`, but each rank steps on its rows.

    Loss weighting: DDP averages gradients over N ranks, so rank r backpropagates
    N·w_r·loss_r with Σ_r w_r·loss_r equal to the single-process loss. For the L1
    kinds the loss is a mean over rows, so w_r = b_r/B (b_r of the B rows here;
    the sink filter can make blocks one row unequal). TopK divides a sum over
    rows by the batch's variance, so w_r = var(local rows)/var(global batch).
    The returned loss / mse / l1 are the global values (one all-reduce), so NaN
    checks and stored metrics agree on every rank; `c` holds this rank's rows.
    """

    def __init__(self, groups: list[nn.Module], optimizer: torch.optim.Optimizer, device: str, launch: Launch):
        from torch.nn.parallel import DistributedDataParallel

        kinds = {g.kind for g in groups}
        if not all(data_parallel(k) for k in kinds):
            raise UserError(f"--kind {', '.join(sorted(kinds))} cannot train data-parallel: add --distribute sweep")
        self.groups, self.optimizer, self.launch = groups, optimizer, launch
        cuda = torch.device(device).type == "cuda"
        ids = [torch.device(device).index or 0] if cuda else None
        # buffers are kept equal by `_sync` below; DDP's per-step broadcast from rank 0 would only cost time
        # (newer torch names the switch forward_sync_buffers and warns on the old name; it still copies rank 0's
        # buffers once at init, which changes nothing: every rank builds or loads the same ones)
        params = inspect.signature(DistributedDataParallel.__init__).parameters
        no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
        self.module = DistributedDataParallel(_Groups(groups), device_ids=ids, **no_sync)

    def __call__(self, x: Tensor) -> list[dict]:
        import torch.distributed as dist

        n_rows, world = x.shape[0], self.launch.world_size
        if n_rows < world:
            raise UserError(f"a batch of {n_rows} rows cannot be split over {world} processes: raise --batch-size")
        lo, hi = row_block(n_rows, self.launch)
        local = x[lo:hi]
        rows = torch.tensor((hi - lo) / n_rows, device=x.device)
        by_variance = [variance_normalised(g.kind) for g in self.groups]
        variance = batch_variance(local) / batch_variance(x) if any(by_variance) else None
        weights = [variance if v else rows for v in by_variance]
        before = [g.since_fired.clone() if hasattr(g, "since_fired") else None for g in self.groups]
        results = self.module(local)
        total = torch.stack([(r["loss"] * w).sum() for r, w in zip(results, weights)]).sum()
        (total * world).backward()
        for g in self.groups:
            g.before_update()
        self.optimizer.step()
        for g in self.groups:
            g.after_update()
        self.optimizer.zero_grad(set_to_none=True)

        # one all-reduce: the weighted loss / mse / l1 of every model, and every TopK "fired" mask
        parts = [torch.stack([r["loss"].detach() * w, r["mse"].detach() * rows, r["l1"].detach() * rows]).flatten()
                 for r, w in zip(results, weights)]
        fired = [(g.since_fired == 0).flatten().to(x.dtype) for g, b in zip(self.groups, before) if b is not None]
        flat = torch.cat(parts + fired)
        dist.all_reduce(flat)
        out, at = [], 0
        for r in results:
            n = r["loss"].shape[0]
            loss, mse, l1 = flat[at:at + 3 * n].view(3, n)
            at += 3 * n
            out.append({**{k: v.detach() for k, v in r.items()}, "loss": loss, "mse": mse, "l1": l1})
        with torch.no_grad():
            for g, old in zip(self.groups, before):
                if old is None:
                    continue
                hit = flat[at:at + old.numel()].view_as(old) > 0
                at += old.numel()
                # what one process does with the whole batch: since_fired.add_(B).masked_fill_(fired, 0)
                g.since_fired.copy_(old.add_(n_rows).masked_fill_(hit, 0))
        return out
