"""Training objectives of every learned kind: folding the input scale, TopK/BatchTopK mechanics, held-out splits,
and resume of the kinds with extra state."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

import sae
from sae.data import TensorSource, split_cache
from sae.kind_settings import AuxKSettings, BatchTopKSettings, JumpReLUSettings, MatryoshkaSettings, UntiedSettings
from sae.kinds.stack import StackOptions, auxk_fvu, batched_top_k, sparse_decode
from sae.registry import LEARNED_KINDS, objective_class
from sae.settings import TrainSettings
from sae.step import Stepper, lr_factor
from sae.train import train_sweep
from tests.support.sae_data import sparse_data

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one torch thread (tests/conftest.py)

VALUES = {"tied_sae": [1e-2, 1e-1], "untied_sae": [1e-2, 1e-1], "topk": [2, 5], "batchtopk": [2, 5],
          "matryoshka_batchtopk": [2, 5], "jumprelu": [0.1, 1.0]}
THRESHOLD_TRAINED = ("batchtopk", "matryoshka_batchtopk")  # a batch-level top-k in training, a threshold at inference


@pytest.mark.parametrize("kind", LEARNED_KINDS)
def test_folding_the_input_scale_makes_raw_encode_and_decode_exact(kind):
    """A stack trained on s·x, saved as a dictionary of raw x: codes are c(s·x)/s and x̂ is x̂(s·x)/s."""
    torch.manual_seed(0)
    stack = objective_class(kind)(8, 2.0, VALUES[kind], seed=3, options=StackOptions(data_mean=torch.randn(8)))
    with torch.no_grad():
        for p in stack.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if kind in THRESHOLD_TRAINED:
            stack.theta.fill_(0.05)
    stack.after_update()  # as after every training step (TopK kinds renormalise their decoder rows here)
    stack.eval()
    x, scale = torch.randn(64, 8) * 3 + 1, 0.37
    out = stack(x * scale)
    for i, d in enumerate(stack.dictionaries({"hook": "h"}, input_scale=scale)):
        assert d.kind == kind
        if kind in THRESHOLD_TRAINED:  # inference is the learned threshold, not the batch-level top-k of training
            pre = (x * scale - stack.b_d[i].detach()) @ stack.W_e[i].detach().T + stack.b_e[i].detach()
            if stack.free_decoder:  # (their default) what is ranked and thresholded is pre-activation × row norm
                pre = pre * stack.W_d[i].detach().norm(dim=-1)
            want = torch.where(pre > 0.05, pre, torch.zeros(())) / scale
        else:
            want = out["c"][i].detach() / scale
        if kind == "jumprelu":  # its decoder rows are free (as SAELens's): the saved codes carry their norms
            want = want * stack.W_d[i].detach().norm(dim=-1)
        torch.testing.assert_close(d.encode(x), want, atol=1e-5, rtol=1e-4)
        if kind not in THRESHOLD_TRAINED:
            torch.testing.assert_close(d.decode(d.encode(x)), out["x_hat"][i].detach() / scale, atol=1e-5, rtol=1e-4)


def test_batched_top_k_keeps_each_models_own_k():
    pre = torch.tensor([[[3.0, -1.0, 2.0, 1.0]], [[3.0, -1.0, 2.0, 1.0]]])
    c = batched_top_k(pre, torch.tensor([1, 3]), 3)
    assert c.tolist() == [[[3.0, 0.0, 0.0, 0.0]], [[3.0, 0.0, 2.0, 1.0]]]


def test_the_sparse_decoder_gives_the_dense_product_and_its_gradients():
    """x̂ from the k kept (value, index) pairs equals codes @ W_d, and so do the gradients to W_d and the values."""
    torch.manual_seed(0)
    pre = torch.randn(2, 7, 12, requires_grad=True)
    w = torch.randn(2, 12, 5, requires_grad=True)
    ks = [2, 4]
    dense = batched_top_k(pre, torch.tensor(ks), 4)
    target = torch.randn(2, 7, 5)
    ((dense @ w - target) ** 2).sum().backward()
    g_pre, g_w = pre.grad.clone(), w.grad.clone()
    pre.grad, w.grad = None, None
    values, index = torch.relu(pre).topk(4, dim=-1)
    sparse = sparse_decode(values, index, w, ks)
    assert torch.allclose(sparse, dense @ w, atol=1e-5)
    ((sparse - target) ** 2).sum().backward()
    assert torch.allclose(pre.grad, g_pre, atol=1e-5) and torch.allclose(w.grad, g_w, atol=1e-5)


def test_batchtopk_keeps_k_per_token_on_average_and_learns_a_threshold():
    torch.manual_seed(0)
    stack = objective_class("batchtopk")(8, 2.0, [3], seed=0)
    x = torch.randn(50, 8)
    out = stack(x)
    per_token = (out["c"][0] > 0).sum(-1)
    assert int(per_token.sum()) == 3 * 50 and int(per_token.max()) > 3 > int(per_token.min())  # k·B over the batch
    kept = out["c"][0].detach()[out["c"][0] > 0]
    assert float(stack.theta[0]) == pytest.approx(float(kept.min()))  # first estimate: the smallest kept value



def test_the_batchtopk_threshold_estimate_skips_a_batch_with_nothing_kept_and_then_averages():
    """Written without a host read (CUDA-graph safe): the same three cases as the plain Python branches."""
    stack = objective_class("batchtopk")(2, 1.0, [1], seed=0)
    stack.train()
    assert float(stack.theta[0]) < 0  # no estimate yet
    stack.codes(-torch.ones(1, 4, 2))  # no positive pre-activation: nothing kept, no estimate
    assert float(stack.theta[0]) < 0
    stack.codes(torch.tensor([[[3.0, 0.0], [0.0, 0.0], [5.0, 1.0], [0.0, 2.0]]]))  # keeps 5, 3, 2, 1
    assert float(stack.theta[0]) == pytest.approx(1.0)  # first estimate: the smallest kept value
    stack.codes(-torch.ones(1, 4, 2))
    assert float(stack.theta[0]) == pytest.approx(1.0)  # a batch with nothing kept leaves it
    stack.codes(torch.full((1, 4, 2), 4.0))
    m = stack.momentum
    assert float(stack.theta[0]) == pytest.approx(m * 1.0 + (1 - m) * 4.0)  # then a running average


def test_topk_decoder_rows_stay_unit_and_gradients_along_them_are_removed():
    torch.manual_seed(0)
    stack = objective_class("topk")(8, 2.0, [3], seed=0)
    opt = torch.optim.Adam(stack.parameters(), lr=0.1)
    for _ in range(5):
        out = stack(torch.randn(32, 8) * 4)
        out["loss"].sum().backward()
        stack.before_update()
        along = torch.linalg.vecdot(stack.W_d.grad, stack.W_d.detach())
        assert float(along.abs().max()) < 1e-5
        opt.step()
        stack.after_update()
        opt.zero_grad()
        torch.testing.assert_close(stack.W_d.detach().norm(dim=-1), torch.ones(1, 16))


@pytest.mark.parametrize("graph", [False, True])
def test_auxk_reconstructs_the_residual_only_with_dead_latents(monkeypatch, graph):
    """graph: as while a CUDA graph is captured, where the no-dead-latent shortcut (a host read) is skipped:
    the loss must come out the same from the full computation."""
    import sae.kinds.stack as stack_module

    monkeypatch.setattr(stack_module, "capturing_graph", lambda t: graph)
    pre = torch.tensor([[[5.0, 1.0, 2.0]]])
    w_dec = torch.eye(3)[None]
    residual = torch.tensor([[[0.0, 1.0, 2.0]]])
    variance = torch.tensor(1.0)
    none_dead = auxk_fvu(pre, torch.zeros(1, 3), 10, w_dec, residual, variance, k_aux=2)
    assert float(none_dead) == 0.0
    # latents 1 and 2 dead: their pre-activations (1, 2) reconstruct the residual (1, 2) exactly
    dead = auxk_fvu(pre, torch.tensor([[0.0, 10.0, 10.0]]), 10, w_dec, residual, variance, k_aux=2)
    assert float(dead) == pytest.approx(0.0, abs=1e-7)
    # only latent 1 dead: latent 2's share of the residual (2² = 4) is left, scaled by #dead / k_aux = 1/2
    one = auxk_fvu(pre, torch.tensor([[0.0, 10.0, 0.0]]), 10, w_dec, residual, variance, k_aux=2)
    assert float(one) == pytest.approx(4.0 * 0.5)


def test_learning_rate_warms_up_and_decays():
    factors = [lr_factor(s, 100, 0.1, 0.2) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0 and factors[50] == 1.0
    assert factors[80] == pytest.approx(1.0) and factors[99] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(factors[80:], factors[81:]))


def _write_marked_cache(path, n_ctx=40, ctx=8, d=4):
    """Activation value = context index, except position 0 which is -1 (a stand-in for an attention sink)."""
    acts = np.repeat(np.arange(n_ctx, dtype=np.float32)[:, None, None], ctx, axis=1).repeat(d, axis=2)
    acts[:, 0, :] = -1.0
    hook = "blocks.0.hook_resid_post"
    with h5py.File(path, "w") as f:
        f.create_dataset("tokens", data=np.zeros((n_ctx, ctx), np.int32), chunks=(16, ctx))
        f.create_group("acts").create_dataset(hook, data=acts, chunks=(16, ctx, d))
        f.attrs.update({"format_version": 1, "settings": "{}", "model_id": "m", "hooks": json.dumps([hook]),
                        "widths": json.dumps({hook: d}), "context_length": ctx, "bos_prepended": False,
                        "fragments": False, "dtype": "float32", "n_contexts": n_ctx, "n_contexts_done": n_ctx})
    return hook


def test_the_held_out_contexts_and_position_0_are_never_drawn_for_training(tmp_path):
    hook = _write_marked_cache(tmp_path / "c.h5")
    train, held = split_cache(tmp_path / "c.h5", hook, 0.25, skip_first=True)
    assert train.contexts == (0, 30) and held.contexts == (30, 40) and train.n_tokens == 30 * 7
    seen = torch.cat(list(train.batches(10, train.n_tokens * 3, seed=1)))  # three epochs
    assert seen.min() >= 0 and seen.max() <= 29  # no sink position, no held-out context
    assert set(seen[:, 0].unique().tolist()) == set(range(30))
    held_seen = torch.cat(list(held.batches(7, held.n_tokens, seed=0)))
    assert held_seen.min() >= 30
    kept_first, _ = split_cache(tmp_path / "c.h5", hook, 0.25, skip_first=False)
    assert float(torch.cat(list(kept_first.batches(10, kept_first.n_tokens, seed=0))).min()) == -1.0
    with pytest.raises(Exception, match="eval-fraction"):
        split_cache(tmp_path / "c.h5", hook, 1.0, skip_first=True)


def test_massive_activation_tokens_are_left_out_of_training_and_held_out_batches(tmp_path):
    """Sinks beyond position 0 (norm ~100x the rest, as position 1 at SmolLM2's layer 23) are dropped by norm."""
    n_ctx, ctx, d = 40, 8, 6
    acts = np.random.default_rng(0).normal(size=(n_ctx, ctx, d)).astype(np.float32)
    acts[::5, 1] *= 100.0  # position 1 of every fifth context, in training and held-out contexts alike
    hook = _write_marked_cache(tmp_path / "c.h5", n_ctx, ctx, d)
    with h5py.File(tmp_path / "c.h5", "r+") as f:
        f["acts"][hook][...] = acts
    body = np.linalg.norm(acts[:30, 1:], axis=-1)
    train, held = split_cache(tmp_path / "c.h5", hook, 0.25, skip_first=True, sink_factor=20)
    assert train.max_norm == pytest.approx(20 * np.median(body), rel=0.1)  # the median of a sample of the split
    assert train.info["sink_norm_limit"] == train.max_norm == held.max_norm
    seen = torch.cat(list(train.batches(10, train.n_tokens, seed=1)))
    held_seen = torch.cat(list(held.batches(7, held.n_tokens, seed=0)))
    assert seen.norm(dim=1).max() < 20 and held_seen.norm(dim=1).max() < 20
    assert seen.shape[0] == 30 * 7 - 6 and held_seen.shape[0] == 10 * 7 - 2  # exactly the planted ones are gone
    kept, _ = split_cache(tmp_path / "c.h5", hook, 0.25, skip_first=True, sink_factor=0)
    assert kept.max_norm is None and torch.cat(list(kept.batches(10, kept.n_tokens, seed=1))).norm(dim=1).max() > 50
    with pytest.raises(Exception, match="sink-factor"):
        split_cache(tmp_path / "c.h5", hook, 0.25, skip_first=True, sink_factor=0.5)


class _Interrupt(Stepper):
    """Stops the run (as a kill would) after `stop_after` steps."""

    stop_after = 25

    def __call__(self, x):
        if self.calls >= self.stop_after:
            raise KeyboardInterrupt
        return super().__call__(x)


@pytest.mark.parametrize("kind, own", [("topk", AuxKSettings(dead_tokens=200)),
                                       ("batchtopk", BatchTopKSettings(dead_tokens=200)),
                                       ("batchtopk", BatchTopKSettings(dead_tokens=200, decoder_norm="free")),
                                       ("matryoshka_batchtopk", MatryoshkaSettings(dead_tokens=200, decoder_norm="free",
                                                                                   matryoshka_aux=True)),
                                       ("matryoshka_batchtopk", MatryoshkaSettings(dead_tokens=200)),
                                       ("untied_sae", UntiedSettings(decoder_norm="free")),
                                       ("jumprelu", JumpReLUSettings(l0_warmup=0.5))])
def test_an_interrupted_topk_run_resumes_bit_identically(tmp_path, kind, own):
    """Their dead-latent counters and threshold are checkpointed and JumpReLU's L0 warm-up is a function of the
    step, so the resumed run is the uninterrupted one."""
    x, _ = sparse_data(d=8, n_true=12, n=4000, seed=6)
    settings = TrainSettings(hook="h", kind=kind, ks=[2, 3], l0_coefficients=[0.3, 1.0], l1s=[1e-2, 1e-1],
                             batch_size=64, tokens=64 * 60, checkpoint_every=10, kind_settings=own)
    [a, b] = train_sweep(TensorSource(x), settings, tmp_path / "whole", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_sweep(TensorSource(x), settings, tmp_path / "killed", progress=False, stepper_factory=_Interrupt)
    assert list((tmp_path / "killed").glob(".train-*/state.json"))
    resumed = train_sweep(TensorSource(x), settings, tmp_path / "killed", progress=False)
    for whole, again in zip([a, b], resumed):
        w, r = sae.load(whole).tensors(), sae.load(again).tensors()
        assert all(torch.equal(w[k], r[k]) for k in w), kind
    assert sae.load(resumed[0]).config["metrics"]["resumed_from_step"] == 20
