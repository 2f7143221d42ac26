"""SAELens saves (5.x flat and 6.x nested cfg.json), rewritten exactly into our affine kinds.

Split from `sae.foreign` (which detects the format and holds the shared
checks and the fold into our form) because SAELens has the most variants:
input scaling factors and whitening not yet folded, JumpReLU, TopK with or
without decoder-norm rescaling, and the architectures that cannot be folded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from sae.errors import DictionaryError
from sae.foreign import CFG_FILE, SAELENS_WEIGHTS, build_dictionary, cfg_ints, check_shapes, read_weights
from sae.kinds.affine import AffineDictionary

SAELENS_SCALER = "activation_scaler.json"  # SAELens ≥ 6 checkpoints: the input scaling factor not yet folded
SAELENS_WHITENING = "activation_whitening.safetensors"  # and the input whitening, beside it
_SAELENS_TRANSCODERS = ("transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder")
_SAELENS_TRAINING_ONLY = ("batchtopk", "matryoshka_batchtopk")


def load_saelens(folder: Path, cfg: dict) -> AffineDictionary:
    """SAELens: pre = (x − b_dec·apply_b_dec_to_input) W_enc + b_enc, x̂ = c W_dec + b_dec.

    Reads the flat pre-6 cfg.json (`activation_fn_str`, `hook_name` at the top)
    and the nested ≥ 6 one (`metadata.hook_name`, top-level `k`) alike, as
    SAELens's own `handle_pre_6_0_config` does.
    """
    meta = cfg["metadata"] if isinstance(cfg.get("metadata"), dict) else {}

    def field(*keys: str, default=None):
        for where in (cfg, meta):
            for key in keys:
                if where.get(key) is not None:
                    return where[key]
        return default

    arch = str(cfg.get("architecture") or "standard")
    activation = cfg.get("activation_fn_str", cfg.get("activation_fn"))
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if activation == "topk":  # pre-6 configs mark TopK by the activation, sometimes with architecture "standard"
        arch = "topk"
    where = f"{folder}/{CFG_FILE}"
    if arch in _SAELENS_TRANSCODERS or field("hook_name_out"):
        raise DictionaryError(f"{where} is a SAELens {arch}: it reads one hook and writes another, which a "
                              "dictionary (decode reconstructs what it encodes) cannot express")
    if arch in _SAELENS_TRAINING_ONLY:
        raise DictionaryError(f"{where} is a SAELens {arch} training checkpoint: load the inference save instead "
                              "(SAELens writes it as architecture 'jumprelu' with save_inference_model)")
    if arch not in ("standard", "topk", "jumprelu", "gated"):
        raise DictionaryError(f"{where} has SAELens architecture {arch!r}: supported are standard, topk, jumprelu, "
                              "gated (abstopk, temporal, matching_pursuit are not affine-ReLU dictionaries)")
    if activation not in (None, "relu", "topk"):
        raise DictionaryError(f"{where} uses activation {activation!r}, which is not ReLU: it cannot be loaded as "
                              "a dictionary")
    d_in, n_features = cfg_ints(cfg, where, "d_in", "d_sae")
    norm = cfg.get("normalize_activations")
    norm = {True: "expected_average_only_in", False: "none", None: "none"}.get(norm, norm)  # pre-6 stored a bool
    notes: list[str] = []
    t = read_weights(folder / SAELENS_WEIGHTS)
    shapes = {"W_enc": (d_in, n_features), "W_dec": (n_features, d_in), "b_dec": (d_in,)}
    if arch == "gated":
        shapes.update({"b_gate": (n_features,), "r_mag": (n_features,), "b_mag": (n_features,)})
    else:
        shapes["b_enc"] = (n_features,)
    if arch == "jumprelu":
        shapes["threshold"] = (n_features,)
    check_shapes(t, shapes, folder / SAELENS_WEIGHTS)
    w_e, dec, b_d = t["W_enc"].T, t["W_dec"], t["b_dec"]
    threshold = t.get("threshold")
    if arch == "gated":
        # c = [u + b_gate > 0]·ReLU(e^r u + b_mag), u = w·x: with p = e^r u + b_mag the gate is
        # p > b_mag − e^r b_gate (e^r > 0), so a gated SAE is a JumpReLU on p with that threshold.
        scale = t["r_mag"].exp()
        w_e, b_e = w_e * scale[:, None], t["b_mag"]
        threshold = t["b_mag"] - scale * t["b_gate"]
        notes.append("gated encoder rewritten as JumpReLU: threshold = b_mag − exp(r_mag)·b_gate")
    else:
        b_e = t["b_enc"]
    factor = t.get("finetuning_scaling_factor", t.get("scaling_factor"))
    if factor is not None and not torch.equal(factor, torch.ones_like(factor)):
        if not cfg.get("finetuning_scaling_factor"):  # SAELens refuses this mismatch too
            raise DictionaryError(f"{folder / SAELENS_WEIGHTS} holds a scaling factor but {CFG_FILE} has "
                                  "finetuning_scaling_factor false: the weights and config do not belong together")
        if tuple(factor.shape) != (n_features,):
            raise DictionaryError(f"{folder / SAELENS_WEIGHTS}: scaling factor has shape {tuple(factor.shape)}, "
                                  f"expected ({n_features},): the file is damaged or from another tool")
        dec = dec * factor[:, None]  # SAELens < 6 decodes (c·s) W_dec
        notes.append("finetuning scaling factor folded into the decoder")
    if norm == "expected_average_only_in":
        s = _saelens_scaling_factor(folder, where)
        # SAELens's own fold_activation_norm_scaling_factor: the SAE saw s·x, so W_enc·s, W_dec/s, b_dec/s
        w_e, dec, b_d = w_e * s, dec / s, b_d / s
        notes.append(f"input scaling factor {s} from {SAELENS_SCALER} folded in")
    elif norm == "covariance_whitening":
        # SAELens's fold_activation_whitening: the SAE saw z = (x − mean) M and reconstructs x = ẑ M⁻¹ + mean
        mean, m, m_inv = _saelens_whitening(folder, where, d_in)
        w_e, dec, b_d = w_e @ m.T, dec @ m_inv, b_d @ m_inv + mean
        if not bool(cfg.get("apply_b_dec_to_input", True)):
            b_e = b_e - w_e @ mean
        notes.append(f"input whitening from {SAELENS_WHITENING} folded in")
    elif norm != "none":
        raise DictionaryError(f"{where} has normalize_activations={norm!r}, a per-token normalisation that is not "
                              "affine: it cannot be folded into a dictionary")
    if not bool(cfg.get("apply_b_dec_to_input", True)):
        b_e = b_e + w_e @ b_d  # W_e x + b_e = W_e(x − b_d) + (b_e + W_e b_d)
        notes.append("apply_b_dec_to_input=False: b_dec folded into the encoder bias")
    k = (int(cfg.get("k") or kwargs.get("k") or 0) or None) if arch == "topk" else None
    if arch == "topk" and k is None:
        raise DictionaryError(f"{where} is a TopK SAE without k: the config is damaged; re-save it with SAELens")
    rescale = bool(cfg.get("rescale_acts_by_decoder_norm", False))
    hook = str(field("hook_name", "hook_point", default=""))
    source = {"library": "saelens", "folder": str(folder.resolve()), "architecture": arch, "config": cfg,
              "hook_head_index": field("hook_head_index", "hook_point_head_index"),
              "reshape_activations": cfg.get("reshape_activations") or ("hook_z" if hook.endswith("_z") else "none"),
              "model_from_pretrained_kwargs": field("model_from_pretrained_kwargs", default={}), "conversion": notes}
    config = {"hook": hook, "model_id": str(field("model_name", default=""))}
    hint = "; SAELens ranks by decoder-norm-scaled activations only with rescale_acts_by_decoder_norm=true"
    return build_dictionary(folder.name, w_e, b_e, dec, b_d, threshold, k, rescale, config, source, where, hint)


def _saelens_scaling_factor(folder: Path, where: str) -> float:
    """The factor SAELens multiplied inputs by while training, from the checkpoint's activation_scaler.json.

    SAELens folds it into the weights at the end of training (and writes
    normalize_activations "none"); its hub SAEs take it from its pretrained
    directory. A folder that says "expected_average_only_in" without the file
    cannot be told apart from one whose factor is already folded (SAELens 5's
    runner wrote that), so it is refused rather than guessed.
    """
    path = folder / SAELENS_SCALER
    try:
        s = json.loads(path.read_text(encoding="utf-8")).get("scaling_factor")
    except (OSError, json.JSONDecodeError, AttributeError):
        s = None
    if isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0:
        return float(s)
    raise DictionaryError(f"{where} has normalize_activations='expected_average_only_in' but no scaling factor in "
                          f"{SAELENS_SCALER}: put {{\"scaling_factor\": s}} there, or set normalize_activations to "
                          "\"none\" if the factor is already folded into the weights")


def _saelens_whitening(folder: Path, where: str, d_in: int) -> tuple[Tensor, Tensor, Tensor]:
    """(mean, M, M⁻¹) of a SAELens ≥ 6.5x checkpoint trained on whitened inputs (ActivationScaler.save)."""
    path = folder / SAELENS_WHITENING
    if not path.is_file():
        raise DictionaryError(f"{where} has normalize_activations='covariance_whitening' but no {SAELENS_WHITENING}: "
                              "load the final save, into which SAELens folds the whitening")
    t = read_weights(path)
    check_shapes(t, {"mean": (d_in,), "matrix": (d_in, d_in), "inverse_matrix": (d_in, d_in)}, path)
    return t["mean"], t["matrix"], t["inverse_matrix"]
