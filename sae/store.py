"""Writing a dictionary folder: `config.json` + `weights.safetensors`, never pickle.

A leaf of `sae/` (it imports no kind and no loader), so `AffineDictionary.save`
and the trainers reach it without an import circle. The folder is written
beside its target and swapped in by `replace_atomically`, so a killed run
never leaves a folder that looks complete but is not.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import save_file

from common.runstate import replace_atomically, staging_folder, write_json_atomic

if TYPE_CHECKING:
    from sae.kinds.affine import AffineDictionary

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
FORMAT_VERSION = 1


def save_dictionary(dictionary: "AffineDictionary", folder: str | Path) -> Path:
    """Write the folder atomically (replacing an existing one); returns its path."""
    folder = Path(folder)
    config = {**dictionary.config, "kind": dictionary.kind, "name": folder.name,
              "format_version": FORMAT_VERSION}
    with staging_folder(folder) as tmp:
        tensors = {k: v.detach().cpu().clone() for k, v in dictionary.tensors().items()}  # clone: no shared storage
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"kind": dictionary.kind})
        write_json_atomic(tmp / CONFIG_FILE, config)
        replace_atomically(tmp, folder)  # with the user's umask: safetensors writes 0600, a dictionary is shared
    dictionary.name = folder.name
    dictionary.config = config
    return folder
