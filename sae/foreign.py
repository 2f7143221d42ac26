"""SAEs trained by other libraries (SAELens, EleutherAI sparsify), opened as dictionaries of this tool.

`sae.load` (`sae.io.load_foreign`) sends a folder to `sae.foreign_saelens`
or `sae.foreign_sparsify` when it holds a library's `cfg.json` instead
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

from common.errors import first_line
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
OUR_CONFIG = "config.json"


def foreign_format(folder: Path) -> str | None:
    """"saelens", "sparsify", or None for a folder of this tool (or no dictionary at all).

    Our `config.json` with a `kind` wins, so a dictionary exported into its own
    folder still loads as ours. A folder that only holds foreign SAE subfolders
    (a sparsify run: one subfolder per hookpoint) raises, naming them.
    """
    folder = Path(folder)
    if _is_ours(folder / OUR_CONFIG):
        return None
    if (folder / CFG_FILE).is_file():
        if (folder / SPARSIFY_WEIGHTS).is_file():
            return "sparsify"
        if (folder / SAELENS_WEIGHTS).is_file():
            return "saelens"
        cfg = read_cfg(folder)
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


# -- shared ------------------------------------------------------------------

def build_dictionary(name: str, w_e: Tensor, b_e: Tensor, dec: Tensor, b_d: Tensor, threshold: Tensor | None, k: int | None,
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


def read_cfg(folder: Path) -> dict:
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


def read_weights(path: Path) -> dict[str, Tensor]:
    """All tensors in float64, so folds and bias shifts round once, when the result is stored in float32."""
    try:
        return {k: v.to(torch.float64) for k, v in load_file(str(path), device="cpu").items()}
    except (SafetensorError, OSError) as err:
        raise DictionaryError(f"{path} cannot be read ({first_line(err)}): the file is damaged; download or "
                              "save it again") from err


def check_shapes(tensors: dict[str, Tensor], shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        raise DictionaryError(f"{path} lacks tensors {missing} (has {sorted(tensors)}): the file does not match "
                              f"its {CFG_FILE}")
    for key, want in shapes.items():
        if tuple(tensors[key].shape) != want:
            raise DictionaryError(f"{path}: tensor {key} has shape {tuple(tensors[key].shape)}, {CFG_FILE} implies "
                                  f"{want}: the weights and config do not belong together")


def cfg_ints(cfg: dict, where: str, *keys: str) -> tuple[int, ...]:
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
