"""Free decoder norms (`--decoder-norm free`, as SAELens trains): for BatchTopK / Matryoshka the norms learn and
latents are ranked by pre-activation × norm (rescale_acts_by_decoder_norm); for the untied L1 SAE the L1 weighs
each code by its row's norm (SAELens's Standard). Either way the saved dictionary folds the norms so it encodes
and decodes exactly what the trained stack did. Also Matryoshka's per-level AuxK."""

from __future__ import annotations

import pytest
import torch

import sae
from common.errors import UserError
from sae.data import TensorSource
from sae.kind_settings import BatchTopKSettings, MatryoshkaSettings, UntiedSettings
from sae.kinds.stack import StackOptions
from sae.metrics import mmcs
from sae.registry import objective_class
from sae.settings import TrainSettings
from sae.train import train_sweep
from tests.support.sae_data import sparse_data

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one torch thread (tests/conftest.py)

FREE = {"batchtopk": BatchTopKSettings(decoder_norm="free"),
        "matryoshka_batchtopk": MatryoshkaSettings(decoder_norm="free", matryoshka_prefixes=[0.25, 0.5])}


def _stack(kind: str, settings) -> torch.nn.Module:
    return objective_class(kind)(8, 2.0, [2, 5], seed=3,
                                 options=StackOptions(data_mean=torch.randn(8), kind_settings=settings))


@pytest.mark.parametrize("kind", sorted(FREE))
def test_the_saved_dictionary_folds_the_free_norms_into_the_same_codes_and_reconstruction(kind):
    """Inference ranks by p·‖W_d‖ against the learned threshold and decodes c·W_d/‖W_d‖; the saved folder has unit
    rows, so a fold that forgot b_e, the encoder or the input scale gives other codes."""
    torch.manual_seed(0)
    stack = _stack(kind, FREE[kind])
    with torch.no_grad():
        for p in stack.parameters():
            p.add_(0.1 * torch.randn_like(p))
        stack.W_d.mul_(torch.empty(2, 16, 1).uniform_(0.3, 3.0))  # norms far from 1, different per latent
        stack.theta.fill_(0.05)
    stack.after_update()  # free: leaves the norms alone
    norms = stack.W_d.detach().norm(dim=-1)
    assert (norms - 1).abs().max() > 0.5
    stack.eval()
    x, scale = torch.randn(64, 8) * 3 + 1, 0.37
    for i, d in enumerate(stack.dictionaries({"hook": "h"}, input_scale=scale)):
        w_e, b_e, w_d, b_d = (getattr(stack, n)[i].detach() for n in ("W_e", "b_e", "W_d", "b_d"))
        ranked = ((x * scale - b_d) @ w_e.T + b_e) * norms[i]
        want = torch.where(ranked > 0.05, ranked, torch.zeros(()))
        torch.testing.assert_close(d.encode(x), want / scale, atol=1e-5, rtol=1e-4)
        recon = (b_d + (want / norms[i]) @ w_d) / scale
        torch.testing.assert_close(d.decode(d.encode(x)), recon, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(d.tensors()["W_d"].norm(dim=-1), torch.ones(16), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", sorted(FREE))
def test_training_keeps_the_batch_top_k_of_pre_activation_times_norm(kind):
    """The batch-level top k·B is taken over p·‖W_d‖ (a latent with a long row counts for more), and x̂ reads
    those codes divided by the norms: the same units the threshold is learned and folded in."""
    torch.manual_seed(1)
    stack = _stack(kind, FREE[kind])
    with torch.no_grad():
        stack.W_d.mul_(torch.empty(2, 16, 1).uniform_(0.2, 5.0))
    x = torch.randn(32, 8)
    out = stack(x)
    for i, k in enumerate([2, 5]):
        w_e, b_e, w_d, b_d = (getattr(stack, n)[i].detach() for n in ("W_e", "b_e", "W_d", "b_d"))
        norms = w_d.norm(dim=-1)
        ranked = torch.relu((x - b_d) @ w_e.T + b_e) * norms
        top = ranked.flatten().topk(k * 32).indices
        want = torch.zeros(32 * 16).scatter(0, top, ranked.flatten()[top]).view(32, 16)
        torch.testing.assert_close(out["c"][i].detach(), want, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out["x_hat"][i].detach(), b_d + (want / norms) @ w_d, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", sorted(FREE))
@pytest.mark.parametrize("decoder_norm", ["unit", "free"])
def test_only_free_training_lets_the_decoder_norms_move(kind, decoder_norm):
    settings = type(FREE[kind])(decoder_norm=decoder_norm)
    stack = _stack(kind, settings)
    x, _ = sparse_data(d=8, n_true=12, n=2048, seed=1)
    opt = torch.optim.Adam(stack.parameters(), lr=1e-2)
    for batch in x.split(128):
        opt.zero_grad()
        stack(batch)["loss"].sum().backward()
        stack.before_update()
        opt.step()
        stack.after_update()
    moved = (stack.W_d.detach().norm(dim=-1) - 1).abs().max().item()
    assert (moved > 1e-2) if decoder_norm == "free" else (moved < 1e-5)


def test_unit_batchtopk_recovers_a_known_sparse_dictionary(tmp_path):
    """As the default (free) BatchTopK does in test_sae_train: the sparser member finds the 24 true directions."""
    x, truth = sparse_data(d=16, n_true=24, n=20_000, p=0.05, seed=0)
    settings = TrainSettings(hook="h", kind="batchtopk", ratios=[2.0], batch_size=512, tokens=1_000_000, ks=[1, 8],
                             kind_settings=BatchTopKSettings(decoder_norm="unit"))
    sparse = sae.load(train_sweep(TensorSource(x), settings, tmp_path, progress=False)[0])
    assert sparse.config["training"]["decoder_norm"] == "unit"
    assert mmcs(truth, sparse.directions) >= 0.9


@pytest.mark.parametrize("kind, default", [("batchtopk", "free"), ("matryoshka_batchtopk", "free"),
                                           ("untied_sae", "unit")])
def test_each_kind_records_the_decoder_norm_it_trained_with_by_default(tmp_path, kind, default):
    """BatchTopK and Matryoshka default to SAELens's free rows, the untied L1 SAE to unit rows (free ones cost it
    7-32 % FVU on two of four SmolLM2 sites, docs/RESULTS.md); a run without --decoder-norm records which trained."""
    x, _ = sparse_data(d=16, n_true=24, n=4_096, p=0.05, seed=0)
    sweep = {"l1s": [1e-2]} if kind == "untied_sae" else {"ks": [4]}
    settings = TrainSettings(hook="h", kind=kind, ratios=[2.0], batch_size=256, tokens=256 * 40, **sweep)
    assert settings.kind_settings is None  # nothing chosen: the kind's default
    config = sae.load(train_sweep(TensorSource(x), settings, tmp_path, progress=False)[0]).config
    assert config["training"]["decoder_norm"] == default


def test_an_unknown_decoder_norm_is_refused_by_name():
    with pytest.raises(UserError, match="--decoder-norm 'fixed' must be one of unit, free"):
        BatchTopKSettings(decoder_norm="fixed").validate()


@pytest.mark.parametrize("kind", sorted(FREE))
def test_free_rows_and_the_encoder_start_at_decoder_init_norm(kind):
    """SAELens's start (rows at 0.1, the encoder their copy) is one part of Matryoshka's defaults, which beat
    SAELens's Matryoshka on SynthSAEBench (docs/RESULTS.md); BatchTopK's rows start at norm 1."""
    base = FREE[kind]
    default = _stack(kind, type(base)(**{**vars(base), "decoder_init_norm": 1.0}))
    small = _stack(kind, type(base)(**{**vars(base), "decoder_init_norm": 0.1}))
    assert torch.allclose(default.W_d.norm(dim=-1), torch.ones(2, 16))
    assert torch.allclose(small.W_d.norm(dim=-1), torch.full((2, 16), 0.1))
    assert torch.equal(small.W_e, small.W_d)
    assert torch.allclose(small.W_d * 10, default.W_d, atol=1e-6)  # same directions: only the start's norm moved


def test_decoder_init_norm_is_refused_with_unit_rows_or_when_not_positive():
    with pytest.raises(UserError, match="--decoder-init-norm 0.1 needs --decoder-norm free"):
        BatchTopKSettings(decoder_norm="unit", decoder_init_norm=0.1).validate()
    with pytest.raises(UserError, match="--decoder-init-norm 0.0 must be positive"):
        MatryoshkaSettings(decoder_init_norm=0.0).validate()
    BatchTopKSettings(decoder_norm="unit").validate()  # the default start is fine with unit rows
    MatryoshkaSettings(decoder_norm="unit").validate()  # Matryoshka's default 0.1 is for free rows only


@pytest.mark.parametrize("decoder_norm", ["unit", "free"])
def test_matryoshka_aux_revives_each_levels_dead_latents_toward_its_own_prefix_residual(decoder_norm):
    """SAELens's use_matryoshka_aux_loss, computed densely by hand: per level, the top d/2 dead latents of that
    level reconstruct x − x̂ of the prefix ending with it, scaled by min(#dead / (d/2), 1); the levels add up."""
    torch.manual_seed(2)
    settings = MatryoshkaSettings(decoder_norm=decoder_norm, matryoshka_aux=True, matryoshka_prefixes=[0.25, 0.5],
                                  dead_tokens=10)
    stack = _stack("matryoshka_batchtopk", settings)
    with torch.no_grad():
        stack.W_d.mul_(torch.empty(2, 16, 1).uniform_(0.5, 2.0))
        stack.since_fired[:, ::3] = 100  # every third latent dead, in every level
    x = torch.randn(32, 8)
    out = stack(x)
    assert stack.widths == [4, 8, 16]
    for i in range(2):
        w_e, b_e, w_d, b_d = (getattr(stack, n)[i].detach() for n in ("W_e", "b_e", "W_d", "b_d"))
        pre = (x - b_d) @ w_e.T + b_e
        c = out["c"][i].detach() / (w_d.norm(dim=-1) if decoder_norm == "free" else 1)
        dead = torch.zeros(16, dtype=torch.bool)
        dead[::3] = True
        variance = (x - x.mean(0)).pow(2).sum()
        want, start = 0.0, 0
        for width in (4, 8, 16):
            residual = x - (b_d + c[:, :width] @ w_d[:width])
            block = torch.where(dead[start:width], pre[:, start:width], torch.tensor(-torch.inf))
            n_dead = int(dead[start:width].sum())
            k = 4  # d / 2
            values, index = block.topk(k, dim=-1)
            e_hat = (torch.relu(torch.nan_to_num(values, neginf=0.0)).unsqueeze(-1) * w_d[start:width][index]).sum(1)
            want += float((e_hat - residual).pow(2).sum() / variance) * min(n_dead / k, 1.0)
            start = width
        assert float(out["aux"][i].detach()) == pytest.approx(want, rel=1e-4)


def test_free_untied_penalises_codes_times_norms_and_saves_them_folded():
    """SAELens's Standard SAE: x̂ = c·W_d with free rows, L1 = Σ c·‖W_d‖; saved with unit rows, whose codes are
    c·‖W_d‖ (what was penalised), and the same reconstruction."""
    torch.manual_seed(4)
    stack = objective_class("untied_sae")(8, 2.0, [1e-2, 1e-1], seed=3, options=StackOptions(
        data_mean=torch.randn(8), kind_settings=UntiedSettings(decoder_norm="free")))
    torch.testing.assert_close(stack.W_d.detach().norm(dim=-1), torch.full((2, 16), 0.1))  # SAELens's init
    with torch.no_grad():
        for p in stack.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, scale = torch.randn(64, 8) * 3 + 1, 0.37
    out = stack(x * scale)
    for i, d in enumerate(stack.dictionaries({"hook": "h"}, input_scale=scale)):
        w_e, b_e, w_d, b_d = (getattr(stack, n)[i].detach() for n in ("W_e", "b_e", "W_d", "b_d"))
        c = torch.relu((x * scale - b_d) @ w_e.T + b_e)
        norms = w_d.norm(dim=-1)
        assert float(out["l1"][i].detach()) == pytest.approx(float((c * norms).sum() / 64), rel=1e-5)
        torch.testing.assert_close(d.encode(x), c * norms / scale, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(d.decode(d.encode(x)), (b_d + c @ w_d) / scale, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out["x_hat"][i].detach(), b_d + c @ w_d, atol=1e-5, rtol=1e-4)


def test_unit_untied_keeps_its_objective():
    """The default: rows normalised in forward, L1 = Σ c (so a saved α means what it meant before)."""
    stack = objective_class("untied_sae")(8, 2.0, [1e-2], seed=3, options=StackOptions(data_mean=torch.zeros(8)))
    assert stack.kind_settings == UntiedSettings() and stack.kind_settings.decoder_norm == "unit"
    x = torch.randn(32, 8)
    out = stack(x)
    w_e, b_e, w_d, b_d = (getattr(stack, n)[0].detach() for n in ("W_e", "b_e", "W_d", "b_d"))
    c = torch.relu((x - b_d) @ w_e.T + b_e)
    assert float(out["l1"][0].detach()) == pytest.approx(float(c.sum() / 32), rel=1e-5)
    torch.testing.assert_close(out["x_hat"][0].detach(), b_d + c @ (w_d / w_d.norm(dim=-1, keepdim=True)),
                               atol=1e-5, rtol=1e-4)
