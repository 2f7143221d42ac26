"""One optimisation step of every model in a sweep, eager or replayed from a CUDA graph.

At the paper's batch size (256) a step on a GPU is a few dozen small
kernels, so launching them from Python costs far more than running them.
On CUDA the step is therefore captured once as a CUDA graph and replayed:
the same kernels, in the same order, on the same memory, without the
per-kernel launch cost. Warm-up steps before the capture are ordinary eager
steps on real batches, and capturing executes nothing, so every batch is
still used exactly once.
"""

from __future__ import annotations

import torch
from torch import Tensor

WARMUP_STEPS = 3  # eager steps before capture (lets cuBLAS and the allocator settle)


def lr_factor(step: int, total: int, warmup: float, decay: float) -> float:
    """Multiplier of the base learning rate at `step` (0-based): linear warm-up, constant, linear decay to 0.

    A function of the step alone, so a resumed run follows the same schedule.
    """
    warm = int(round(warmup * total))
    cool = int(round(decay * total))
    if warm and step < warm:
        return (step + 1) / warm
    if cool and step >= total - cool:
        return max(0.0, (total - step) / cool)
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Set every group's learning rate; in place when it is a tensor (a replayed CUDA graph reads that tensor)."""
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


def _forward_backward_update(groups: list, optimizer: torch.optim.Optimizer, x: Tensor) -> list[dict]:
    results = [g(x) for g in groups]
    torch.stack([r["loss"].sum() for r in results]).sum().backward()
    for g in groups:
        g.before_update()
    optimizer.step()
    for g in groups:
        g.after_update()
    return results


def eager_step(groups: list, optimizer: torch.optim.Optimizer, x: Tensor) -> list[dict]:
    """Every group forward on the same batch; the summed loss gives each model exactly its own gradient,
    because no parameter is shared between models. Each kind's objective may edit gradients before the
    optimiser step and weights after it (`SweepStack.before_update` / `after_update`)."""
    results = _forward_backward_update(groups, optimizer, x)
    optimizer.zero_grad(set_to_none=True)
    # detached, so no caller keeps this step's autograd graph alive into the next step
    return [{k: v.detach() for k, v in r.items()} for r in results]


def make_optimizer(params: list[torch.nn.Parameter], lr: float, betas: tuple[float, float],
                   device: str) -> torch.optim.Adam:
    """Adam, fused into one kernel per step (on CPU too); capturable on CUDA so a graph can replay it.

    On CUDA the learning rate is a device tensor, so the schedule can change
    it between replays of a captured step (a Python float would be baked in).
    """
    cuda = torch.device(device).type == "cuda"
    rate = torch.tensor(lr, device=device) if cuda else lr
    return torch.optim.Adam(params, lr=rate, betas=betas, fused=True, capturable=cuda)


class Stepper:
    """Callable x -> per-group results; eager on CPU, graph-replayed on CUDA after a short warm-up."""

    def __init__(self, groups: list, optimizer: torch.optim.Optimizer, device: str, use_graph: bool | None = None):
        self.groups = groups
        self.optimizer = optimizer
        self.cuda = torch.device(device).type == "cuda"
        self.use_graph = self.cuda if use_graph is None else (use_graph and self.cuda)
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_x: Tensor | None = None
        self.static_out: list[dict] | None = None
        self.side = torch.cuda.Stream() if self.use_graph else None

    def __call__(self, x: Tensor) -> list[dict]:
        self.calls += 1
        if not self.use_graph:
            return eager_step(self.groups, self.optimizer, x)
        if self.graph is None and self.calls <= WARMUP_STEPS:
            # warm-up on a side stream, as torch.cuda.graph requires for a later capture
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                out = eager_step(self.groups, self.optimizer, x)
            torch.cuda.current_stream().wait_stream(self.side)
            return out
        if self.graph is None:
            self._capture(x)
        self.static_x.copy_(x, non_blocking=True)
        self.graph.replay()
        return self.static_out

    def _capture(self, x: Tensor) -> None:
        torch.cuda.synchronize()
        self.static_x = x.detach().clone()
        self.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            results = _forward_backward_update(self.groups, self.optimizer, self.static_x)
        self.static_out = results
