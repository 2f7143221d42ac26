"""JumpReLU's pre-activation loss against dead latents (Anthropic's, SAELens's `pre_act_loss`).

A JumpReLU latent whose threshold lies above all its pre-activations gets no gradient from anything else: its
codes are zero and no pre-activation is inside the threshold's kernel. Without this loss such latents stay
dead for good (a third of them on SmolLM2's layer 3); with it they come back.
"""

from __future__ import annotations

import math

import pytest
import torch

import cli
import sae
from sae.data import TensorSource
from sae.kind_settings import PRE_ACT_DEAD_SHARE, JumpReLUSettings
from sae.kinds.jumprelu import JumpReLUStack
from sae.kinds.stack import StackOptions
from sae.settings import TrainSettings
from sae.train import train_sweep
from tests.support.sae_data import sparse_data

pytestmark = pytest.mark.usefixtures("one_thread")


def _stack(weight: float, window: int, seed: int = 0) -> JumpReLUStack:
    own = JumpReLUSettings(pre_act_loss=weight, pre_act_dead_tokens=window)
    return JumpReLUStack(8, 2.0, [0.5], seed=seed, options=StackOptions(kind_settings=own))


def test_the_pre_activation_loss_is_the_dead_latents_gap_to_their_thresholds():
    torch.manual_seed(0)
    x = torch.randn(32, 8)
    on, off = _stack(0.2, window=100), _stack(0.0, window=100)
    off.load_state_dict(on.state_dict())
    dead = torch.zeros(16, dtype=torch.bool)
    dead[[1, 4, 9]] = True
    for s in (on, off):
        s.eval()  # no counter update, so both see the same dead set
        s.since_fired[0] = torch.where(dead, 500.0, 10.0)  # 500 tokens without firing >= the window of 100
    with torch.no_grad():
        pre = on.pre_activations(x)[0]
        theta = on.log_threshold[0].exp()
        norms = on.W_d[0].norm(dim=-1)
        want = 0.2 * (torch.relu(theta - pre) * norms).sum(0)[dead].sum() / x.shape[0]
        extra = on(x)["loss"][0] - off(x)["loss"][0]
    assert float(want) > 0
    torch.testing.assert_close(extra, want, rtol=1e-5, atol=1e-6)
    # only the dead latents' encoder rows and biases receive its gradient, and it raises their pre-activations
    on.zero_grad()
    off.zero_grad()
    on(x)["loss"].sum().backward()
    off(x)["loss"].sum().backward()
    delta = on.b_e.grad[0] - off.b_e.grad[0]
    assert bool((delta[dead] < 0).all()) and bool((delta[~dead].abs() < 1e-7).all())


def test_the_counter_resets_where_a_latent_fires_and_counts_rows_elsewhere():
    stack = _stack(0.01, window=1000)
    x = torch.randn(64, 8)
    stack.train()
    stack.since_fired.fill_(300.0)
    with torch.no_grad():
        stack.log_threshold[0, :8] = math.log(1e-6)  # fire on about half the rows
        stack.log_threshold[0, 8:] = math.log(1e6)  # never fire
        c = stack(x)["c"][0]
    fired = (c > 0).any(0)
    assert bool(fired[:8].all()) and not bool(fired[8:].any())
    assert stack.since_fired[0, :8].eq(0).all() and stack.since_fired[0, 8:].eq(364).all()


@pytest.mark.parametrize("weight, revived", [(0.01, True), (0.0, False)])
def test_latents_that_start_above_every_pre_activation_come_back_only_with_the_loss(weight, revived):
    """8 of 16 latents start with θ = 3, ten times the default start and above every pre-activation: dead from step 1."""
    x, _ = sparse_data(d=8, n_true=12, n=4096, p=0.1, seed=0)
    x = x * (math.sqrt(8) / x.norm(dim=1).mean())  # the normalisation train-sae applies: E‖x‖ = √d
    stack = _stack(weight, window=2048, seed=0)
    with torch.no_grad():
        stack.log_threshold[0, 8:] = math.log(3.0)
    optimizer = torch.optim.Adam(stack.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(0)
    stack.train()
    fired = torch.zeros(16, dtype=torch.bool)
    for _ in range(1000):
        batch = x[torch.randint(0, x.shape[0], (128,), generator=generator)]
        optimizer.zero_grad()
        out = stack(batch)
        out["loss"].sum().backward()
        optimizer.step()
        fired |= (out["c"][0] > 0).any(0)
    print(f"weight {weight}: of the 8 latents started dead, {int(fired[8:].sum())} fired during training")
    assert bool(fired[:8].all())
    assert int(fired[8:].sum()) == (8 if revived else 0)


def test_the_default_window_is_a_share_of_the_run_and_is_recorded(tmp_path):
    x, _ = sparse_data(d=8, n_true=12, n=4000, seed=1)
    settings = TrainSettings(hook="h", kind="jumprelu", l0_coefficients=[0.3], batch_size=64, tokens=64 * 50)
    [path] = train_sweep(TensorSource(x), settings, tmp_path, progress=False)
    training = sae.load(path).config["training"]
    assert training["pre_act_dead_tokens"] == 64 * 50 // PRE_ACT_DEAD_SHARE
    assert training["pre_act_loss"] == JumpReLUSettings().pre_act_loss > 0
    assert JumpReLUSettings(pre_act_dead_tokens=7).for_run(10**6).pre_act_dead_tokens == 7  # a given one stays


def test_a_negative_weight_or_an_empty_window_is_refused(tmp_path, capsys):
    base = ["train-sae", "--cache", str(tmp_path / "missing.h5"), "--hook", "h", "--kind", "jumprelu",
            "--out", str(tmp_path / "d")]
    assert cli.main(base + ["--pre-act-loss", "-1"]) == 2
    assert "--pre-act-loss -1.0 must be 0 (off) or more" in capsys.readouterr().err
    assert cli.main(base + ["--pre-act-dead-tokens", "0"]) == 2
    assert "--pre-act-dead-tokens 0 must be positive" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
