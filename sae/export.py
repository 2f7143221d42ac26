"""Export a dictionary in SAELens's on-disk layout.

SAELens reads `cfg.json` + `sae_weights.safetensors` with W_enc [d_in, d_sae],
b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in] and computes
encode = act((x − b_dec·apply_b_dec_to_input) W_enc + b_enc),
decode = c W_dec + b_dec. Every kind here is of that form once its effective
tensors are materialised (a tied SAE's W_enc is its normalised M transposed),
so the export has one code path. The config is written in the flat
pre-6.0 style, which both older releases and SAELens ≥ 6 (through its
legacy-config conversion) load.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from common.errors import UserError
from activations.hooks import parse_hook
from common.runstate import replace_atomically, staging_file, write_json_atomic
from sae.kinds.affine import AffineDictionary
from sae.kinds.threshold import ThresholdSAE

SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
SAE_CFG_FILENAME = "cfg.json"


def saelens_state(dictionary: AffineDictionary) -> dict[str, torch.Tensor]:
    """W_enc, b_enc, W_dec, b_dec with apply_b_dec_to_input=False semantics (b_dec folded into b_enc).

    Threshold kinds (BatchTopK, JumpReLU) add SAELens's JumpReLU `threshold`.
    """
    w, b, d, b_dec = (t.detach().cpu().to(torch.float32) for t in dictionary.effective())
    state = {"W_enc": w.T.contiguous(), "b_enc": b.contiguous(), "W_dec": d.contiguous(), "b_dec": b_dec.contiguous()}
    if isinstance(dictionary, ThresholdSAE):
        state["threshold"] = dictionary.tensors()["threshold"].detach().cpu().to(torch.float32).contiguous()
    return state


def _layer(hook: str) -> int | None:
    try:
        return parse_hook(hook).layer
    except UserError:
        return None  # a hook name of another tool: SAELens accepts a missing layer


def saelens_config(dictionary: AffineDictionary) -> dict:
    hook = dictionary.hook
    layer = _layer(hook)
    data = dictionary.config.get("data", {})
    cfg = {
        "architecture": "standard",
        "d_in": dictionary.d_in,
        "d_sae": dictionary.n_features,
        "dtype": "float32",
        "device": "cpu",
        "model_name": str(dictionary.config.get("model_id", "")),
        "hook_name": hook,
        "hook_layer": layer,
        "hook_head_index": None,
        "activation_fn_str": "relu",
        "activation_fn_kwargs": {},
        "apply_b_dec_to_input": False,
        "finetuning_scaling_factor": False,
        "normalize_activations": "none",
        "context_size": data.get("context_length"),
        "prepend_bos": bool(data.get("bos_prepended", True)),
        "dataset_path": data.get("cache", ""),
        "sae_lens_training_version": None,
        "dictlens_kind": dictionary.kind,
        "dictlens_name": dictionary.name,
    }
    if isinstance(dictionary, ThresholdSAE):
        cfg["architecture"] = "jumprelu"
        cfg["activation_fn_str"] = "relu"
    if dictionary.k is not None:
        cfg["architecture"] = "topk"
        cfg["activation_fn_str"] = "topk"
        cfg["activation_fn_kwargs"] = {"k": dictionary.k}
        cfg["k"] = dictionary.k
    return cfg


def export_saelens(dictionary: AffineDictionary, out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a folder path")
    out.mkdir(parents=True, exist_ok=True)
    with staging_file(out / SAE_WEIGHTS_FILENAME) as tmp:
        save_file(saelens_state(dictionary), str(tmp))
        replace_atomically(tmp, out / SAE_WEIGHTS_FILENAME)
    write_json_atomic(out / SAE_CFG_FILENAME, saelens_config(dictionary))
    return out
