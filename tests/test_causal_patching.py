"""Feature patching and KL, checked against full forward passes and hand computations.

Dictionaries: the toolkit's real `signed_neuron` kind (saved and loaded with
sae.load) and a test-only signed rotated basis, which reconstruct exactly,
and the paper's neuron basis (negative part set to 0), which does not.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.errors import UserError
from activations.hooks import logits_with_edits, run_with_cache
from causal.attribution import attribution_scores
from causal.patching import (coefficient_delta, decoder_rows, kl_rows, last_logits, pad_token_id, pair_batch,
                             task_check)
from causal.prompts import IOIConfig, make_ioi_pairs
from causal.selection import GreedyConfig, PatchProblem, greedy_curve
from causal.suffix import SuffixRunner
from tests.support.tiny_models import make_tiny_model, make_tokenizer

TINY_NAMES = ["John", "Mary", "Mar", "Jo", "Ber", "Fr", "Ger"]


def _saved_and_loaded(dictionary, folder):
    """A dictionary as the patch-ioi command sees it: written to a folder and read back with sae.load."""
    import sae

    return sae.load(dictionary.save(folder))


def signed_neurons(d: int, folder, hook: str = "blocks.1.hook_resid_post"):
    """The real `signed_neuron` kind: features +e_i and −e_i, nonnegative codes that reconstruct x exactly."""
    from sae.baselines import signed_neuron_basis

    loaded = _saved_and_loaded(signed_neuron_basis(d, {"hook": hook}), folder)
    assert loaded.kind == "signed_neuron"
    return loaded


class RotatedSigned:
    """A random orthonormal basis Q, signed: exact reconstruction, dense codes, plus a decoder bias."""

    def __init__(self, d: int, seed: int = 0):
        self.d_in, self.n_features = d, 2 * d
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))
        self.q, self.bias = q.T.contiguous(), torch.full((d,), 0.3)

    def encode(self, x):
        y = (x - self.bias) @ self.q.T
        return torch.cat([torch.relu(y), torch.relu(-y)], dim=-1)

    def decode(self, c):
        return (c[..., : self.d_in] - c[..., self.d_in :]) @ self.q + self.bias


class ReluNeurons:
    """The paper's default basis: coordinates with the negative part set to 0 (not invertible).

    `used` < d keeps only the first coordinates as features; `dead` adds features that never fire.
    """

    def __init__(self, d: int, dead: int = 0, used: int | None = None):
        self.d_in, self.used, self.dead = d, used or d, dead
        self.n_features = self.used + dead

    def encode(self, x):
        return torch.cat([torch.relu(x[..., : self.used]), torch.zeros(*x.shape[:-1], self.dead)], dim=-1)

    def decode(self, c):
        rest = torch.zeros(*c.shape[:-1], self.d_in - self.used)
        return torch.cat([c[..., : self.used], rest], dim=-1)


def _sharpen(model):
    """Random tiny models are nearly uniform; scaling weights gives KLs worth measuring (0.02-0.2)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.mul_(5)
            if name.endswith(("final_layer_norm.weight", "ln_f.weight", "model.norm.weight")):
                p.mul_(10)
    return model


_SETUPS: dict = {}


def _setup(arch: str, n_prompts: int = 6):
    """A sharpened tiny model and its prompt batch, built once per (arch, n_prompts); tests never modify them."""
    key = (arch, n_prompts)
    if key not in _SETUPS:
        tok = make_tokenizer(add_bos=arch == "llama")
        model = _sharpen(make_tiny_model(arch, len(tok)))
        pairs = make_ioi_pairs(tok, IOIConfig(n_prompts=n_prompts, seed=0, names=TINY_NAMES))
        _SETUPS[key] = (model, pair_batch(pairs, pad_token_id(tok)))
    return _SETUPS[key]


def _reference_last_logits(model, ids, lengths, edits=None):
    """Full forward, all positions' logits, then index each prompt's last real position."""
    logits = logits_with_edits(model, ids, edits or {})
    return logits[torch.arange(ids.shape[0]), lengths - 1].double()


def _np_kl(p_logits, q_logits) -> float:
    """Mean over rows of Σ p log(p/q), in numpy."""
    p_logits, q_logits = p_logits.double().numpy(), q_logits.double().numpy()
    lp = p_logits - np.log(np.exp(p_logits - p_logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - p_logits.max(-1, keepdims=True)
    lq = q_logits - np.log(np.exp(q_logits - q_logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - q_logits.max(-1, keepdims=True)
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


def _problem(model, batch, hook, dictionary, rows_device="cpu"):
    cf_logits = last_logits(model, batch.cf_ids, batch.lengths)
    runner = SuffixRunner(model, hook, batch)
    x_cf = run_with_cache(model, batch.cf_ids, [hook])[hook]
    delta = coefficient_delta(dictionary, runner.x_clean, x_cf, batch.differs, rows_device)
    return PatchProblem(runner, delta, decoder_rows(dictionary), cf_logits)


def test_kl_direction_against_hand_computation():
    p = torch.tensor([[0.5, 0.5], [0.2, 0.8]], dtype=torch.float64)
    q = torch.tensor([[0.9, 0.1], [0.6, 0.4]], dtype=torch.float64)
    got = kl_rows(p.log(), q.log())
    want = [0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1), 0.2 * math.log(0.2 / 0.6) + 0.8 * math.log(0.8 / 0.4)]
    reverse = [0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5), 0.6 * math.log(0.6 / 0.2) + 0.4 * math.log(0.4 / 0.8)]
    assert got.tolist() == pytest.approx(want, rel=1e-9)
    assert not np.allclose(got.tolist(), reverse, rtol=1e-2)
    # Logits are softmax-normalised: shifting them changes nothing.
    assert kl_rows(p.log() + 3.0, q.log() - 1.0).tolist() == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"])
def test_exact_basis_all_patched_is_the_counterfactual_and_none_patched_is_clean(arch, hook, tmp_path):
    """Issue 5: the signed neuron dictionary with every feature patched gives KL ≈ 0; none patched gives KL(clean ‖ cf)."""
    from sae.baselines import neuron_basis

    model, batch = _setup(arch)
    clean = _reference_last_logits(model, batch.clean_ids, batch.lengths)
    cf = _reference_last_logits(model, batch.cf_ids, batch.lengths)
    kl_clean_cf = _np_kl(clean, cf)
    assert kl_clean_cf > 1e-3
    width = run_with_cache(model, batch.clean_ids[:1], [hook])[hook].shape[-1]
    for dictionary in (signed_neurons(width, tmp_path / "signed", hook), RotatedSigned(width)):
        problem = _problem(model, batch, hook, dictionary)
        every = torch.ones(dictionary.n_features, dtype=torch.bool)
        kl_all, kl_none = problem.kl(torch.stack([problem.edit(every), problem.edit(~every)])).tolist()
        assert kl_all < 1e-5 * kl_clean_cf
        assert kl_none == pytest.approx(kl_clean_cf, rel=1e-4)
        assert kl_none != pytest.approx(_np_kl(cf, clean), rel=1e-2)  # direction: KL(patched ‖ cf), not reverse
    # the real `neuron` kind (negative part dropped) patched everywhere stays away from the counterfactual
    neurons = _saved_and_loaded(neuron_basis(width, {"hook": hook}), tmp_path / "neuron")
    problem = _problem(model, batch, hook, neurons)
    kl_all = float(problem.kl(problem.edit(torch.ones(neurons.n_features, dtype=torch.bool))[None])[0])
    assert kl_all > 1e-3 * kl_clean_cf


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.1.mlp.hook_post"])
def test_relu_neuron_patch_equals_the_explicit_edit(arch, hook):
    """All features of the paper's neuron basis patched: x' = x + relu(x̄) − relu(x), run the long way."""
    model, batch = _setup(arch)
    x_cf = run_with_cache(model, batch.cf_ids, [hook])[hook]
    problem = _problem(model, batch, hook, ReluNeurons(x_cf.shape[-1]))
    got = float(problem.kl(problem.edit(torch.ones(problem.n_features, dtype=torch.bool))[None])[0])
    patched = _reference_last_logits(model, batch.clean_ids, batch.lengths,
                                     {hook: lambda x: x + torch.relu(x_cf) - torch.relu(x)})
    cf = _reference_last_logits(model, batch.cf_ids, batch.lengths)
    want = _np_kl(patched, cf)
    assert got == pytest.approx(want, rel=1e-4, abs=1e-9)
    assert want > 1e-4  # the negative part is not patched, so this is not the counterfactual


def test_suffix_runner_matches_full_forward_with_edit(arch):
    model, batch = _setup(arch)
    for hook in ["blocks.0.hook_resid_pre", "blocks.1.hook_mlp_out", "blocks.1.mlp.hook_post",
                 "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]:
        runner = SuffixRunner(model, hook, batch)
        assert runner.suffix_only
        edits = torch.randn(2, *runner.x_clean.shape, generator=torch.Generator().manual_seed(1))
        got = runner.logits(edits).detach()
        for r in range(2):
            want = _reference_last_logits(model, batch.clean_ids, batch.lengths, {hook: lambda x, r=r: x + edits[r]})
            assert torch.allclose(got[r].double(), want, atol=1e-4, rtol=1e-4), hook
    # The model is left as it was: same block list, no hooks.
    after = _reference_last_logits(model, batch.clean_ids, batch.lengths)
    assert torch.allclose(after, last_logits(model, batch.clean_ids, batch.lengths).double(), atol=1e-5)


def test_non_affine_decoder_is_a_user_error():
    class Squashed(RotatedSigned):
        def decode(self, c):
            return torch.tanh(super().decode(c))

    with pytest.raises(UserError, match="does not decode affinely"):
        decoder_rows(Squashed(8))


def test_task_check_on_known_logits():
    pairs_ids = torch.tensor([[1, 2], [3, 4]])

    class B:
        n = 2
        io_ids = torch.tensor([0, 1])
        s_ids = torch.tensor([1, 2])
        cf_io_ids = torch.tensor([2, 0])

    clean = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])  # prompt 0: IO wins by 1; prompt 1: S wins by 2
    cf = torch.tensor([[0.0, 1.0, 2.0], [0.0, 1.0, 3.0]])
    check = task_check(B, clean, cf)
    assert check.per_prompt == [[1.0, True], [-2.0, False]]
    assert check.logit_diff == pytest.approx((1.0 - 2.0) / 2)
    assert check.accuracy == 0.5 and check.top1_accuracy == 0.5
    assert not check.does_ioi
    assert pairs_ids.shape == (2, 2)


def _naive_greedy(model, batch, hook, dictionary, taus):
    """The protocol written plainly: one full forward per candidate, no memo, no batching, no suffix runner."""
    x_cf = run_with_cache(model, batch.cf_ids, [hook])[hook]
    x = run_with_cache(model, batch.clean_ids, [hook])[hook]
    diff = ((batch.clean_ids != batch.cf_ids).cumsum(1) > 0) & batch.valid
    delta = (dictionary.encode(x_cf) - dictionary.encode(x)) * diff[..., None]
    w = dictionary.decode(torch.eye(dictionary.n_features)) - dictionary.decode(torch.zeros(dictionary.n_features))
    cf = _reference_last_logits(model, batch.cf_ids, batch.lengths)

    def kl(patched: set[int]) -> float:
        mask = torch.zeros(dictionary.n_features)
        mask[list(patched)] = 1.0
        edit = (delta * mask) @ w
        return _np_kl(_reference_last_logits(model, batch.clean_ids, batch.lengths, {hook: lambda a: a + edit}), cf)

    scale = delta.abs()[batch.valid].mean(0) * w.norm(dim=1)
    patched = {j for j in range(dictionary.n_features) if bool((delta[..., j] != 0).any())}
    current, last, curve = kl(patched), {}, []
    visits = 0
    for tau in taus:
        for j in sorted(patched, key=lambda j: (last.get(j, float("-inf")), float(scale[j]), j)):
            without = kl(patched - {j})
            visits += 1
            last[j] = without - current
            if without - current < tau:
                patched, current = patched - {j}, without
        curve.append((len(patched), current, sorted(patched)))
    return curve, visits


def test_greedy_equals_the_plain_protocol_for_any_batch_width():
    model, batch = _setup("gpt_neox")
    hook = "blocks.1.hook_resid_post"
    dictionary = ReluNeurons(32, dead=5, used=16)
    taus = [float(t) for t in np.logspace(-4, -0.5, 5)]
    want, visits = _naive_greedy(model, batch, hook, dictionary, taus)
    forwards = {}
    for rows in (1, 4):
        problem = _problem(model, batch, hook, dictionary)
        res = greedy_curve(problem, GreedyConfig(taus=taus, rows=rows))
        assert res.n_features == 21 and res.n_trivial >= 5
        assert res.curve[0].n_features == 21  # the curve starts with every feature patched
        got = [(p.n_features, p.kl) for p in res.curve[1:]]
        assert [n for n, _ in got] == [n for n, _, _ in want]
        assert [kl for _, kl in got] == pytest.approx([kl for _, kl, _ in want], rel=1e-4, abs=1e-8)
        assert res.patched_final == want[-1][2]
        forwards[rows] = res.forwards
        if rows == 1:  # memoisation: fewer evaluations than the plain protocol's one per visit (+1 for the start)
            assert res.evaluations < visits + 1
    assert forwards[4] < forwards[1]  # speculation: several candidates per forward pass
    ns = [p.n_features for p in res.curve]
    assert ns == sorted(ns, reverse=True) and ns[-1] < ns[1]


def test_integrated_gradients_add_up_to_the_kl_change(tmp_path):
    model, batch = _setup("llama")
    hook = "blocks.1.hook_resid_post"
    problem = _problem(model, batch, hook, signed_neurons(32, tmp_path / "signed", hook))
    every = torch.ones(problem.n_features, dtype=torch.bool)
    kl_all, kl_none = problem.kl(torch.stack([problem.edit(every), problem.edit(~every)])).tolist()
    scores = attribution_scores(problem, steps=32)
    assert float(scores.sum()) == pytest.approx(kl_all - kl_none, rel=0.05)
    # Features that never differ get exactly zero attribution.
    never = ~(problem.delta != 0).flatten(0, 1).any(0)
    assert bool((scores[never] == 0).all())


def test_screen_ladder_measures_the_top_m_states_exactly():
    """The ladder between "all" and the greedy's start: top-m by |score| among features that ever differ, m = K·2^i."""
    from causal.attribution import screen_ladder

    model, batch = _setup("gpt_neox")
    hook = "blocks.1.hook_resid_post"
    x_cf = run_with_cache(model, batch.cf_ids, [hook])[hook]
    width = x_cf.shape[-1]
    problem = _problem(model, batch, hook, ReluNeurons(width))
    nontrivial = [j for j in range(width) if bool(problem.touched[:, j].any())]
    scores = -torch.arange(width, dtype=torch.float32)  # |score| ranks the last feature first
    ladder = screen_ladder(problem, scores, smallest=3)
    assert [m for m, _, _ in ladder] == [m for m in (3, 6, 12, 24, 48) if m < len(nontrivial)]
    ranked = nontrivial[::-1]
    cf = _reference_last_logits(model, batch.cf_ids, batch.lengths)
    for m, kl, norm in ladder:
        mask = torch.zeros(width)
        mask[ranked[:m]] = 1.0
        patched = _reference_last_logits(model, batch.clean_ids, batch.lengths,
                                         {hook: lambda x, mask=mask: x + mask * (torch.relu(x_cf) - torch.relu(x))})
        assert kl == pytest.approx(_np_kl(patched, cf), rel=1e-4, abs=1e-9)
        assert norm > 0
