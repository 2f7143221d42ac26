"""The two kinds of issue 29: JumpReLU training and Matryoshka BatchTopK, each its module, its row, its settings.

What each must do, on data where the answer is known: Matryoshka keeps the parent features of a hierarchy
that BatchTopK absorbs into their children; JumpReLU's thresholds learn through the straight-through
estimator, and its L0 follows the coefficient to the planted L0; both export to SAELens's layout and load
back with the same codes, and train, evaluate and export through the command line.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import cli
import sae
from sae.data import TensorSource
from sae.kind_settings import JumpReLUSettings, MatryoshkaSettings
from sae.kinds.jumprelu import JumpReLUStack
from sae.kinds.matryoshka import MatryoshkaStack
from sae.kinds.stack import StackOptions
from sae.settings import TrainSettings
from sae.train import train_sweep
from tests.support.sae_data import HOOK, hierarchical_data, parents_f1, sparse_data

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one torch thread (tests/conftest.py)


def test_matryoshka_keeps_the_parents_that_batchtopk_absorbs_into_their_children(tmp_path):
    """8 parents, each with 2 mutually exclusive children that fire only with it (half of the parent's tokens).

    The batch budget (k = 2) is below the 2.4 features per token of the data, so BatchTopK saves latents by
    absorbing each parent into latents for parent+child (its parent latents then miss the tokens a child
    takes: F1 ~0.84); Matryoshka's first third of latents must reconstruct alone, so the parents keep latents
    of their own that fire on all of their tokens (F1 ~0.97). Measured over seeds 0-3: 0.84-0.87 against
    0.89-0.97, Matryoshka ahead on each; this is seed 2.
    """
    x, _, parent_on = hierarchical_data(d=32, parents=8, children=2, p_parent=0.2, p_child=0.5, seed=2)
    scores = {}
    for kind, own in (("batchtopk", None), ("matryoshka_batchtopk", MatryoshkaSettings(matryoshka_prefixes=[1 / 3]))):
        settings = TrainSettings(hook="h", kind=kind, ratios=[0.75], ks=[2], batch_size=256, tokens=150_000, seed=2,
                                 kind_settings=own)
        [path] = train_sweep(TensorSource(x), settings, tmp_path / kind, progress=False)
        dictionary = sae.load(path)
        assert dictionary.kind == kind and dictionary.n_features == 24
        scores[kind] = parents_f1(dictionary, x, parent_on)
    print(f"parents' F1: {scores}")
    assert scores["matryoshka_batchtopk"] >= 0.9
    assert scores["matryoshka_batchtopk"] >= scores["batchtopk"] + 0.05
    assert sae.load(tmp_path / "matryoshka_batchtopk" / "matryoshka_R0.75_k_2").config["matryoshka_widths"] == [8, 24]


def test_matryoshka_loss_adds_each_inner_prefix_reconstruction_to_batchtopk():
    torch.manual_seed(0)
    own = MatryoshkaSettings(matryoshka_prefixes=[0.25, 0.5])
    stack = MatryoshkaStack(8, 2.0, [3], seed=1, options=StackOptions(kind_settings=own))
    assert stack.widths == [4, 8, 16]
    x = torch.randn(32, 8)
    out = stack(x)
    w, b = stack.W_d[0], stack.b_d[0]
    c = out["c"][0] / w.norm(dim=-1)  # free rows (the default): the codes carry each row's norm
    variance = (x - x.mean(0)).pow(2).sum()
    inner = sum(((c[:, :n] @ w[:n] + b) - x).pow(2).sum() / variance for n in (4, 8))
    torch.testing.assert_close(out["inner_fvu"][0], inner)
    whole = ((c @ w + b) - x).pow(2).sum() / variance
    torch.testing.assert_close(out["loss"][0], whole + inner + own.auxk_alpha * out["aux"][0])


def test_the_jumprelu_thresholds_learn_through_the_rectangle_kernel():
    """log θ's gradient is the straight-through estimate: θ·Σ_b −K((p − θ)/ε)/ε·(θ·∂L/∂c + λ)/B per latent."""
    torch.manual_seed(0)
    own = JumpReLUSettings(jumprelu_init_threshold=0.05, jumprelu_bandwidth=0.1)
    stack = JumpReLUStack(6, 2.0, [0.5], seed=0, options=StackOptions(kind_settings=own))
    x = torch.randn(64, 6)
    out = stack(x)
    out["loss"].sum().backward()
    with torch.no_grad():
        pre = stack.pre_activations(x)[0]
        theta = stack.log_threshold[0].exp()
        near = ((pre - theta) / own.jumprelu_bandwidth).abs() < 0.5
        dloss_dc = 2 * (out["x_hat"][0] - x) @ stack.W_d[0].T / x.shape[0]  # the squared error summed over d
        per_row = -near.float() / own.jumprelu_bandwidth * (theta * dloss_dc + 0.5 / x.shape[0])
        want = theta * per_row.sum(0)
    assert int(near.any(0).sum()) >= 3 and not bool(near.all(0).all())  # some latents have rows in the window
    torch.testing.assert_close(stack.log_threshold.grad[0], want, atol=1e-6, rtol=1e-4)
    assert bool((stack.log_threshold.grad[0][~near.any(0)] == 0).all())  # no row near θ: no gradient
    # the encoder learns from the kept codes only: a latent that never fired gets no encoder gradient
    silent = ~(pre > theta).any(0)
    if bool(silent.any()):
        assert bool((stack.W_e.grad[0][silent] == 0).all())


def test_jumprelu_l0_falls_with_the_coefficient_to_the_planted_l0(tmp_path):
    """~1.2 of 24 planted directions per vector: the thresholds rise with λ until the planted features are found."""
    x, truth = sparse_data(d=16, n_true=24, n=20_000, p=0.05, seed=0)
    settings = TrainSettings(hook="h", kind="jumprelu", ratios=[2.0], l0_coefficients=[0.03, 0.3, 3.0],
                             batch_size=512, tokens=500_000)
    paths = train_sweep(TensorSource(x), settings, tmp_path, progress=False)
    assert [p.name for p in paths] == ["jumprelu_R2_l0_coefficient_0.03", "jumprelu_R2_l0_coefficient_0.3",
                                       "jumprelu_R2_l0_coefficient_3"]
    dicts = [sae.load(p) for p in paths]
    l0 = [d.config["metrics"]["l0"] for d in dicts]
    print(f"L0 at λ 0.03, 0.3, 3: {l0}")
    assert l0[0] > l0[1] > l0[2] and abs(l0[2] - 1.2) < 0.5
    assert all(d.kind == "jumprelu" and d.config["training"]["l0_coefficients"] == [0.03, 0.3, 3.0] for d in dicts)
    # the thresholds rose from where they started (in normalised units), most for the largest λ
    start = JumpReLUSettings().jumprelu_init_threshold
    scale = dicts[0].config["input_scale"]
    medians = [float(d.tensors()["threshold"].median()) * scale for d in dicts]  # back in normalised units
    assert medians[2] > medians[1] > start
    best = (truth @ dicts[2].directions.T).max(dim=1).values.mean()
    assert best >= 0.9  # the sparsest member found the planted directions


@pytest.mark.parametrize("kind, args", [
    ("jumprelu", ["--l0-coefficient", "0.1", "1", "--jumprelu-bandwidth", "0.3", "--l0-warmup", "0.2"]),
    ("matryoshka_batchtopk", ["--k", "4", "8", "--matryoshka-prefixes", "0.25", "0.5", "--dead-tokens", "500"]),
])
def test_the_new_kinds_train_evaluate_and_export_through_the_cli(kind, args, tiny_cache, tmp_path, capsys):
    out = tmp_path / "dicts"
    rc = cli.main(["train-sae", "--cache", str(tiny_cache), "--hook", HOOK, "--kind", kind, "--ratio", "2",
                   "--batch-size", "64", "--tokens", str(64 * 60), "--export", "saelens", "--out", str(out), *args])
    assert rc == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert len(names) == 2 and all(n.startswith("jumprelu_R2_l0_coefficient_" if kind == "jumprelu"
                                                else "matryoshka_R2_k_") for n in names)
    first = sae.load(out / names[0])
    training = first.config["training"]
    if kind == "jumprelu":  # its own knobs are recorded, other kinds' are not
        assert training["jumprelu_bandwidth"] == 0.3 and training["l0_warmup"] == 0.2
        assert training["jumprelu_init_threshold"] == JumpReLUSettings().jumprelu_init_threshold
        assert "ks" not in training and "auxk_alpha" not in training and "l1s" not in training
    else:
        assert training["matryoshka_prefixes"] == [0.25, 0.5] and training["dead_tokens"] == 500
        assert first.config["matryoshka_widths"] == [16, 32, 64] and "l0_coefficients" not in training
        assert "jumprelu_bandwidth" not in training
    rc = cli.main(["evaluate", "--cache", str(tiny_cache), "--dict", *(str(out / n) for n in names),
                   "--tokens", "512", "--no-model"])
    assert rc == 0
    for name in names:
        ours = sae.load(out / name)
        assert 0 < ours.config["metrics"]["fvu"] < 1 and "evaluated_on" in ours.config["metrics"]
        cfg = json.loads((out / name / "saelens" / "cfg.json").read_text())
        assert cfg["architecture"] == "jumprelu" and cfg["dictlens_kind"] == kind
        theirs = sae.load(out / name / "saelens")  # SAELens's layout, read back by our SAELens loader
        assert theirs.kind == "jumprelu"
        x = torch.randn(200, ours.d_in) * 2
        codes = ours.encode(x)
        assert 0 < float((codes > 0).float().mean()) < 1  # some codes on, some off: the threshold matters
        torch.testing.assert_close(theirs.encode(x), codes, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs.decode(codes), ours.decode(codes), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--kind", "matryoshka_batchtopk", "--matryoshka-prefixes", "0.5", "0.25"], "must be increasing fractions"),
    (["--kind", "jumprelu", "--jumprelu-bandwidth", "0"], "--jumprelu-bandwidth 0.0 must be a positive number"),
    (["--kind", "jumprelu", "--l0-coefficient", "-1"], "--l0-coefficient [-1.0] must be non-negative numbers"),
    (["--kind", "topk", "--l0-warmup", "0.1"], "--l0-warmup is an option of --kind jumprelu only"),
    (["--kind", "jumprelu", "--auxk-alpha", "0.1"], "--auxk-alpha is an option of --kind topk"),
])
def test_bad_settings_of_the_new_kinds_are_one_line_errors(args, message, tiny_cache, tmp_path, capsys):
    out = tmp_path / "dicts"
    assert cli.main(["train-sae", "--cache", str(tiny_cache), "--hook", HOOK, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_the_l0_warmup_is_a_function_of_the_step():
    stack = JumpReLUStack(4, 1.0, [1.0], seed=0, options=StackOptions(kind_settings=JumpReLUSettings(l0_warmup=0.5)))
    factors = []
    for step in (0, 1, 24, 49, 50, 99):
        stack.at_step(step, 100)
        factors.append(float(stack.warmup_factor))
    assert factors == [pytest.approx(v) for v in (1 / 50, 2 / 50, 25 / 50, 1.0, 1.0, 1.0)]
    assert math.isclose(float(JumpReLUStack(4, 1.0, [1.0], seed=0).warmup_factor), 1.0)  # no warm-up by default


def test_a_faster_threshold_is_the_same_model_with_a_larger_step_for_its_thresholds():
    """log θ = speed · t: the same θ and loss at the start, and t's gradient is speed times log θ's, so Adam (which
    moves t by about the learning rate) moves log θ speed times as far."""
    torch.manual_seed(0)
    x = torch.randn(64, 6)
    slow, fast = (JumpReLUStack(6, 2.0, [0.5], seed=0, options=StackOptions(
        kind_settings=JumpReLUSettings(jumprelu_init_threshold=0.05, jumprelu_bandwidth=0.1,
                                       jumprelu_threshold_speed=speed))) for speed in (1.0, 5.0))
    torch.testing.assert_close(fast.thresholds(), slow.thresholds())
    a, b = slow(x), fast(x)
    torch.testing.assert_close(b["loss"], a["loss"])
    a["loss"].sum().backward()
    b["loss"].sum().backward()
    assert float(slow.log_threshold.grad.abs().max()) > 0
    torch.testing.assert_close(fast.log_threshold.grad, 5.0 * slow.log_threshold.grad)
    # the saved dictionary holds θ itself, not the parameter
    torch.testing.assert_close(fast.inference_tensors(0)["threshold"], slow.inference_tensors(0)["threshold"])
