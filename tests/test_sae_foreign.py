"""SAEs saved by SAELens and EleutherAI sparsify, opened with `sae.load`.

Each test writes a folder exactly as the library saves it (file names, tensor
names and shapes, cfg.json keys, per SAELens 5.9 / 6.18 `save_model` and
sparsify 1.3 `save_to_disk`), then checks our encode/decode against the
library's forward pass written out here, never against our own code.
Neither library is installed or needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import sae
from sae.errors import DictionaryError
from sae.export import export_saelens
from sae.io import read_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one torch thread (tests/conftest.py)

D, F = 8, 24
HOOK = "blocks.3.hook_resid_post"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _x(seed: int = 0, n: int = 64) -> torch.Tensor:
    return torch.randn(n, D, generator=_gen(100 + seed)) * 2 + torch.linspace(-1, 1, D)


def _state(seed: int, unit: bool = False) -> dict[str, torch.Tensor]:
    """SAELens tensors: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]."""
    g = _gen(seed)
    w_dec = torch.randn(F, D, generator=g)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    if not unit:
        w_dec = w_dec * torch.linspace(0.3, 2.5, F)[torch.randperm(F, generator=g)][:, None]
    return {"W_enc": torch.randn(D, F, generator=g) * 0.5, "b_enc": torch.randn(F, generator=g) * 0.5,
            "W_dec": w_dec, "b_dec": torch.randn(D, generator=g)}


def _legacy_cfg(arch: str = "standard", apply: bool = True, activation: str = "relu", kwargs: dict | None = None,
                norm: str | bool = "none") -> dict:
    """SAELens < 6 `SAEConfig.to_dict()`: flat, `activation_fn_str`, hook and model at the top."""
    return {"architecture": arch, "d_in": D, "d_sae": F, "dtype": "float32", "device": "cpu",
            "model_name": "gpt2-small", "hook_name": HOOK, "hook_layer": 3, "hook_head_index": None,
            "activation_fn_str": activation, "activation_fn_kwargs": kwargs or {}, "apply_b_dec_to_input": apply,
            "finetuning_scaling_factor": False, "sae_lens_training_version": "5.9.2", "prepend_bos": True,
            "dataset_path": "Skylion007/openwebtext", "dataset_trust_remote_code": True, "context_size": 128,
            "normalize_activations": norm, "neuronpedia_id": None, "model_from_pretrained_kwargs": {},
            "seqpos_slice": [None]}


def _v6_cfg(arch: str = "standard", apply: bool = True, norm: str = "none", **extra) -> dict:
    """SAELens ≥ 6 `SAEConfig.to_dict()`: nested `metadata`, architecture last, subclass fields (k, …) at the top."""
    meta = {"sae_lens_version": "6.18.0", "sae_lens_training_version": "6.18.0", "dataset_path": "NeelNanda/pile-10k",
            "hook_name": HOOK, "model_name": "pythia-70m-deduped", "model_class_name": "HookedTransformer",
            "hook_head_index": None, "context_size": 128, "seqpos_slice": [None], "model_from_pretrained_kwargs": {},
            "prepend_bos": True, "exclude_special_tokens": False}
    return {"d_in": D, "d_sae": F, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": apply,
            "normalize_activations": norm, "reshape_activations": "none", **extra, "metadata": meta,
            "architecture": arch}


def _write_saelens(folder: Path, cfg: dict, state: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def _sparsify_cfg(k: int = 4, **changes) -> dict:
    """sparsify `SparseCoderConfig.to_dict()` plus d_in, as `save_to_disk` writes it."""
    return {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": F, "k": k,
            "multi_topk": False, "skip_connection": False, "transcode": False, **changes, "d_in": D}


def _sparsify_state(seed: int, unit: bool = True) -> dict[str, torch.Tensor]:
    """`save_model(SparseCoder)`: encoder.weight [F, d], encoder.bias [F], W_dec [F, d], b_dec [d]."""
    g = _gen(seed)
    w_dec = torch.randn(F, D, generator=g) * torch.rand(F, 1, generator=g).add(0.5)
    if unit:  # SparseCoder.set_decoder_norm_to_unit_norm
        w_dec = w_dec / (w_dec.norm(dim=1, keepdim=True) + torch.finfo(w_dec.dtype).eps)
    return {"encoder.weight": torch.randn(F, D, generator=g) * 0.5, "encoder.bias": torch.randn(F, generator=g) * 0.3,
            "W_dec": w_dec, "b_dec": torch.randn(D, generator=g) * 0.5}


def _write_sparsify(folder: Path, cfg: dict, state: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True)
    save_file(state, str(folder / "sae.safetensors"), metadata={"format": "pt"})
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


# -- the libraries' forward passes, written out from their source -------------------------------------------

def _saelens_encode(cfg: dict, t: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    sae_in = x - t["b_dec"] * cfg["apply_b_dec_to_input"]
    arch = cfg["architecture"]
    if arch == "gated":
        gate = (sae_in @ t["W_enc"] + t["b_gate"] > 0).to(x.dtype)
        return gate * torch.relu(sae_in @ (t["W_enc"] * t["r_mag"].exp()) + t["b_mag"])
    pre = sae_in @ t["W_enc"] + t["b_enc"]
    if cfg.get("rescale_acts_by_decoder_norm"):
        pre = pre * t["W_dec"].norm(dim=-1)
    if arch == "jumprelu":
        return torch.relu(pre) * (pre > t["threshold"])
    if arch == "topk" or cfg.get("activation_fn_str") == "topk":
        k = cfg.get("k") or cfg["activation_fn_kwargs"]["k"]
        values, index = torch.topk(pre, k=k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, index, values.relu())
    return torch.relu(pre)


def _saelens_decode(cfg: dict, t: dict[str, torch.Tensor], c: torch.Tensor) -> torch.Tensor:
    if cfg.get("rescale_acts_by_decoder_norm"):
        c = c / t["W_dec"].norm(dim=-1)
    return c @ t["W_dec"] + t["b_dec"]


def _sparsify_forward(t: dict[str, torch.Tensor], k: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense codes, reconstruction): fused_encoder then eager_decode (embedding_bag sum) + b_dec."""
    pre = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    values, index = torch.topk(pre, k, dim=-1, sorted=False)
    recon = torch.nn.functional.embedding_bag(index, t["W_dec"], per_sample_weights=values, mode="sum") + t["b_dec"]
    return torch.zeros_like(pre).scatter(-1, index, values), recon


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message
    return message


# -- SAELens ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("style", ["legacy", "v6"])
@pytest.mark.parametrize("apply", [True, False])
def test_saelens_standard_with_non_unit_decoder_norms(tmp_path, style, apply):
    cfg = _legacy_cfg(apply=apply) if style == "legacy" else _v6_cfg(apply=apply)
    t = _state(1)
    d = sae.load(_write_saelens(tmp_path / "sl", cfg, t))
    x = _x()
    c = _saelens_encode(cfg, t, x)
    norms = t["W_dec"].norm(dim=1)
    assert d.kind == "untied_sae" and d.hook == HOOK and (d.d_in, d.n_features) == (D, F)
    assert d.config["model_id"] == ("gpt2-small" if style == "legacy" else "pythia-70m-deduped")
    assert d.config["source"]["library"] == "saelens" and d.config["source"]["config"] == cfg
    assert (c > 0).float().mean() > 0.2 and norms.min() < 0.8 < 1.2 < norms.max()
    _close(d.encode(x), c * norms)  # our codes are the library's times the decoder norms ...
    _close(d.decode(d.encode(x)), _saelens_decode(cfg, t, c))  # ... so the reconstruction is the library's
    _close(d.directions, t["W_dec"] / norms[:, None])


def test_saelens_jumprelu_folds_norms_into_thresholds_and_treats_negative_ones_as_zero(tmp_path):
    t = _state(2)
    t["threshold"] = torch.linspace(-0.5, 1.0, F)
    cfg = _v6_cfg("jumprelu")
    d = sae.load(_write_saelens(tmp_path / "jr", cfg, t))
    x = _x(1)
    c = _saelens_encode(cfg, t, x)
    assert d.kind == "jumprelu" and bool((d.tensors()["threshold"] >= 0).all())
    _close(d.encode(x), c * t["W_dec"].norm(dim=1))
    _close(d.decode(d.encode(x)), _saelens_decode(cfg, t, c))


def test_saelens_gated_becomes_an_exact_jumprelu(tmp_path):
    g = _gen(3)
    t = {k: v for k, v in _state(3).items() if k != "b_enc"}
    t.update({"b_gate": torch.randn(F, generator=g) * 0.5, "r_mag": torch.randn(F, generator=g) * 0.3,
              "b_mag": torch.randn(F, generator=g) * 0.5})
    cfg = _legacy_cfg("gated", apply=False)
    d = sae.load(_write_saelens(tmp_path / "gated", cfg, t))
    x = _x(2)
    c = _saelens_encode(cfg, t, x)
    assert d.kind == "jumprelu" and 0 < (c > 0).float().mean() < 0.9
    _close(d.encode(x), c * t["W_dec"].norm(dim=1))
    _close(d.decode(d.encode(x)), _saelens_decode(cfg, t, c))


def test_saelens_legacy_topk_with_unit_decoder(tmp_path):
    t = _state(4, unit=True)
    cfg = _legacy_cfg("topk", activation="topk", kwargs={"k": 5})
    d = sae.load(_write_saelens(tmp_path / "tk", cfg, t))
    x = _x(3)
    c = _saelens_encode(cfg, t, x)
    assert d.kind == "topk" and d.k == 5
    _close(d.encode(x), c)
    _close(d.decode(d.encode(x)), _saelens_decode(cfg, t, c))


def test_saelens_topk_ranked_by_decoder_norm_folds_exactly(tmp_path):
    """rescale_acts_by_decoder_norm ranks n_j·p_j: folding the norms is then what SAELens itself computes."""
    t = _state(5)
    cfg = _v6_cfg("topk", k=5, rescale_acts_by_decoder_norm=True)
    d = sae.load(_write_saelens(tmp_path / "tk", cfg, t))
    x = _x(4)
    c = _saelens_encode(cfg, t, x)
    _close(d.encode(x), c)
    _close(d.decode(d.encode(x)), _saelens_decode(cfg, t, c))


def test_saelens_legacy_finetuning_scaling_factor_is_folded(tmp_path):
    t = _state(6)
    t["finetuning_scaling_factor"] = torch.linspace(0.5, 2.0, F)
    cfg = {**_legacy_cfg(), "finetuning_scaling_factor": True}
    d = sae.load(_write_saelens(tmp_path / "ft", cfg, t))
    x = _x(5)
    c = _saelens_encode(cfg, t, x)
    _close(d.decode(d.encode(x)), (c * t["finetuning_scaling_factor"]) @ t["W_dec"] + t["b_dec"])


def test_saelens_expected_average_norm_is_folded_from_the_checkpoint_scaler(tmp_path):
    t = _state(7)
    s = 0.37
    folder = _write_saelens(tmp_path / "ea", _v6_cfg(norm="expected_average_only_in"), t)
    with pytest.raises(DictionaryError, match="activation_scaler.json") as err:
        sae.load(folder)
    _one_line(err)
    (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": s}))  # ActivationScaler.save
    d = sae.load(folder)
    x = _x(6)
    sae_in = s * x - t["b_dec"]  # the SAE was trained on s·x and reconstructs s·x
    c = torch.relu(sae_in @ t["W_enc"] + t["b_enc"])
    _close(d.decode(d.encode(x)), (c @ t["W_dec"] + t["b_dec"]) / s)


@pytest.mark.parametrize("apply", [True, False])
def test_saelens_covariance_whitening_is_folded_from_the_checkpoint(tmp_path, apply):
    t = _state(14)
    folder = _write_saelens(tmp_path / "wh", _v6_cfg(apply=apply, norm="covariance_whitening"), t)
    with pytest.raises(DictionaryError, match="activation_whitening.safetensors"):
        sae.load(folder)
    g = _gen(14)
    m, mean = torch.randn(D, D, generator=g) * 0.2 + torch.eye(D), torch.randn(D, generator=g)
    (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": None, "has_whitening": True}))
    save_file({"mean": mean, "matrix": m, "inverse_matrix": torch.linalg.inv(m).contiguous()},
              str(folder / "activation_whitening.safetensors"))  # ActivationScaler.save
    d = sae.load(folder)
    x = _x(9)
    sae_in = (x - mean) @ m - t["b_dec"] * apply  # the SAE saw z = (x − mean) M and reconstructs x = ẑ M⁻¹ + mean
    c = torch.relu(sae_in @ t["W_enc"] + t["b_enc"])
    torch.testing.assert_close(d.decode(d.encode(x)), (c @ t["W_dec"] + t["b_dec"]) @ torch.linalg.inv(m) + mean,
                               rtol=1e-4, atol=1e-4)


# -- sparsify -----------------------------------------------------------------------------------------------

def _sparsify_run(root: Path, hookpoints: list[str], seed: int = 10) -> dict[str, dict[str, torch.Tensor]]:
    """A sparsify checkpoint: config.json (RunConfig.save_json) and one SAE folder per hookpoint."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"sae": _sparsify_cfg(), "batch_size": 32, "hookpoints": hookpoints,
                                                  "model": "EleutherAI/pythia-70m", "dataset": "EleutherAI/SmolLM2"}))
    states = {}
    for i, hp in enumerate(hookpoints):
        states[hp] = _sparsify_state(seed + i)
        _write_sparsify(root / hp, _sparsify_cfg(), states[hp])
    return states


def test_sparsify_topk_layer_folder(tmp_path):
    states = _sparsify_run(tmp_path / "run", ["layers.3", "layers.4.mlp"])
    d = sae.load(tmp_path / "run" / "layers.3")
    x = _x(7)
    c, recon = _sparsify_forward(states["layers.3"], 4, x)
    assert d.kind == "topk" and d.k == 4 and d.hook == "blocks.3.hook_resid_post"
    assert d.config["model_id"] == "EleutherAI/pythia-70m" and d.config["source"]["hookpoint"] == "layers.3"
    _close(d.encode(x), c)
    _close(d.decode(d.encode(x)), recon)
    other = sae.load(tmp_path / "run" / "layers.4.mlp" / "sae.safetensors")  # a file inside the folder works too
    assert other.hook == "layers.4.mlp"  # no TransformerLens name is certain for it: sparsify's is kept


def test_sparsify_parent_folder_lists_its_hookpoints(tmp_path):
    _sparsify_run(tmp_path / "run", ["layers.10", "layers.2", "gpt_neox.layers.3"])
    for call in (sae.load, read_config):
        with pytest.raises(DictionaryError) as err:
            call(tmp_path / "run")
        message = _one_line(err)
        assert "gpt_neox.layers.3, layers.2, layers.10" in message and "pass one of them" in message
    assert sae.load(tmp_path / "run" / "gpt_neox.layers.3").hook == "blocks.3.hook_resid_post"
    seeds = tmp_path / "seeds"  # several init seeds: layers.5/seed0, layers.5/seed1
    for s in (0, 1):
        _write_sparsify(seeds / "layers.5" / f"seed{s}", _sparsify_cfg(), _sparsify_state(20 + s))
    with pytest.raises(DictionaryError, match="layers.5/seed0, layers.5/seed1"):
        sae.load(seeds)
    d = sae.load(seeds / "layers.5" / "seed1")
    assert d.hook == "blocks.5.hook_resid_post" and d.name == "layers.5_seed1"


@pytest.mark.parametrize("library", ["saelens", "sparsify"])
def test_topk_with_unequal_decoder_norms_is_refused(tmp_path, library):
    if library == "saelens":
        folder = _write_saelens(tmp_path / "tk", _v6_cfg("topk", k=4, rescale_acts_by_decoder_norm=False), _state(8))
    else:
        folder = _write_sparsify(tmp_path / "layers.1", _sparsify_cfg(normalize_decoder=False),
                                 _sparsify_state(8, unit=False))
    with pytest.raises(DictionaryError, match="change which 4 latents win") as err:
        sae.load(folder)
    _one_line(err)


@pytest.mark.parametrize("case, match", [
    ("saelens_transcoder", "reads one hook and writes another"),
    ("saelens_layer_norm", "not affine"),
    ("saelens_tanh", "not ReLU"),
    ("saelens_batchtopk", "inference save"),
    ("sparsify_transcode", "reads one hook and writes another"),
    ("sparsify_groupmax", "groupmax"),
    ("sparsify_skip", "skip connection"),
])
def test_libraries_features_that_cannot_be_expressed_are_refused(tmp_path, case, match):
    folder = tmp_path / "layers.1"
    if case.startswith("saelens"):
        cfg = {"saelens_transcoder": _v6_cfg("transcoder"), "saelens_layer_norm": _v6_cfg(norm="layer_norm"),
               "saelens_tanh": _legacy_cfg(activation="tanh-relu"), "saelens_batchtopk": _v6_cfg("batchtopk", k=4)}[case]
        _write_saelens(folder, cfg, _state(9))
    else:
        state = _sparsify_state(9)
        cfg = {"sparsify_transcode": _sparsify_cfg(transcode=True), "sparsify_groupmax": _sparsify_cfg(activation="groupmax"),
               "sparsify_skip": _sparsify_cfg(skip_connection=True)}[case]
        if case == "sparsify_skip":
            state["W_skip"] = torch.randn(D, D, generator=_gen(9))
        _write_sparsify(folder, cfg, state)
    with pytest.raises(DictionaryError, match=match) as err:
        sae.load(folder)
    _one_line(err)


def test_malformed_folders_fail_with_one_line(tmp_path):
    cases = {}
    bad_json = _write_saelens(tmp_path / "json", _v6_cfg(), _state(11))
    (bad_json / "cfg.json").write_text('{"d_in": 8, "d_sae": ')
    cases[bad_json] = "not valid JSON"
    not_object = _write_saelens(tmp_path / "list", _v6_cfg(), _state(11))
    (not_object / "cfg.json").write_text("[1, 2]")
    cases[not_object] = "not a JSON object"
    no_sizes = _write_saelens(tmp_path / "sizes", {k: v for k, v in _v6_cfg().items() if k != "d_sae"}, _state(11))
    cases[no_sizes] = "d_sae"
    no_weights = _write_saelens(tmp_path / "noweights", _v6_cfg(), _state(11))
    (no_weights / "sae_weights.safetensors").unlink()
    cases[no_weights] = "no sae_weights.safetensors"
    no_sparsify_weights = _write_sparsify(tmp_path / "layers.0", _sparsify_cfg(), _sparsify_state(11))
    (no_sparsify_weights / "sae.safetensors").unlink()
    cases[no_sparsify_weights] = "no sae.safetensors"
    damaged = _write_sparsify(tmp_path / "layers.9", _sparsify_cfg(), _sparsify_state(11))
    (damaged / "sae.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{oops}\n")
    cases[damaged] = "cannot be read"
    missing_tensor = _write_saelens(tmp_path / "tensor", _v6_cfg("jumprelu"), _state(11))
    cases[missing_tensor] = r"lacks tensors \['threshold'\]"
    wrong_shape = _write_sparsify(tmp_path / "layers.7", _sparsify_cfg(num_latents=F + 1), _sparsify_state(11))
    cases[wrong_shape] = "shape"
    for folder, match in cases.items():
        with pytest.raises(DictionaryError, match=match) as err:
            sae.load(folder)
        _one_line(err)


# -- interop both ways --------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
def test_a_loaded_sae_round_trips_through_our_save_and_saelens_export(tmp_path, arch):
    t = _state(12, unit=arch == "topk")
    cfg = _v6_cfg(arch, apply=False, **({"k": 3} if arch == "topk" else {}))
    if arch == "jumprelu":
        t["threshold"] = torch.rand(F, generator=_gen(12))
    foreign = sae.load(_write_saelens(tmp_path / "sl", cfg, t))
    x = _x(8)
    ours = sae.load(foreign.save(tmp_path / "ours"))
    assert ours.kind == foreign.kind and ours.config["source"]["library"] == "saelens"
    assert read_config(tmp_path / "ours")["source"]["folder"] == str((tmp_path / "sl").resolve())
    again = sae.load(export_saelens(ours, tmp_path / "exported"))
    for d in (ours, again):
        _close(d.encode(x), foreign.encode(x))
        _close(d.decode(d.encode(x)), foreign.decode(foreign.encode(x)))


def test_read_config_refuses_to_touch_a_foreign_folder(tmp_path):
    folder = _write_saelens(tmp_path / "sl", _v6_cfg(), _state(13))
    with pytest.raises(DictionaryError, match="does not write to") as err:
        read_config(folder)
    _one_line(err)
    assert sae.load(folder / "cfg.json").kind == "untied_sae"
