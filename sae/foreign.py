"""SAEs trained by other libraries (SAELens, EleutherAI sparsify), opened as dictionaries of this tool.

`sae.load` sends a folder here when it holds a library's `cfg.json` instead
of our `config.json`. Each SAE is rewritten once, on load, into one of our
inference kinds (`untied_sae`, `topk`, `jumprelu`), so explanation, patching
and export treat it exactly like a dictionary trained here. The formats were
read from the libraries' own save/load code (SAELens 5.9, 6.18 and 6.54:
`SAE.save_model`, `read_sae_components_from_disk`, `handle_pre_6_0_config`,
`ActivationScaler.save`; sparsify 1.3: `SparseCoder.save_to_disk` /
`load_from_disk`, `Trainer.save`).

Every rewrite is exact: a library's maths is folded into our affine form
c = act(W_e(x − b_d) + b_e), x̂ = c·D + b_d with unit rows in D, never
approximated (a TopK decoder counts as unit-norm up to the rounding of its
normalisation, TOPK_NORM_TOLERANCE). What cannot be folded exactly is
refused with one line that says why: a TopK SAE whose decoder rows differ
in norm (folding the norms would change which k latents win), per-token
input normalisation, transcoders, skip connections, grouped activations.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from activations.errors import first_line
from sae.errors import DictionaryError
from sae.kinds.affine import AffineDictionary
from sae.kinds.threshold import JumpReLUSAE
from sae.kinds.topk import TopKSAE
from sae.kinds.untied import UntiedSAE

CFG_FILE = "cfg.json"  # both libraries name their config this
SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
FOREIGN_FILES = (CFG_FILE, SAELENS_WEIGHTS, SPARSIFY_WEIGHTS)
# A decoder normalised in float32 (sparsify divides by norm + eps) has norms within ~1e-6 of 1; 1e-3 also admits
# one rounded to bfloat16 at widths of a few hundred and up, and is far below any un-normalised decoder's spread.
TOPK_NORM_TOLERANCE = 1e-3
_OUR_CONFIG = "config.json"
# sparsify names hookpoints by module path under the model's base model (`layers.3`, GPT-2's `h.3`);
# releases before 1.0 used the full path (`gpt_neox.layers.3`, `model.layers.3`, `transformer.h.3`).
_SPARSIFY_BLOCK = re.compile(r"(?:\w+\.)*(?:layers|h)\.(\d+)")
_SEED = re.compile(r"seed\d+")  # sparsify's subfolder per init seed when it trains several


def foreign_format(folder: Path) -> str | None:
    """"saelens", "sparsify", or None for a folder of this tool (or no dictionary at all).

    Our `config.json` with a `kind` wins, so a dictionary exported into its own
    folder still loads as ours. A folder that only holds foreign SAE subfolders
    (a sparsify run: one subfolder per hookpoint) raises, naming them.
    """
    folder = Path(folder)
    if _is_ours(folder / _OUR_CONFIG):
        return None
    if (folder / CFG_FILE).is_file():
        if (folder / SPARSIFY_WEIGHTS).is_file():
            return "sparsify"
        if (folder / SAELENS_WEIGHTS).is_file():
            return "saelens"
        cfg = _read_cfg(folder)
        library, weights = ("SAELens", SAELENS_WEIGHTS) if "d_sae" in cfg or "architecture" in cfg \
            else ("sparsify", SPARSIFY_WEIGHTS)
        raise DictionaryError(f"{folder} has a {library} {CFG_FILE} but no {weights}: the folder is incomplete; "
                              f"copy the weights file next to {CFG_FILE}")
    subs = _sae_subfolders(folder)
    if subs:
        shown = ", ".join(subs[:6]) + (f", … ({len(subs)} in all)" if len(subs) > 6 else "")
        raise DictionaryError(f"{folder} holds {len(subs)} SAE folders, one per hookpoint ({shown}): "
                              f"pass one of them, e.g. {folder / subs[0]}")
    return None


def load_foreign(folder: Path) -> AffineDictionary:
    """The SAE in `folder` (a SAELens or sparsify save) as one of our kinds; DictionaryError if not exactly."""
    folder = Path(folder)
    library = foreign_format(folder)
    if library is None:
        raise DictionaryError(f"{folder} is not a SAELens or sparsify folder (no {CFG_FILE} with its weights file)")
    cfg = _read_cfg(folder)
    if library == "saelens":
        from sae.foreign_saelens import load_saelens  # it builds on this module's helpers

        return load_saelens(folder, cfg)
    return _sparsify(folder, cfg)


def source_summary(dictionary: AffineDictionary) -> str:
    """One line saying where a converted dictionary came from, for logs and reports."""
    src = dictionary.config.get("source") or {}
    if not src:
        return f"{dictionary.name}: trained by this tool"
    mapping = f" (hookpoint {src['hookpoint']!r} → {dictionary.hook})" if src.get("hookpoint") else ""
    return f"{dictionary.name}: {src.get('library')} {src.get('architecture')} SAE from {src.get('folder')}{mapping}"


# -- sparsify ----------------------------------------------------------------

def _sparsify(folder: Path, cfg: dict) -> AffineDictionary:
    """sparsify SparseCoder: c = TopK(ReLU(encoder(x − b_dec))), x̂ = c W_dec + b_dec.

    The hook: sparsify hooks a module's *output*, and its default hookpoints
    are the decoder layers (`layers.L`), whose output is the residual stream
    after block L, i.e. TransformerLens's `blocks.L.hook_resid_post`. Other
    hookpoints (e.g. `layers.L.mlp`) keep sparsify's name, since their
    TransformerLens equivalent depends on the model family.
    """
    where = f"{folder}/{CFG_FILE}"
    (d_in,) = _ints(cfg, where, "d_in")
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
    t = _read_weights(weights)
    _check(t, {"encoder.weight": (n_features, d_in), "encoder.bias": (n_features,), "W_dec": (n_features, d_in),
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
    return _build(name, t["encoder.weight"], t["encoder.bias"], t["W_dec"], t["b_dec"], None, k, False, config,
                  source, where, hint)


def _sparsify_model(folder: Path) -> str:
    """The subject model, from the run's config.json (sparsify's RunConfig `model`) one or two levels up."""
    for parent in (folder.parent, folder.parent.parent):
        try:
            data = json.loads((parent / _OUR_CONFIG).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("model"), str) and "kind" not in data:
            return data["model"]
    return ""


# -- shared ------------------------------------------------------------------

def _build(name: str, w_e: Tensor, b_e: Tensor, dec: Tensor, b_d: Tensor, threshold: Tensor | None, k: int | None,
           rescale: bool, config: dict, source: dict, where: str, hint: str = "") -> AffineDictionary:
    """Fold decoder row norms n_j into the encoder (c'_j = n_j c_j) and build our kind.

    For ReLU and JumpReLU, scaling row j of W_e, b_e and θ by n_j > 0 scales
    p_j, so ReLU and the p > θ test commute with it: exact. For TopK it would
    re-rank latents, so it is exact only when every row has the same norm
    (sparsify normalises its decoder; SAELens's `rescale_acts_by_decoder_norm`
    ranks by n_j·p_j, which is this fold) and is refused otherwise. Norms equal
    within TOPK_NORM_TOLERANCE count as equal: all rows are then scaled by
    their mean, which keeps the ranking, and each latent's reconstruction is
    off by at most that fraction.
    """
    norms = dec.norm(dim=1)
    if k is not None and not rescale:
        mean = norms.mean()
        spread = float((norms / mean - 1).abs().max()) if mean > 0 else float("inf")
        if spread > TOPK_NORM_TOLERANCE:
            raise DictionaryError(f"{where}: TopK SAE with decoder row norms from {float(norms.min()):.4g} to "
                                  f"{float(norms.max()):.4g}: folding them would change which {k} latents win, so "
                                  f"it cannot be loaded exactly{hint}")
        norms = mean.expand_as(norms)
        source["conversion"].append(f"decoder row norms equal within {spread:.2g}: all scaled by their mean "
                                    f"{float(mean):.6g}, which keeps TopK's ranking")
    else:
        source["conversion"].append(f"decoder row norms ({float(norms.min()):.4g} to {float(norms.max()):.4g}) "
                                    "folded into the encoder")
    w_d = dec / torch.where(norms > 0, norms, torch.ones_like(norms))[:, None]
    tensors = {"W_e": w_e * norms[:, None], "b_e": b_e * norms, "W_d": w_d, "b_d": b_d}
    config = {**config, "d_in": int(w_e.shape[1]), "n_features": int(w_e.shape[0]), "source": source}
    if threshold is not None:
        # SAELens's JumpReLU is ReLU(p)·[p > θ] = p·[p > max(θ, 0)]: a negative θ acts as 0
        tensors["threshold"] = (threshold * norms).clamp_min(0)
        cls: type[AffineDictionary] = JumpReLUSAE
    elif k is not None:
        config["k"] = k
        cls = TopKSAE
    else:
        cls = UntiedSAE
    return cls({key: v.to(torch.float32) for key, v in tensors.items()}, config, name=name)


def _read_cfg(folder: Path) -> dict:
    path = folder / CFG_FILE
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DictionaryError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}): re-save the SAE with "
                              "the library that trained it") from err
    except OSError as err:
        raise DictionaryError(f"{path} cannot be read ({first_line(err)})") from err
    if not isinstance(cfg, dict):
        raise DictionaryError(f"{path} holds {type(cfg).__name__}, not a JSON object: re-save the SAE with the "
                              "library that trained it")
    return cfg


def _read_weights(path: Path) -> dict[str, Tensor]:
    """All tensors in float64, so folds and bias shifts round once, when the result is stored in float32."""
    try:
        return {k: v.to(torch.float64) for k, v in load_file(str(path), device="cpu").items()}
    except (SafetensorError, OSError) as err:
        raise DictionaryError(f"{path} cannot be read ({first_line(err)}): the file is damaged; download or "
                              "save it again") from err


def _check(tensors: dict[str, Tensor], shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise DictionaryError(f"{path} lacks tensors {missing} (has {sorted(tensors)}): the file does not match "
                              f"its {CFG_FILE}")
    for key, want in shapes.items():
        if tuple(tensors[key].shape) != want:
            raise DictionaryError(f"{path}: tensor {key} has shape {tuple(tensors[key].shape)}, {CFG_FILE} implies "
                                  f"{want}: the weights and config do not belong together")


def _ints(cfg: dict, where: str, *keys: str) -> tuple[int, ...]:
    try:
        values = tuple(int(cfg[key]) for key in keys)
    except (KeyError, TypeError, ValueError) as err:
        raise DictionaryError(f"{where} lacks a whole-number {' / '.join(keys)}: the config is damaged or not "
                              "from SAELens or sparsify") from err
    if min(values) < 1:
        raise DictionaryError(f"{where} has {dict(zip(keys, values))}: sizes must be positive")
    return values


def _is_ours(path: Path) -> bool:
    """Our config.json (it has a `kind`); an unreadable one counts as ours, so `read_config` reports it."""
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return True
    return isinstance(data, dict) and "kind" in data


def _sae_subfolders(folder: Path) -> list[str]:
    """Subfolders that are SAE folders (sparsify: `layers.3/`, or `layers.3/seed0/` per seed), naturally sorted."""
    if not folder.is_dir():
        return []
    found = []
    for sub in folder.iterdir():
        if not sub.is_dir():
            continue
        if (sub / CFG_FILE).is_file():
            found.append(sub.name)
        else:
            found += [f"{sub.name}/{s.name}" for s in sub.iterdir() if s.is_dir() and (s / CFG_FILE).is_file()]
    return sorted(found, key=lambda s: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s)])
