"""The CUDA path (graph-replayed steps); skipped where there is no GPU, as in CI."""

from __future__ import annotations

import pytest
import torch

from sae.kinds.tied import TiedStack
from sae.step import Stepper, make_optimizer
from tests.support.sae_data import sparse_data

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _run(use_graph: bool, l1s: list[float], data: torch.Tensor, steps: int = 40):
    group = TiedStack(d_in=data.shape[1], ratio=2, values=l1s, seed=0).to("cuda")
    opt = make_optimizer(list(group.parameters()), 1e-3, (0.9, 0.999), "cuda")
    stepper = Stepper([group], opt, "cuda", use_graph=use_graph)
    losses = []
    for i in range(steps):
        out = stepper(data[(i % 8) * 128:(i % 8 + 1) * 128])
        losses.append(out[0]["loss"].detach().clone())
    return group, torch.stack(losses), stepper


def test_graph_replay_trains_exactly_like_eager_steps():
    x, _ = sparse_data(d=64, n_true=96, n=1024, seed=0)
    data = x.cuda()
    eager, eager_losses, _ = _run(False, [1e-3, 1e-2], data)
    graphed, graph_losses, stepper = _run(True, [1e-3, 1e-2], data)
    assert stepper.graph is not None  # the replay path really ran
    torch.testing.assert_close(graph_losses, eager_losses, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(graphed.M, eager.M, rtol=1e-5, atol=1e-6)
    assert not torch.equal(graphed.M.detach(), TiedStack(64, 2, [1e-3, 1e-2], 0).M.cuda())


def test_sweep_matches_separate_runs_on_cuda():
    x, _ = sparse_data(d=64, n_true=96, n=1024, seed=1)
    data = x.cuda()
    sweep, _, _ = _run(True, [1e-3, 3e-3, 1e-2], data)
    alone, _, _ = _run(True, [3e-3], data)
    torch.testing.assert_close(sweep.M[1], alone.M[0], rtol=1e-4, atol=1e-5)


def test_checkpoint_round_trip_of_a_capturable_optimizer(tmp_path):
    from sae.checkpoint import load_checkpoint, save_checkpoint

    x, _ = sparse_data(d=64, n_true=96, n=1024, seed=2)
    data = x.cuda()
    first, _, stepper = _run(True, [1e-3, 1e-2], data, steps=10)
    save_checkpoint(tmp_path, 10, [first], stepper.optimizer, {})
    twin = TiedStack(d_in=64, ratio=2, values=[1e-3, 1e-2], seed=0).to("cuda")
    twin_opt = make_optimizer(list(twin.parameters()), 1e-3, (0.9, 0.999), "cuda")
    assert load_checkpoint(tmp_path, [twin], twin_opt) == 10
    resumed = Stepper([twin], twin_opt, "cuda")
    for i in range(10, 30):
        batch = data[(i % 8) * 128:(i % 8 + 1) * 128]
        stepper(batch)
        resumed(batch)
    torch.testing.assert_close(twin.M, first.M, rtol=1e-5, atol=1e-6)


def test_train_sweep_end_to_end_on_cuda(tmp_path):
    import sae
    from sae.data import TensorSource
    from sae.train import TrainSettings, train_sweep

    x, truth = sparse_data(d=16, n_true=24, n=20_000, p=0.05, seed=0)
    settings = TrainSettings(hook="h", ratios=[2.0], l1s=[1e-2], batch_size=512, tokens=300_000, lr=5e-3,
                             checkpoint_every=100)
    [path] = train_sweep(TensorSource(x), settings, tmp_path, device="cuda", progress=False)
    from sae.metrics import mmcs

    assert mmcs(truth, sae.load(path).directions) >= 0.9


@pytest.mark.parametrize("kind", ["untied_sae", "topk", "batchtopk", "matryoshka_batchtopk", "jumprelu"])
def test_every_learned_kind_replays_its_graph_like_eager_steps(kind):
    """Each objective's step must be capturable (no host read inside it, dead-latent losses included: the
    windows here are short enough that latents die during the run) and replay the eager numbers."""
    from sae.kind_settings import AuxKSettings, BatchTopKSettings, JumpReLUSettings, MatryoshkaSettings
    from sae.kinds.stack import StackOptions
    from sae.registry import objective_class

    own = {"topk": AuxKSettings(dead_tokens=256), "batchtopk": BatchTopKSettings(dead_tokens=256),
           "matryoshka_batchtopk": MatryoshkaSettings(dead_tokens=256),
           "jumprelu": JumpReLUSettings(pre_act_dead_tokens=256)}.get(kind)
    value = {"untied_sae": 1e-2, "jumprelu": 0.3}.get(kind, 4)
    x, _ = sparse_data(d=32, n_true=48, n=1024, seed=3)
    data = x.cuda()

    def run(use_graph: bool):
        group = objective_class(kind)(32, 2.0, [value], seed=0, options=StackOptions(kind_settings=own)).to("cuda")
        opt = make_optimizer(list(group.parameters()), 1e-3, (0.9, 0.999), "cuda")
        stepper = Stepper([group], opt, "cuda", use_graph=use_graph)
        losses = [stepper(data[(i % 8) * 128:(i % 8 + 1) * 128])[0]["loss"].detach().clone() for i in range(40)]
        return group, torch.stack(losses), stepper

    eager, eager_losses, _ = run(False)
    graphed, graph_losses, stepper = run(True)
    assert stepper.graph is not None
    torch.testing.assert_close(graph_losses, eager_losses, rtol=1e-4, atol=1e-6)
    for (name, a), b in zip(eager.named_parameters(), graphed.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=f"{kind}: {name}")
