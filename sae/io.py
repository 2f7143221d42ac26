"""Reading dictionary folders: ours (`config.json` + `weights.safetensors`, never pickle) and other libraries'.

Writing is `sae.store` (a leaf every kind's `.save()` reaches without
importing the loaders); SAELens and sparsify folders are converted by
`sae.foreign_saelens` / `sae.foreign_sparsify` on load.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from common.errors import first_line
from common.runstate import write_json_atomic
from sae.errors import DictionaryError
from sae.foreign import CFG_FILE, FOREIGN_FILES, foreign_format, read_cfg
from sae.foreign_saelens import load_saelens
from sae.foreign_sparsify import load_sparsify
from sae.kinds.affine import AffineDictionary
from sae.registry import kind_class, kind_names
from sae.store import CONFIG_FILE, WEIGHTS_FILE, save_dictionary

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "load", "load_foreign", "read_config", "save_dictionary", "update_metrics"]


def read_config(folder: str | Path) -> dict:
    """Our config.json. A SAELens / sparsify folder has none and is refused: metrics written into it would
    make it half ours; `sae.load` reads it, and `.save()` makes a dictionary folder of this tool from it."""
    folder = _folder(folder)
    path = folder / CONFIG_FILE
    library = foreign_format(folder)  # raises, listing them, for a folder of several SAEs (a sparsify run)
    if library is not None:
        raise DictionaryError(f"{folder} is a {library} folder, which this tool reads but does not write to: "
                              "save a copy in this tool's format with `sae.load(folder).save(new_folder)` and use that")
    if not path.exists():
        raise DictionaryError(f"{folder} has no {CONFIG_FILE}: pass a folder made by `cli.py train-sae` or `cli.py baselines`"
                              " (or a SAELens / sparsify SAE folder, to `sae.load`)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DictionaryError(f"{path} is not valid JSON ({err.msg}): re-create the dictionary") from err


def load(path: str | Path, device: str = "cpu") -> AffineDictionary:
    """Load any dictionary folder; the class follows the `kind` in its config.json.

    A SAELens folder (cfg.json + sae_weights.safetensors) or a sparsify one
    (cfg.json + sae.safetensors) is converted on load by `sae.foreign`, so SAEs
    trained elsewhere are explained and patched like ours.
    """
    given = Path(path)
    folder = _folder(given.parent if given.is_file() and given.name in FOREIGN_FILES else given)
    if foreign_format(folder) is not None:
        return load_foreign(folder).to(device)
    config = read_config(folder)
    kind = config.get("kind")
    if kind not in kind_names():
        raise DictionaryError(f"{folder}/{CONFIG_FILE} has kind {kind!r}, not one of {', '.join(sorted(kind_names()))}: "
                              "re-create the dictionary with this version of the tool")
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        raise DictionaryError(f"{folder} has no {WEIGHTS_FILE}: the folder is incomplete; re-create it")
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as err:
        raise DictionaryError(f"{weights} cannot be read ({first_line(err)}): the file is damaged; "
                              "re-create the dictionary") from err
    return kind_class(kind)(tensors, config, name=folder.name).to(device)


def load_foreign(folder: Path) -> AffineDictionary:
    """The SAE in `folder` (a SAELens or sparsify save) as one of our kinds; DictionaryError if not exactly."""
    folder = Path(folder)
    library = foreign_format(folder)
    if library is None:
        raise DictionaryError(f"{folder} is not a SAELens or sparsify folder (no {CFG_FILE} with its weights file)")
    cfg = read_cfg(folder)
    return (load_saelens if library == "saelens" else load_sparsify)(folder, cfg)


def update_metrics(folder: str | Path, metrics: dict) -> dict:
    """Merge `metrics` into config.json's "metrics" (atomically); returns the new config."""
    folder = _folder(folder)
    config = read_config(folder)
    config["metrics"] = {**config.get("metrics", {}), **metrics}
    write_json_atomic(folder / CONFIG_FILE, config)
    return config


def _folder(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() and p.name in (CONFIG_FILE, WEIGHTS_FILE):
        p = p.parent
    if p.is_file():
        raise DictionaryError(f"{str(p)!r} is a file, not a dictionary folder: pass the folder that holds config.json "
                              "and weights.safetensors (made by `cli.py train-sae` or `cli.py baselines`)")
    if not p.is_dir():
        raise DictionaryError(f"no dictionary folder at {str(p)!r}: pass a folder made by `cli.py train-sae` or `cli.py baselines`")
    return p
