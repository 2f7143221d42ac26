"""Per-document descriptors: from an annotation field, or proposed by an LLM (Mondal et al.'s first step).

`field:<name>` takes a document's annotation (the Wikipedia leads'
`description`, the tweets' `sentiment`): no model, exact, and the honest
offline source, since no local LLM good enough to describe documents ships
through PyPI. `local:` / `openai:` ask the existing backends for up to five
descriptors of one to three words as a JSON list; every call goes through
the SQLite call cache, and an answer that is not such a list is recorded
(`status: malformed` with the raw answer) and gives the document no
descriptors, never a crash and never a silent empty answer.

As in the paper, the prompt's one worked example is a document of the
corpus itself, drawn by a seed (`one_shot_example`): its descriptors are
the generator's own zero-shot answer (cached), or the built-in kingfisher
example when no drawn document gets a readable answer; the aspects the
descriptors should name are phrased for the corpus (`--aspects`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from activations.corpus import Document
from common.errors import UserError

MAX_DESCRIPTORS = 5
MAX_WORDS = 3
_MAX_CHARS = 1500  # of a document in the prompt: descriptors need the gist, and short prompts keep calls cheap

DEFAULT_ASPECTS = "a topic, entity type, sentiment, style or other property"
SYSTEM = ("You label documents with short descriptors. A descriptor is 1 to 3 words naming {aspects} of the "
          "document. Answer with a JSON list of at most 5 strings and nothing else.")
EXAMPLE_DOC = "The common kingfisher is a small bird found across Eurasia and North Africa; it dives for fish."
EXAMPLE_ANSWER = '["bird species", "animals", "Eurasia", "fishing"]'
_EXAMPLE_TRIES = 10  # documents drawn for the one-shot example before the built-in one is used


@dataclass(frozen=True)
class Example:
    """The prompt's worked example: a document and its descriptors (a JSON list), and where it came from."""

    text: str
    answer: str
    source: str  # "corpus" | "builtin"
    doc_id: str | None = None

    def record(self) -> dict:
        return {"source": self.source, "id": self.doc_id, "text": self.text[:_MAX_CHARS], "answer": self.answer}


BUILTIN_EXAMPLE = Example(EXAMPLE_DOC, EXAMPLE_ANSWER, "builtin")


@dataclass
class DocDescriptors:
    """One document's raw descriptors (normalised), and how they were obtained."""

    id: str
    raw: list[str]
    fields: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"  # ok | empty | malformed | failed
    answer: str | None = None  # the LLM's text when it could not be read


def normalise(descriptor: str) -> str:
    """Lower case, single spaces, no surrounding punctuation: so "Birds." and "birds" are one descriptor."""
    return re.sub(r"\s+", " ", descriptor).strip().strip(".,;:!?\"'").strip().lower()


def check_field(documents: Sequence[Document], name: str) -> None:
    """Refuse a field no document has (before `descriptors` writes anything: a rerun then is not "other settings")."""
    if documents and not any(name in d.fields for d in documents):
        fields = sorted({k for d in documents for k in d.fields})
        raise UserError(f"no document has the field {name!r} (fields: {', '.join(fields) or 'none'}): pass "
                        "--generator field:<one of those>")


def from_field(documents: Sequence[Document], name: str) -> list[DocDescriptors]:
    """Descriptors from the annotation `name` (a string, or a list of strings); missing or empty -> status empty."""
    check_field(documents, name)
    out = []
    for doc in documents:
        value = doc.fields.get(name)
        values = value if isinstance(value, list) else [value]
        raw = list(dict.fromkeys(n for n in (normalise(str(v)) for v in values if v is not None) if n))
        out.append(DocDescriptors(doc.id, raw, dict(doc.fields), "ok" if raw else "empty"))
    return out


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_CHARS else text[:_MAX_CHARS] + " ..."


def messages_for(text: str, example: Example | None = BUILTIN_EXAMPLE,
                 aspects: str = DEFAULT_ASPECTS) -> list[dict[str, str]]:
    """The chat that asks for one document's descriptors (one worked example unless None, then the document)."""
    chat = [{"role": "system", "content": SYSTEM.format(aspects=aspects)}]
    if example is not None:
        chat += [{"role": "user", "content": f"Document:\n{_clip(example.text)}\n\nDescriptors:"},
                 {"role": "assistant", "content": example.answer}]
    return chat + [{"role": "user", "content": f"Document:\n{_clip(text)}\n\nDescriptors:"}]


def one_shot_example(documents: Sequence[Document], backend, seed: int, aspects: str, max_tokens: int) -> Example:
    """A document of the corpus drawn by `seed`, with the generator's own zero-shot descriptors as its answer.

    Documents are drawn in a seeded order until one gets a readable,
    non-empty answer (at most `_EXAMPLE_TRIES`); failing that, the built-in
    example. The same seed and corpus always give the same example.
    """
    from explain.llm.backends import LLMError

    order = np.random.default_rng(seed).permutation(len(documents))[:_EXAMPLE_TRIES]
    for i in order.tolist():
        doc = documents[i]
        try:
            answer = backend.generate(messages_for(doc.text, None, aspects), n=1, temperature=0.0,
                                      max_tokens=max_tokens)[0]
        except LLMError:
            continue
        parsed = parse_answer(answer)
        if parsed:
            return Example(doc.text, json.dumps(parsed, ensure_ascii=False), "corpus", doc.id)
    return BUILTIN_EXAMPLE


def parse_answer(answer: str) -> list[str] | None:
    """The descriptors in an answer, or None when it holds no JSON list of strings.

    The first `[...]` is read (models often add prose around it); items
    longer than three words are dropped, at most five are kept.
    """
    match = re.search(r"\[.*?\]", answer, flags=re.S)
    if not match:
        return None
    try:
        items = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        return None
    kept = [n for n in (normalise(i) for i in items) if n and len(n.split()) <= MAX_WORDS]
    return list(dict.fromkeys(kept))[:MAX_DESCRIPTORS]


def from_llm(documents: Sequence[Document], spec: str, cache_path: Path, *, max_tokens: int,
             base_url: str | None, concurrency: int, example_seed: int | None = 0,
             aspects: str = DEFAULT_ASPECTS) -> tuple[list[DocDescriptors], Example]:
    """Ask the backend `spec` for every document's descriptors (greedy, cached); failures are recorded per document.

    The one-shot example is drawn from `documents` by `example_seed`
    (`one_shot_example`); `example_seed` None uses the built-in example.
    Returns the descriptors and the example used.
    """
    from explain.llm.backends import LLMCache, LLMError, make_backend

    cache = LLMCache(cache_path)
    kind = spec.partition(":")[0]
    backend = make_backend(spec, cache=cache, **({"base_url": base_url, "concurrency": concurrency}
                                                 if kind == "openai" else {}))
    try:
        example = (BUILTIN_EXAMPLE if example_seed is None or not documents else
                   one_shot_example(documents, backend, example_seed, aspects, max_tokens))

        def ask(doc: Document) -> DocDescriptors:
            try:
                answer = backend.generate(messages_for(doc.text, example, aspects), n=1, temperature=0.0,
                                          max_tokens=max_tokens)[0]
            except LLMError as err:
                return DocDescriptors(doc.id, [], dict(doc.fields), "failed", str(err))
            parsed = parse_answer(answer)
            if parsed is None:
                return DocDescriptors(doc.id, [], dict(doc.fields), "malformed", answer)
            return DocDescriptors(doc.id, parsed, dict(doc.fields), "ok" if parsed else "empty",
                                  None if parsed else answer)

        return backend.map_concurrent(ask, list(documents)), example
    finally:
        backend.close()
        cache.close()
