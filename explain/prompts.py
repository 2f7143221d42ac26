"""Prompt text for the LLM explainer and the all-at-once simulator.

Formats (both from the papers in PAPERS.md):

* ``bills`` (Bills et al. 2023): each record is written between ``<start>`` and
  ``<end>`` as ``token<TAB>value`` lines, value = min(10, floor(10·relu(x)/max))
  with max over all records shown in the prompt. When under 20% of the shown
  values are non-zero, the records are repeated with the zero lines removed, so
  a sparse feature's few active tokens are not lost in a long list. The answer
  is primed with "the main thing this neuron does is find".
* ``highlight`` (Choi et al. 2024): each record is written as running text with
  the activating tokens wrapped ``{{like this}}``. The threshold is the highest
  quantile in `HIGHLIGHT_QUANTILES` (computed over every token shown) that still
  highlights at least 3 tokens; a token is highlighted when its activation is
  >= the threshold and > 0. Adjacent highlighted tokens merge into one span
  (``{{New York}}``, not ``{{New}}{{ York}}``) and a span's leading whitespace
  is written outside the braces (`` {{Paris}}``), so spans read as words.
  Records are numbered ``1. ...`` one per line, leading whitespace stripped.

Token strings are shown with newline, tab and carriage return escaped
(``\\n``, ``\\t``, ``\\r``) so that a newline token cannot break the line
format. Tokens that themselves contain ``{{`` are not escaped (rare; noted).

Message lists are chat messages ``[{"role": ..., "content": ...}]``. When the
last message has role ``assistant`` it is a *prefix the model must continue*
(the priming text); backends honour that (see `explain.llm.base`).

The simulator prompt is a plain completion-style text, returned as a
`SlotPrompt`: a `prefix` shared by every simulation of a run (instructions +
one few-shot feature shown with its true values, ending in "... does is find")
and `pieces` of the body, cut so that a *slot* — the position whose next-token
distribution is the value of one token — sits right after each piece but the
last. Every target line is ``token<TAB>unknown``: the model's next-token
distribution right after the TAB is read (teacher forcing with the placeholder
"unknown", as in Bills et al.'s all-at-once simulator), so one forward pass
yields every token's distribution.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from common.errors import UserError
from explain.records import MAX_DISPLAY, ActivationRecord, FewShotExample

FORMATS = ("bills", "highlight")
EXPLANATION_PREFIX = "the main thing this neuron does is find"
UNKNOWN = "unknown"
SPARSE_FRACTION = 0.2
MIN_HIGHLIGHTED = 3
#: Candidate quantiles for the highlight threshold, highest first.
HIGHLIGHT_QUANTILES = (0.99, 0.98, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.0)

BILLS_SYSTEM = (
    "We're studying neurons in a neural network. Each neuron looks for some particular thing "
    "in a short document. Look at the parts of the document the neuron activates for and "
    "summarize in a single sentence what the neuron is looking for. Don't list examples of words.\n\n"
    "The activation format is token<tab>activation. Activation values range from 0 to 10. "
    "A neuron finding what it's looking for is represented by a non-zero activation value. "
    "The higher the activation value, the stronger the match."
)
HIGHLIGHT_SYSTEM = (
    "We're studying neurons in a neural network. Each neuron activates on particular tokens of a "
    "text. Below are text excerpts in which the tokens where the neuron activates most strongly are "
    "highlighted like {{this}}. Describe in one short phrase what the highlighted tokens have in "
    "common, taking their context into account. Don't list examples of words."
)
SIMULATOR_SYSTEM = (
    "We're studying neurons in a neural network. Each neuron looks for some particular thing in a "
    "short document. Look at an explanation of what the neuron does, and try to predict its "
    "activations on each token.\n\n"
    "The activation format is token<tab>activation, activations go from 0 to 10, \"unknown\" "
    "indicates an unknown activation. Most activations will be 0.\n"
)


class PromptError(UserError):
    """Prompt inputs that cannot be formatted; the message says what to pass instead."""


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise PromptError(f"unknown prompt format {fmt!r}: use one of {', '.join(FORMATS)}")
    return fmt


def escape_token(token: str) -> str:
    return token.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def max_activation(records: Sequence[ActivationRecord]) -> float:
    return max((max(r.activations, default=0.0) for r in records), default=0.0)


def display_value(x: float, max_act: float) -> int:
    """The 0..10 integer shown for activation `x`: min(10, floor(10·relu(x)/max))."""
    if max_act <= 0 or x <= 0:
        return 0
    return min(MAX_DISPLAY, int(math.floor(MAX_DISPLAY * x / max_act)))


def _bills_block(record: ActivationRecord, max_act: float, omit_zeros: bool) -> str:
    lines = ["<start>"]
    for tok, act in zip(record.tokens, record.activations):
        value = display_value(act, max_act)
        if omit_zeros and value == 0:
            continue
        lines.append(f"{escape_token(tok)}\t{value}")
    lines.append("<end>")
    return "\n".join(lines)


def format_bills_records(records: Sequence[ActivationRecord]) -> str:
    """All records in the bills format, plus the zeros-removed repeat when under 20% are non-zero."""
    max_act = max_activation(records)
    text = "\n".join(_bills_block(r, max_act, omit_zeros=False) for r in records)
    values = [display_value(a, max_act) for r in records for a in r.activations]
    if values and sum(v > 0 for v in values) / len(values) < SPARSE_FRACTION:
        repeat = "\n".join(_bills_block(r, max_act, omit_zeros=True) for r in records)
        text += "\nSame activations, but with all zeros filtered out:\n" + repeat
    return text


def highlight_threshold(records: Sequence[ActivationRecord]) -> float:
    """Highest quantile of the shown activations that still highlights >= 3 tokens (inf if none are > 0)."""
    acts = np.array([a for r in records for a in r.activations], dtype=np.float64)
    positive = acts[acts > 0]
    if positive.size == 0:
        return math.inf
    for q in HIGHLIGHT_QUANTILES:
        t = float(np.quantile(acts, q, method="higher"))
        if int(np.sum((acts >= t) & (acts > 0))) >= MIN_HIGHLIGHTED:
            return max(t, float(positive.min()))
    return float(positive.min())


def format_highlight_record(record: ActivationRecord, threshold: float) -> str:
    out: list[str] = []
    span: list[str] = []
    for tok, act in zip(record.tokens, record.activations):
        text = escape_token(tok)
        if act > 0 and act >= threshold:
            span.append(text)
            continue
        if span:
            out.append(_close_span(span))
            span = []
        out.append(text)
    if span:
        out.append(_close_span(span))
    return "".join(out)


def _close_span(span: list[str]) -> str:
    joined = "".join(span)
    stripped = joined.lstrip()
    lead = joined[: len(joined) - len(stripped)]
    return f"{lead}{{{{{stripped}}}}}" if stripped else joined


def format_highlight_records(records: Sequence[ActivationRecord]) -> str:
    threshold = highlight_threshold(records)
    return "\n".join(f"{i}. {format_highlight_record(r, threshold).lstrip()}" for i, r in enumerate(records, 1))


def _check_records(records: Sequence[ActivationRecord]) -> None:
    if not records:
        raise PromptError("no records to show the explainer: pass at least one ActivationRecord")


def build_explainer_messages(
    records: Sequence[ActivationRecord], fmt: str, fewshot: FewShotExample
) -> list[dict[str, str]]:
    """Chat messages asking for one explanation of `records`, with one few-shot feature and its answer."""
    check_format(fmt)
    _check_records(records)
    if fmt == "bills":
        def user(i: int, recs: Sequence[ActivationRecord]) -> str:
            return f"Neuron {i}\nActivations:\n{format_bills_records(recs)}\n\nExplanation of neuron {i} behavior:"

        return [
            {"role": "system", "content": BILLS_SYSTEM},
            {"role": "user", "content": user(1, fewshot.records)},
            {"role": "assistant", "content": f"{EXPLANATION_PREFIX} {fewshot.explanation}."},
            {"role": "user", "content": user(2, records)},
            {"role": "assistant", "content": EXPLANATION_PREFIX},
        ]

    def hl_user(recs: Sequence[ActivationRecord]) -> str:
        return f"Excerpts:\n{format_highlight_records(recs)}\n\nWhat do the highlighted tokens have in common?"

    return [
        {"role": "system", "content": HIGHLIGHT_SYSTEM},
        {"role": "user", "content": hl_user(fewshot.records)},
        {"role": "assistant", "content": fewshot.explanation},
        {"role": "user", "content": hl_user(records)},
    ]


_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\betc)\.\s+(?=[A-Z\"'(])")


def parse_explanation(text: str) -> str:
    """The explanation phrase in a completion: first non-empty line, first sentence, priming prefix removed.

    Returns "" when nothing usable is left; the explainer decides what an empty answer means.
    """
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    line = lines[0]
    low = line.lower()
    for prefix in (EXPLANATION_PREFIX, "the main thing this feature does is find"):
        if low.startswith(prefix):
            line = line[len(prefix):].strip()
            break
    line = _SENTENCE_END.split(line, maxsplit=1)[0]
    line = line.strip().rstrip(".").strip()
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'":
        line = line[1:-1].strip()
    return line


@dataclass(frozen=True)
class SlotPrompt:
    """A simulation prompt: shared `prefix` + body `pieces`; slot i is right after pieces[i], i < len(pieces)-1.

    `record_lengths` splits the slots back into fragments (their sum is the number of slots).
    """

    prefix: str
    pieces: tuple[str, ...]
    record_lengths: tuple[int, ...]

    @property
    def n_slots(self) -> int:
        return len(self.pieces) - 1

    @property
    def text(self) -> str:
        return self.prefix + "".join(self.pieces)

    def slot_offsets(self) -> list[int]:
        """Character offsets in `text` where each slot's value would start."""
        offsets, pos = [], len(self.prefix)
        for piece in self.pieces[:-1]:
            pos += len(piece)
            offsets.append(pos)
        return offsets

    def text_through_slot(self, i: int) -> str:
        """The prompt cut right after slot i (what a one-call-per-token simulator would send)."""
        return self.prefix + "".join(self.pieces[: i + 1])

    def to_json(self) -> dict:
        return {"prefix": self.prefix, "pieces": list(self.pieces), "record_lengths": list(self.record_lengths)}


def simulation_prefix(fewshot: FewShotExample) -> str:
    """The part of every simulation prompt that does not depend on the explanation (reused via KV cache)."""
    return (
        f"{SIMULATOR_SYSTEM}\n"
        f"Neuron 1\nExplanation of neuron 1 behavior: {EXPLANATION_PREFIX} {fewshot.explanation}\n"
        f"Activations:\n{format_bills_records_plain(fewshot.records)}\n\n"
        f"Neuron 2\nExplanation of neuron 2 behavior: {EXPLANATION_PREFIX}"
    )


def format_bills_records_plain(records: Sequence[ActivationRecord]) -> str:
    """Bills blocks without the zeros-removed repeat (the simulator shows every token's value)."""
    max_act = max_activation(records)
    return "\n".join(_bills_block(r, max_act, omit_zeros=False) for r in records)


def build_simulation_prompt(explanation: str, fragments: Sequence[Sequence[str]], fewshot: FewShotExample) -> SlotPrompt:
    """One prompt for (explanation, group of fragments) with every target token written `token<TAB>unknown`."""
    if not fragments or any(len(f) == 0 for f in fragments):
        raise PromptError("every fragment to simulate needs at least one token: drop empty fragments first")
    explanation = explanation.strip()
    pieces: list[str] = []
    pending = f" {explanation}\nActivations:\n" if explanation else "\nActivations:\n"
    for r, tokens in enumerate(fragments):
        pending += "<start>\n" if r == 0 else f"{UNKNOWN}\n<end>\n<start>\n"
        for t, tok in enumerate(tokens):
            if t > 0:
                pending += f"{UNKNOWN}\n"
            pieces.append(pending + f"{escape_token(tok)}\t")
            pending = ""
    pieces.append(f"{UNKNOWN}\n<end>\n")
    return SlotPrompt(prefix=simulation_prefix(fewshot), pieces=tuple(pieces),
                      record_lengths=tuple(len(f) for f in fragments))
