"""Read a document-level (pooled) cache written by `cli.py cache --pool`; see `activations.pooled` for the layout.

Kept apart from `ActivationCache` because the shapes differ (one row per
document, no token axis) and because the consumers differ: descriptor
assignment wants every document's vector at once ([n_documents, d] fits in
memory for any corpus this tool pools), not shuffled token batches.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from common.errors import UserError
from activations.provenance import record_of
from activations.cache_layout import unreadable_cache
from activations.reader import damaged_line


class PooledCache:
    """Read-only view of a pooled cache; use as a context manager or call close()."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"pooled cache {str(self.path)!r} does not exist: create it with "
                            f"`python cli.py cache --pool mean ... --out {self.path}`")
        if self.path.is_dir():
            raise UserError(f"pooled cache {str(self.path)!r} is a folder, not a cache file: pass the .h5 file that "
                            "`cli.py cache --out` wrote")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise UserError(unreadable_cache(self.path, err, "check the path")) from err
        attrs = dict(self._file.attrs)
        if "pool" not in attrs or "pooled" not in self._file:
            self._file.close()
            raise UserError(f"{self.path} is not a pooled cache (it has no /pooled): write one with "
                            "`python cli.py cache --pool cls|mean|max|last ...`")
        self.pool: str = str(attrs["pool"])
        self.model_id: str = str(attrs["model_id"])
        self.model: dict[str, str] = record_of(attrs)  # what dictionaries used on it are checked against
        self.hooks: list[str] = json.loads(attrs["hooks"])
        self.widths: dict[str, int] = json.loads(attrs["widths"])
        self.context_length = int(attrs["context_length"])
        self.n_documents = int(attrs["n_contexts_done"])
        total = int(attrs["n_contexts"])
        if self.n_documents < total:
            self._file.close()
            raise UserError(f"{self.path} is unfinished ({self.n_documents} of {total} documents): rerun the cache "
                            "command with the same arguments to finish it")
        self.settings: dict = json.loads(attrs["settings"])

    def __enter__(self) -> "PooledCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def doc_ids(self) -> list[str]:
        return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in self._file["doc_ids"][: self.n_documents]]

    def lengths(self) -> np.ndarray:
        return self._file["lengths"][: self.n_documents]

    def tokens(self, index: int) -> np.ndarray:
        """The token ids of one document, without padding."""
        return self._file["tokens"][index, : int(self._file["lengths"][index])]

    def pooled(self, hook: str) -> np.ndarray:
        """All documents' pooled vectors at `hook`, float32 [n_documents, d]."""
        if hook not in self.widths:
            raise UserError(f"hook {hook!r} is not in {self.path} (it has {', '.join(self.hooks)}): pass a dictionary "
                            "of one of those hooks, or cache that hook")
        stored = self._file["pooled"][hook][: self.n_documents]
        x = (stored.astype(np.uint32) << 16).view(np.float32) if stored.dtype == np.uint16 else stored.astype(np.float32)
        finite = np.isfinite(x)
        if not finite.all():  # said where it is read, not later as NaN activations of every feature
            row, column = (int(v) for v in np.argwhere(~finite)[0])
            raise UserError(damaged_line(self.path, float(x[row, column]), "pooled vectors", hook,
                                         f"document {self.doc_ids()[row]!r}, row {row}"))
        return x
