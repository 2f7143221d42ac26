"""Dictionary folders on disk: `config.json` + `weights.safetensors`, never pickle.

Writes go to a temporary sibling first and are renamed into place, so a
killed run never leaves a folder that looks complete but is not.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from activations.errors import first_line
from activations.runstate import write_json_atomic
from sae.kinds.affine import FORMAT_VERSION, AffineDictionary
from sae.registry import kind_class, kind_names
from sae.errors import DictionaryError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


def save_dictionary(dictionary: AffineDictionary, folder: str | Path) -> Path:
    """Write the folder atomically (replacing an existing one); returns its path."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    config = {**dictionary.config, "kind": dictionary.kind, "name": folder.name,
              "format_version": FORMAT_VERSION}
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700); a dictionary is meant to be shared
    try:
        tensors = {k: v.detach().cpu().clone() for k, v in dictionary.tensors().items()}  # clone: no shared storage
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"kind": dictionary.kind})
        os.chmod(tmp / WEIGHTS_FILE, 0o666 & ~_umask())  # safetensors writes 0600; the user's umask decides
        write_json_atomic(tmp / CONFIG_FILE, config)
        if folder.exists():
            trash = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, trash)
            os.replace(tmp, folder)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    dictionary.name = folder.name
    dictionary.config = config
    return folder


def read_config(folder: str | Path) -> dict:
    """Our config.json. A SAELens / sparsify folder has none and is refused: metrics written into it would
    make it half ours; `sae.load` reads it, and `.save()` makes a dictionary folder of this tool from it."""
    from sae.foreign import foreign_format

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
    from sae.foreign import FOREIGN_FILES, foreign_format, load_foreign

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


def update_metrics(folder: str | Path, metrics: dict) -> dict:
    """Merge `metrics` into config.json's "metrics" (atomically); returns the new config."""
    folder = _folder(folder)
    config = read_config(folder)
    config["metrics"] = {**config.get("metrics", {}), **metrics}
    write_json_atomic(folder / CONFIG_FILE, config)
    return config


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
