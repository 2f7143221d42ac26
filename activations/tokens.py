"""Token ids -> one display string per token, with characters split across tokens shown as themselves.

Byte-level tokenizers (GPT-2, Llama-3, SmolLM2) and SentencePiece's byte
fallback split a character outside their vocabulary (an emoji, Hebrew, CJK)
into several tokens of raw bytes; each such token decoded alone is "\ufffd".
`decode_each` decodes those tokens in runs: a run of tokens that do not
decode alone is decoded incrementally, and each token gets the text that its
bytes complete, so the strings still line up one-to-one with the tokens (and
their activations) while their concatenation is the run's real text. A token
whose bytes only start a character gets "" (the character appears on the
token that completes it); a byte that never completes a character (a
fragment cut inside one) stays "\ufffd".
"""

from __future__ import annotations

from typing import Any, Iterable

REPLACEMENT = "\ufffd"


def decode_each(tokenizer: Any, ids: Iterable[int], memo: dict[int, str] | None = None) -> list[str]:
    """One string per id; ids whose lone decoding holds U+FFFD are decoded in runs (see the module docstring)."""
    memo = {} if memo is None else memo
    ids = [int(i) for i in ids]

    def alone(i: int) -> str:
        s = memo.get(i)
        if s is None:
            s = memo[i] = _decode(tokenizer, [i])
        return s

    out: list[str] = []
    k = 0
    while k < len(ids):
        if REPLACEMENT not in alone(ids[k]):
            out.append(alone(ids[k]))
            k += 1
            continue
        end = k + 1
        while end < len(ids) and REPLACEMENT in alone(ids[end]):
            end += 1
        out.extend(_decode_run(tokenizer, ids[k:end], [alone(i) for i in ids[k:end]]))
        k = end
    return out


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _decode_run(tokenizer: Any, run: list[int], alone: list[str]) -> list[str]:
    """Per-token strings of a run of tokens that do not decode alone.

    From each token on, the shortest group of at most `_MAX_GROUP` tokens that
    decodes without U+FFFD is one or more whole characters; within it each
    token gets what its bytes complete (so "ab" + the first byte of "€" shows
    "ab" and the next token "€"). A token that no group completes (bytes cut
    off at a fragment's edge, or a real U+FFFD in the text) keeps its lone string.
    """
    out: list[str] = []
    k = 0
    while k < len(run):
        for end in range(k + 2, min(len(run), k + _MAX_GROUP) + 1):
            if REPLACEMENT not in _decode(tokenizer, run[k:end]):
                out.extend(_incremental(tokenizer, run[k:end]) or alone[k:end])
                k = end
                break
        else:
            out.append(alone[k])
            k += 1
    return out


_MAX_GROUP = 8  # tokens one character may be split into (UTF-8 needs at most 4 bytes; a margin for merges)


def _incremental(tokenizer: Any, group: list[int]) -> list[str] | None:
    """What each token of a group that decodes cleanly adds to the text; None if decoding is not prefix-stable."""
    texts, shown = [], ""
    for n in range(1, len(group) + 1):
        text = _decode(tokenizer, group[:n])
        # an incomplete character at the end decodes as U+FFFD until a later token completes it
        stable = text if n == len(group) else text.rstrip(REPLACEMENT)
        if not stable.startswith(shown):
            return None
        texts.append(stable[len(shown):])
        shown = stable
    return texts
