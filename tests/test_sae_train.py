"""Training: recovery of a known dictionary, sweep == separate runs, divergence handling, reruns."""

from __future__ import annotations

import pytest
import torch

import sae
from common.errors import UserError
from sae.baselines import random_basis
from sae.data import TensorSource
from sae.errors import TrainingDiverged
from sae.metrics import mmcs
from sae.kinds.tied import TiedStack
from sae.train import TrainSettings, train_sweep
from tests.support.sae_data import sparse_data

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one torch thread (tests/conftest.py)

HOOK = "blocks.0.hook_resid_post"


def _settings(**kw) -> TrainSettings:
    base = dict(hook=HOOK, ratios=[2.0], l1s=[1e-2], batch_size=128, tokens=128 * 60, lr=3e-3, seed=0,
                checkpoint_every=10**6)
    base.update(kw)
    return TrainSettings(**base)


@pytest.mark.parametrize("kind, values", [("tied_sae", [1e-2, 1e-1]), ("untied_sae", [1e-2, 1e-1]),
                                          ("topk", [2, 8]), ("batchtopk", [1, 8])])
def test_every_kind_recovers_a_known_sparse_dictionary_at_its_default_learning_rate(tmp_path, kind, values):
    """~1.2 of 24 true directions active per vector; the sparser member of each sweep must find them."""
    x, truth = sparse_data(d=16, n_true=24, n=20_000, p=0.05, seed=0)
    sweep = {"l1s": values} if kind.endswith("_sae") else {"ks": values}
    settings = TrainSettings(hook=HOOK, kind=kind, ratios=[2.0], batch_size=512, tokens=1_000_000, **sweep)
    paths = train_sweep(TensorSource(x), settings, tmp_path, progress=False)
    # folders come sorted by the swept value: the larger α, or the smaller k, is the sparser member
    sparse, dense = (sae.load(paths[1]), sae.load(paths[0])) if kind.endswith("_sae") else \
        (sae.load(paths[0]), sae.load(paths[1]))
    assert sparse.kind == kind and sparse.n_features == 32
    assert mmcs(truth, sparse.directions) >= 0.9
    assert sparse.config["metrics"]["l0"] < dense.config["metrics"]["l0"]
    assert settings.lr is None and sparse.config["training"]["lr"] == settings.learning_rate  # this run's default
    # control: a random basis does not match the truth
    assert mmcs(truth, random_basis(16, {}, seed=0).directions) < 0.8


@pytest.mark.slow  # two SAEs of 256 latents on 1M tokens each (~1 min per kind on a shared 2-core machine)
@pytest.mark.parametrize("kind", ["tied_sae", "untied_sae"])
def test_l1_kinds_at_their_defaults_recover_directions_in_superposition(tmp_path, kind):
    """benchmarks/bench_recovery.py's 4x set in small: 256 directions in 64 dimensions, Exp(1) magnitudes,
    ~3.7 active per vector, as many latents as directions, everything else at train-sae's defaults.

    Before issue 29 the tied SAE found 0 % of these directions at cos > 0.9: α = 1e-2 alone leaves L0 ~8x the
    true L0 (docs/RESULTS.md, "L1 defaults under superposition"). The best member of the default sweep must
    recover a good share of them.
    """
    x, truth = sparse_data(d=64, n_true=256, n=300_000, p=0.0145, seed=0, exponential=True)
    settings = TrainSettings(hook=HOOK, kind=kind, ratios=[4.0])  # width = the number of true directions
    assert settings.l1s is None and len(settings.for_data(64).l1s) > 1  # the default is a sweep of α
    paths = train_sweep(TensorSource(x), settings, tmp_path, progress=False)
    found = {}
    for path in paths:
        d = sae.load(path)
        cos = (truth @ (d.directions / d.directions.norm(dim=1, keepdim=True)).T).max(dim=1).values
        found[path.name] = float((cos > 0.9).float().mean())
    print(found)
    # measured at α 1e-2 / 3e-2 / 8e-2: tied 0 / 48 / 15 %, untied 34 / 96 / 92 % (the tied SAE is slower to
    # learn at its lr; RESULTS says why the lr stays)
    assert max(found.values()) >= {"tied_sae": 0.4, "untied_sae": 0.8}[kind], found
    # control: the same count for a random basis of the same width is nil
    random_dirs = torch.nn.functional.normalize(torch.randn(256, 64, generator=torch.Generator().manual_seed(1)), dim=1)
    assert float(((truth @ random_dirs.T).max(dim=1).values > 0.9).float().mean()) == 0.0


def test_stacked_forward_is_the_papers_loss():
    torch.manual_seed(0)
    model = TiedStack(d_in=6, ratio=2, values=[0.0, 0.5], seed=0)
    x = torch.randn(10, 6)
    out = model(x)
    for i, alpha in enumerate([0.0, 0.5]):
        m = model.M[i] / model.M[i].norm(dim=1, keepdim=True)
        c = torch.relu(x @ m.T + model.b[i])
        x_hat = c @ m
        loss = ((x - x_hat) ** 2).mean() + alpha * c.abs().sum(1).mean()
        torch.testing.assert_close(out["loss"][i], loss)
    # Xavier-uniform bound and zero bias at init
    bound = (6 / (12 + 6)) ** 0.5
    assert model.M.abs().max() <= bound and model.M.abs().max() > 0.8 * bound and model.b.abs().max() == 0


@pytest.mark.parametrize("tied", [True, False])
def test_sweep_gives_the_same_weights_as_separate_runs(tmp_path, tied):
    x, _ = sparse_data(d=8, n_true=12, n=4000, seed=1)
    kind = "tied_sae" if tied else "untied_sae"
    sweep = _settings(ratios=[1.0, 2.0], l1s=[1e-3, 1e-2, 3e-2], kind=kind)
    paths = train_sweep(TensorSource(x), sweep, tmp_path / "sweep", progress=False)
    assert len(paths) == 6
    for ratio, alpha in [(2.0, 1e-2), (1.0, 3e-2)]:
        alone = _settings(ratios=[ratio], l1s=[alpha], kind=kind)
        [single] = train_sweep(TensorSource(x), alone, tmp_path / f"alone_{ratio}_{alpha}", progress=False)
        a, b = sae.load(single), sae.load(tmp_path / "sweep" / single.name)
        assert a.kind == ("tied_sae" if tied else "untied_sae")
        for key, value in a.tensors().items():
            assert torch.equal(value, b.tensors()[key]), (single.name, key)
    # and the models really differ from each other (the test is not vacuous)
    w = [sae.load(p).tensors() for p in paths]
    first = "M" if tied else "W_e"
    assert not torch.equal(w[0][first], w[1][first])


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path):
    """Clean batches up to the first checkpoint, then NaN data (as from a float16 overflow in a cache)."""
    x, _ = sparse_data(d=8, n_true=12, n=2048, seed=2)
    clean_steps = 4
    settings = _settings(batch_size=64, tokens=64 * 40, checkpoint_every=clean_steps)
    data = torch.cat([x[:64 * clean_steps], torch.full((64 * 36, 8), float("nan"))])

    class Sequential(TensorSource):
        def batches(self, batch_size, n_tokens, seed, start_batch=0):
            for i in range(start_batch, n_tokens // batch_size):
                yield self.data[i * batch_size:(i + 1) * batch_size]

    source = Sequential(data)
    with pytest.raises(TrainingDiverged, match=r"NaN/inf .* step \d+ .*tied_R2_l1_0.01.*step 4.*--lr"):
        train_sweep(source, settings, tmp_path, progress=False)
    ckpts = list(tmp_path.glob(".train-*/state.json"))
    assert len(ckpts) == 1
    import json

    state = json.loads(ckpts[0].read_text())
    assert state["step"] == clean_steps
    from safetensors.torch import load_file

    tensors = load_file(str(ckpts[0].parent / state["tensors"]))
    assert all(torch.isfinite(t).all() for t in tensors.values())
    assert not (tmp_path / "tied_R2_l1_0.01").exists()


def test_an_inf_update_at_a_checkpoint_step_is_never_saved_as_good(tmp_path):
    """The loss of a step is computed before its update, so it cannot vouch for the weights being saved.

    At step 8 (a checkpoint step) the learning rate is made inf for one update: that step's loss is
    finite, its new weights are not. The checkpoint of step 4 must stay the last good one.
    """
    import json

    from safetensors.torch import load_file

    import sae.train as train_module

    x, _ = sparse_data(d=8, n_true=12, n=4096, seed=3)
    settings = _settings(batch_size=64, tokens=64 * 40, checkpoint_every=4)

    class InfLrAtStep8(train_module.Stepper):
        def __call__(self, batch):
            lr = self.optimizer.param_groups[0]["lr"]
            if self.calls + 1 == 8:
                for group in self.optimizer.param_groups:
                    group["lr"] = float("inf")
            out = super().__call__(batch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            assert all(torch.isfinite(r["loss"]).all() for r in out) or self.calls > 8
            return out

    with pytest.raises(TrainingDiverged, match=r"NaN/inf by step 8 for tied_R2_l1_0.01.*checkpoint \(step 4\)"):
        train_sweep(TensorSource(x), settings, tmp_path, progress=False, stepper_factory=InfLrAtStep8)
    [state_file] = list(tmp_path.glob(".train-*/state.json"))
    state = json.loads(state_file.read_text())
    assert state["step"] == 4
    tensors = load_file(str(state_file.parent / state["tensors"]))
    assert any(k.startswith("adam.") for k in tensors)
    assert all(torch.isfinite(t).all() for t in tensors.values())
    assert not (tmp_path / "tied_R2_l1_0.01").exists()


def test_rerun_is_a_no_op_and_other_settings_do_not_overwrite(tmp_path, capsys):
    x, _ = sparse_data(d=8, n_true=12, n=2000, seed=4)
    settings = _settings(tokens=128 * 10)
    [path] = train_sweep(TensorSource(x), settings, tmp_path, progress=False)
    before = (path / "weights.safetensors").read_bytes()
    train_sweep(TensorSource(x), settings, tmp_path, progress=False)
    assert "nothing to do" in capsys.readouterr().out
    with pytest.raises(UserError, match="other settings"):
        train_sweep(TensorSource(x), _settings(tokens=128 * 10, lr=1e-2), tmp_path, progress=False)
    assert (path / "weights.safetensors").read_bytes() == before


@pytest.mark.parametrize("change, message", [
    (dict(ratios=[0.0]), "--ratio"), (dict(l1s=[-1.0]), "--l1"), (dict(l1s=[1e-3, 1e-3]), "duplicates"),
    (dict(tokens=10), "less than one batch"), (dict(lr=0.0), "positive"),
])
def test_bad_settings_fail_before_training(tmp_path, change, message):
    x, _ = sparse_data(d=8, n_true=12, n=500, seed=5)
    with pytest.raises(UserError, match=message):
        train_sweep(TensorSource(x), _settings(**change), tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_a_diverged_run_is_saved_with_its_warnings_said_and_written(tmp_path, capsys):
    """lr 1e6 kills every latent of the tied SAE: the run ends, but not silently."""
    x, _ = sparse_data(d=8, n_true=12, n=4000, seed=1)
    [path] = train_sweep(TensorSource(x), _settings(batch_size=64, tokens=64 * 40, lr=1e6), tmp_path, progress=False)
    warnings = sae.load(path).config["metrics"]["warnings"]
    assert any("FVU" in w and "> 1" in w for w in warnings) and any("never fired" in w for w in warnings)
    assert "warning: tied_R2_l1_0.01: FVU" in capsys.readouterr().out
    [healthy] = train_sweep(TensorSource(x), _settings(batch_size=64, tokens=64 * 40), tmp_path / "ok", progress=False)
    assert sae.load(healthy).config["metrics"]["warnings"] == []
