"""Every dictionary kind: the protocol, save/load round trips, PCA/ICA against scikit-learn, SAELens export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import sae
from sae.base import Dictionary
from sae.baselines import (collect, fit_ica, neuron_basis, pca_from_moments, random_basis, signed_neuron_basis,
                           topk_control)
from sae.dictionaries import KINDS, BatchTopKSAE, JumpReLUSAE, MatryoshkaSAE, TiedSAE, TopKSAE, UntiedSAE
from sae.errors import DictionaryError
from sae.export import export_saelens
from tests.support.sae_data import sparse_data

D = 12


def _batches(x: torch.Tensor, size: int = 1000):
    return [x[i:i + size] for i in range(0, len(x), size)]


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    x, _ = sparse_data(d=D, n_true=20, n=6000, p=0.08, seed=3)
    # add an offset and unequal scales so centring and ordering matter
    return x * torch.linspace(0.5, 3.0, D) + torch.linspace(-1, 1, D)


def _probe(base: dict, g: torch.Generator):
    """A probe dictionary (issue 14) as `cli.py probe` stores it: logistic-regression rows, unit decoder rows."""
    from sae.kinds.probe import ProbeBasis
    from sae.dictionaries import unit_rows

    w = torch.randn(3, D, generator=g)
    return ProbeBasis({"W_enc": w, "b_enc": torch.randn(3, generator=g), "W_dec": unit_rows(w), "b_dec": torch.zeros(D)},
                      {**base, "d_in": D, "n_features": 3, "labels": ["a", "b", "c"], "label_field": "topic"})


@pytest.fixture(scope="module")
def every_kind(data) -> list:
    g = torch.Generator().manual_seed(0)
    base = {"hook": "blocks.0.hook_resid_post", "model_id": "m"}
    moments, sample = collect(_batches(data), D, max_sample=len(data), progress=False)
    pca = pca_from_moments(moments, sample, dict(base))
    ica = fit_ica(sample, dict(base), seed=0)
    tied = TiedSAE({"M": torch.randn(30, D, generator=g), "b": torch.randn(30, generator=g) * 0.1},
                   {**base, "d_in": D, "n_features": 30})
    untied = UntiedSAE({"W_e": torch.randn(30, D, generator=g), "b_e": torch.randn(30, generator=g) * 0.1,
                        "W_d": torch.randn(30, D, generator=g), "b_d": torch.randn(D, generator=g)},
                       {**base, "d_in": D, "n_features": 30})
    untied_tensors = {k: v.clone() for k, v in untied.tensors().items()}
    topk = TopKSAE(untied_tensors, {**base, "d_in": D, "n_features": 30, "k": 4})
    thresholds = torch.rand(30, generator=g)
    batchtopk = BatchTopKSAE({**untied_tensors, "threshold": torch.full((30,), 0.3)}, {**base, "d_in": D, "n_features": 30})
    jumprelu = JumpReLUSAE({**untied_tensors, "threshold": thresholds}, {**base, "d_in": D, "n_features": 30})
    matryoshka = MatryoshkaSAE({**untied_tensors, "threshold": torch.full((30,), 0.2)},
                               {**base, "d_in": D, "n_features": 30, "k": 4, "matryoshka_widths": [8, 30]})
    kinds = [tied, untied, topk, batchtopk, matryoshka, jumprelu, pca, ica, random_basis(D, dict(base), seed=1), neuron_basis(D, dict(base)),
             signed_neuron_basis(D, dict(base)), topk_control(pca, 3, {}), topk_control(ica, 3, {}), _probe(base, g)]
    assert sorted(d.kind for d in kinds) == sorted(KINDS)
    return kinds


def test_every_kind_follows_the_protocol(every_kind, data):
    x = data[:200]
    for d in every_kind:
        assert isinstance(d, Dictionary), d.kind
        c = d.encode(x)
        assert c.shape == (200, d.n_features) and (c >= 0).all(), d.kind
        dirs = d.directions
        assert dirs.shape == (d.n_features, d.d_in)
        torch.testing.assert_close(dirs.norm(dim=1), torch.ones(d.n_features), rtol=1e-5, atol=1e-5)
        # decode is Σ c_j f_j + constant, so feature patching x + (c̄ − c)·F equals swapping codes
        c2 = d.encode(data[200:400])
        torch.testing.assert_close(d.decode(c2) - d.decode(c), (c2 - c) @ dirs, rtol=1e-4, atol=1e-4)
        if d.k is not None:
            assert int((c > 0).sum(1).max()) <= d.k


def test_every_kind_round_trips_through_save_and_load(every_kind, data, tmp_path):
    x = data[:300]
    for d in every_kind:
        folder = d.save(tmp_path / d.kind)
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "weights.safetensors"]
        back = sae.load(folder)
        assert type(back) is type(d) and back.kind == d.kind and back.name == d.kind
        assert back.hook == "blocks.0.hook_resid_post" and back.config["model_id"] == "m"
        assert torch.equal(back.encode(x), d.encode(x)), d.kind
        assert torch.equal(back.decode(back.encode(x)), d.decode(d.encode(x))), d.kind
        for key, value in d.tensors().items():
            assert torch.equal(back.tensors()[key], value)


def test_pca_matches_scikit_learn_up_to_sign(data):
    from sklearn.decomposition import PCA

    moments, sample = collect(_batches(data, 700), D, max_sample=2000, progress=False)
    ours = pca_from_moments(moments, sample, {})
    ref = PCA(n_components=D).fit(data.double().numpy())
    cos = (ours.directions.double() @ torch.from_numpy(ref.components_).T).diagonal().abs()
    assert cos.min() > 0.999
    torch.testing.assert_close(ours.tensors()["b_dec"].double(), torch.from_numpy(ref.mean_), rtol=1e-5, atol=1e-5)
    # with every coefficient kept, PCA's decode inverts its projection exactly (both signs)
    w, b, dirs, b_dec = ours.effective()
    proj = data @ w.T + b
    torch.testing.assert_close(proj @ dirs + b_dec, data, rtol=1e-4, atol=1e-4)


def test_pca_and_ica_orient_the_heavy_tail_positive(every_kind, data):
    for d in every_kind:
        if d.kind in ("pca", "ica"):
            w, b, _, _ = d.effective()
            proj = (data @ w.T + b).double()
            proj = proj - proj.mean(0)
            assert ((proj ** 3).mean(0) >= 0).all(), d.kind


def test_ica_decode_equals_fastica_inverse_transform(data):
    from sklearn.decomposition import FastICA

    sample = data[:3000]
    ours = fit_ica(sample, {}, seed=0)
    ref = FastICA(n_components=D, whiten="unit-variance", random_state=0, max_iter=400, tol=1e-4)
    sources = ref.fit_transform(sample.double().numpy())
    w, b, dirs, b_dec = ours.effective()
    ours_full = (data[:100] @ w.T + b) @ dirs + b_dec
    torch.testing.assert_close(ours_full.double(), torch.from_numpy(ref.inverse_transform(ref.transform(
        data[:100].double().numpy()))), rtol=1e-3, atol=1e-3)
    # same components up to sign and scale
    ours_src = (sample @ w.T + b).double()
    corr = np.corrcoef(ours_src.T.numpy(), sources.T)[:D, D:]
    assert np.abs(np.diag(corr)).min() > 0.999


def test_ica_on_data_spanning_fewer_dimensions_fits_one_live_component_per_spanned_direction(data):
    """Issue 25: LayerNorm outputs (pooled BERT vectors) span d - 1 dimensions or fewer. Whitening the empty
    direction to unit variance broke the basis: here it no longer inverts on the data (max error 5.6), and on
    MiniLM's pooled [CLS] vectors every component was dead (coefficients ~1e-9)."""
    from sklearn.decomposition import FastICA

    from sae.baselines import numerical_rank

    sample = data[:3000] - data[:3000].mean(1, keepdim=True)  # as after a LayerNorm: each row sums to 0
    sample = sample * torch.linspace(0.5, 2.0, D) + 0.3  # gain and bias: the empty direction is no longer all-ones
    assert numerical_rank(sample) == D - 1 and numerical_rank(data[:3000]) == D
    ours = fit_ica(sample, {}, seed=0)
    assert ours.n_features == D - 1
    w, b, dirs, b_dec = ours.effective()
    coefficients = (sample @ w.T + b).double()
    assert coefficients.std(0).min() > 0.05 * coefficients.std(0).max()  # every component alive
    torch.testing.assert_close((coefficients @ dirs.double() + b_dec.double()), sample.double(), rtol=1e-3,
                               atol=1e-3)  # the spanned directions are all there: ICA inverts on its span
    ref = FastICA(n_components=D - 1, whiten="unit-variance", random_state=0, max_iter=400, tol=1e-4)
    sources = ref.fit_transform(sample.double().numpy())
    corr = np.corrcoef(coefficients.T.numpy(), sources.T)[:D - 1, D - 1:]
    assert np.abs(corr).max(1).min() > 0.99  # each of ours is one of scikit-learn's components


def test_signed_neuron_basis_reconstructs_exactly_and_the_neuron_basis_does_not(data):
    x = data[:300]
    assert (x < 0).any()  # the data has negative parts to lose
    signed = signed_neuron_basis(D, {"hook": "blocks.0.hook_resid_post"})
    assert signed.n_features == 2 * D
    c = signed.encode(x)
    torch.testing.assert_close(c[:, :D], x.clamp_min(0), rtol=0, atol=0)
    torch.testing.assert_close(c[:, D:], (-x).clamp_min(0), rtol=0, atol=0)
    torch.testing.assert_close(signed.decode(c), x, rtol=0, atol=0)
    eye = torch.eye(D)
    torch.testing.assert_close(signed.directions, torch.cat([eye, -eye]), rtol=0, atol=0)
    neuron = neuron_basis(D, {"hook": "blocks.0.hook_resid_post"})
    assert not torch.allclose(neuron.decode(neuron.encode(x)), x)
    with pytest.raises(DictionaryError, match="2·d_in"):
        type(signed)({}, {"d_in": D, "n_features": D})


def test_random_basis_is_orthonormal_and_seeded():
    a = random_basis(D, {}, seed=5)
    torch.testing.assert_close(a.directions @ a.directions.T, torch.eye(D), rtol=1e-5, atol=1e-5)
    assert torch.equal(a.directions, random_basis(D, {}, seed=5).directions)
    assert not torch.equal(a.directions, random_basis(D, {}, seed=6).directions)


def test_tied_sae_normalises_rows_inside_the_forward_pass():
    m = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    d = TiedSAE({"M": m, "b": torch.tensor([0.0, -0.1])}, {"d_in": 2, "n_features": 2})
    c = d.encode(torch.tensor([[2.0, 1.0], [-1.0, 0.05]]))
    torch.testing.assert_close(c, torch.tensor([[2.0, 0.9], [0.0, 0.0]]))
    torch.testing.assert_close(d.decode(c), torch.tensor([[2.0, 0.9], [0.0, 0.0]]))


def test_saelens_export_reproduces_encode_and_decode(every_kind, data, tmp_path):
    x = data[:50]
    for d in every_kind:
        out = export_saelens(d, tmp_path / f"export_{d.kind}")
        cfg = json.loads((out / "cfg.json").read_text())
        w = load_file(str(out / "sae_weights.safetensors"))
        jump = cfg["architecture"] == "jumprelu"
        assert sorted(w) == ["W_dec", "W_enc", "b_dec", "b_enc"] + (["threshold"] if jump else [])
        assert w["W_enc"].shape == (D, d.n_features) and w["W_dec"].shape == (d.n_features, D)
        assert cfg["d_in"] == D and cfg["d_sae"] == d.n_features and cfg["hook_name"] == d.hook
        assert cfg["hook_layer"] == 0 and cfg["model_name"] == "m"
        pre = (x - w["b_dec"] * cfg["apply_b_dec_to_input"]) @ w["W_enc"] + w["b_enc"]
        c = pre * (pre > w["threshold"]) if jump else torch.relu(pre)
        if cfg["architecture"] == "topk":
            c = torch.zeros_like(c).scatter(-1, c.topk(cfg["k"], dim=-1).indices, c.topk(cfg["k"], dim=-1).values)
        torch.testing.assert_close(c, d.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c @ w["W_dec"] + w["b_dec"], d.decode(d.encode(x)), rtol=1e-5, atol=1e-5)


def test_loading_bad_folders_fails_clearly(tmp_path, every_kind):
    with pytest.raises(DictionaryError, match="no dictionary folder"):
        sae.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DictionaryError, match="config.json"):
        sae.load(tmp_path / "empty")
    folder = every_kind[0].save(tmp_path / "tied")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "kind": "mystery"}))
    with pytest.raises(DictionaryError, match="mystery"):
        sae.load(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "n_features": 31}))
    with pytest.raises(DictionaryError, match="shape"):
        sae.load(folder)


def test_encode_rejects_vectors_of_the_wrong_width(every_kind):
    with pytest.raises(DictionaryError, match="width 5"):
        every_kind[0].encode(torch.zeros(3, 5))


def test_a_multi_line_library_error_becomes_a_one_line_message(every_kind, tmp_path, monkeypatch, capsys):
    """A reader error that spans lines is quoted by its first line, so the fix stays on the one printed line."""
    import cli
    import sae.io
    from safetensors import SafetensorError

    folder = every_kind[0].save(tmp_path / "d")

    def damaged(*args, **kwargs):
        raise SafetensorError("Error while deserializing header: InvalidHeaderDeserialization\n"
                              "  caused by: expected value at line 1 column 1\n  (12 more lines)")

    monkeypatch.setattr(sae.io, "load_file", damaged)
    with pytest.raises(DictionaryError) as info:
        sae.load(folder)
    message = str(info.value)
    assert "\n" not in message and "InvalidHeaderDeserialization" in message and "caused by" not in message
    assert message.endswith("re-create the dictionary")
    assert cli.main(["export", "--dict", str(folder), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "re-create the dictionary" in err


def test_saved_folders_and_exports_follow_the_users_umask(every_kind, tmp_path):
    """Dictionaries are made to be shared: not private 0700/0600 (tempfile's and safetensors' defaults)."""
    import os

    old = os.umask(0o022)
    try:
        folder = every_kind[0].save(tmp_path / "shared")
        out = export_saelens(every_kind[0], tmp_path / "export")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [folder, *folder.iterdir(), *out.iterdir()]}
    assert modes == {"shared": 0o755, "config.json": 0o644, "weights.safetensors": 0o644, "cfg.json": 0o644,
                     "sae_weights.safetensors": 0o644}
