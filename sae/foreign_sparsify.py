"""EleutherAI sparsify SAEs (`cfg.json` + `sae.safetensors`) rewritten exactly into a `topk` dictionary.

The format, the exactness rule and the helpers are `sae.foreign`'s; this
module is only sparsify's reading of them (sparsify 1.3:
`SparseCoder.save_to_disk` / `load_from_disk`, `Trainer.save`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sae.errors import DictionaryError
from sae.foreign import (CFG_FILE, OUR_CONFIG, SPARSIFY_WEIGHTS, build_dictionary, cfg_ints, check_shapes,
                         read_weights)
from sae.kinds.affine import AffineDictionary

# sparsify names hookpoints by module path under the model's base model (`layers.3`, GPT-2's `h.3`);
# releases before 1.0 used the full path (`gpt_neox.layers.3`, `model.layers.3`, `transformer.h.3`).
_SPARSIFY_BLOCK = re.compile(r"(?:\w+\.)*(?:layers|h)\.(\d+)")
_SEED = re.compile(r"seed\d+")  # sparsify's subfolder per init seed when it trains several


def load_sparsify(folder: Path, cfg: dict) -> AffineDictionary:
    """sparsify SparseCoder: c = TopK(ReLU(encoder(x − b_dec))), x̂ = c W_dec + b_dec.

    The hook: sparsify hooks a module's *output*, and its default hookpoints
    are the decoder layers (`layers.L`), whose output is the residual stream
    after block L, i.e. TransformerLens's `blocks.L.hook_resid_post`. Other
    hookpoints (e.g. `layers.L.mlp`) keep sparsify's name, since their
    TransformerLens equivalent depends on the model family.
    """
    where = f"{folder}/{CFG_FILE}"
    (d_in,) = cfg_ints(cfg, where, "d_in")
    if cfg.get("transcode"):
        raise DictionaryError(f"{where} is a sparsify transcoder: it reads one hook and writes another, which a "
                              "dictionary (decode reconstructs what it encodes) cannot express")
    if cfg.get("activation", "topk") != "topk":
        raise DictionaryError(f"{where} uses activation {cfg.get('activation')!r}: only sparsify's TopK is an "
                              "affine-ReLU dictionary (groupmax keeps one latent per group)")
    if cfg.get("encoder_pkm") or cfg.get("encoder_halut"):
        raise DictionaryError(f"{where} has a product-key / lookup-table encoder, which is not a linear encoder")
    n_features = int(cfg.get("num_latents") or 0) or d_in * int(cfg.get("expansion_factor", 32))  # SparseCoderConfig
    k = int(cfg.get("k", 32))
    weights = folder / SPARSIFY_WEIGHTS
    t = read_weights(weights)
    check_shapes(t, {"encoder.weight": (n_features, d_in), "encoder.bias": (n_features,), "W_dec": (n_features, d_in),
               "b_dec": (d_in,)}, weights)
    if cfg.get("skip_connection") or "W_skip" in t:
        if "W_skip" not in t or bool(t["W_skip"].any()):
            raise DictionaryError(f"{where} has a skip connection (x̂ += x W_skip): a dense linear path that a "
                                  "dictionary cannot express")
    hookpoint = folder.parent.name if _SEED.fullmatch(folder.name) else folder.name
    block = _SPARSIFY_BLOCK.fullmatch(hookpoint)
    hook = f"blocks.{int(block.group(1))}.hook_resid_post" if block else hookpoint
    notes = ["multi_topk only changed the training loss"] if cfg.get("multi_topk") else []
    source = {"library": "sparsify", "folder": str(folder.resolve()), "architecture": "topk", "config": cfg,
              "hookpoint": hookpoint, "conversion": notes}
    if block:
        source["hook_mapping"] = f"{hookpoint} → {hook}: sparsify hooks the output of decoder layer {block.group(1)}"
    config = {"hook": hook, "model_id": _sparsify_model(folder)}
    name = f"{hookpoint}_{folder.name}" if hookpoint != folder.name else folder.name
    hint = "; sparsify keeps decoder rows unit-norm only with normalize_decoder=true"
    return build_dictionary(name, t["encoder.weight"], t["encoder.bias"], t["W_dec"], t["b_dec"], None, k, False, config,
                  source, where, hint)


def _sparsify_model(folder: Path) -> str:
    """The subject model, from the run's config.json (sparsify's RunConfig `model`) one or two levels up."""
    for parent in (folder.parent, folder.parent.parent):
        try:
            data = json.loads((parent / OUR_CONFIG).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("model"), str) and "kind" not in data:
            return data["model"]
    return ""
