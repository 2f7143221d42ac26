"""Prompt text of the detection, fuzzing and intruder scorers (after Paulo et al. 2024 / delphi).

Each prompt is chat messages: a system message with the task and the
answer format, one handwritten few-shot turn (a user message and its
answer), then the real question. The few-shot turn is the same in every
prompt of a scorer (`SHARED_MESSAGES` leading messages), so a local backend
computes it once; one example, as Choi et al. found best for explainers,
keeps the prompt short (delphi shows three).

* detection: the explanation and 5 examples of plain text; the answer is a
  list like ``[1,0,0,1,1]`` (1: the explanation applies to the example).
* fuzzing: the explanation and 5 examples with tokens marked ``<<like
  this>>``; 1 when the marked tokens are what the explanation describes.
* intruder: no explanation; 5 examples with marked tokens, 4 from one
  feature and 1 from another; the answer is the odd one's number.

Examples are numbered ``1. <text>``, one per line (the format the
explainer's highlight prompt uses). Example text is the window's tokens joined, with newlines, tabs and carriage
returns escaped (`explain.prompts.escape_token`) so every example stays on
its own line, and leading whitespace removed.
"""

from __future__ import annotations

from typing import Sequence

from explain.llm.base import ScoredRequest
from explain.prompts import escape_token

OPEN, CLOSE = "<<", ">>"
SHARED_MESSAGES = 3  # system + the few-shot question and answer

DETECTION_SYSTEM = (
    "You check explanations of features of a language model. An explanation says what kind of text a feature "
    "responds to. You will see an explanation and numbered text examples. For each example, answer 1 if the "
    "explanation applies to it (the feature would respond to something in it) and 0 if it does not. Answer with "
    "a list of 0s and 1s, one per example, such as [1,0,0,1,1], and nothing else."
)
FUZZING_SYSTEM = (
    "You check explanations of features of a language model. An explanation says which tokens a feature "
    f"responds to. You will see an explanation and numbered text examples in which some tokens are marked "
    f"{OPEN}like this{CLOSE}. For each example, answer 1 if the marked tokens are what the explanation describes "
    "and 0 if they are not (in some examples the marks were placed at random). Answer with a list of 0s and 1s, "
    "one per example, such as [1,0,0,1,1], and nothing else."
)
INTRUDER_SYSTEM = (
    f"You will see numbered text examples in which some tokens are marked {OPEN}like this{CLOSE}. In all but one "
    "example the marks show where the same feature of a language model responds, so they have something in "
    "common; in one example they come from a different feature. Which example is the odd one out? Answer with "
    "its number only."
)

DETECTION_FEWSHOT = ("words about cooking", [
    "She chopped the onions and fried them in butter",
    "The train left the station at noon",
    "Preheat the oven and bake for twenty minutes",
    "He scored twice in the second half",
    "The recipe calls for two cups of flour",
], "[1,0,1,0,1]")
FUZZING_FEWSHOT = ("names of cities", [
    f"The {OPEN}cat{CLOSE} slept on the {OPEN}mat{CLOSE} all day",
    f"We flew from {OPEN}Paris{CLOSE} to {OPEN}Rome{CLOSE} last spring",
    f"Traffic in {OPEN}Tokyo{CLOSE} is heavy at night",
    f"She {OPEN}bought{CLOSE} a new red {OPEN}car{CLOSE}",
    f"He grew up in {OPEN}Lagos{CLOSE} before moving",
], "[0,1,1,0,1]")
INTRUDER_FEWSHOT = ([
    f"The treaty was signed in {OPEN}1648{CLOSE} after long talks",
    f"She was born on 3 May {OPEN}1921{CLOSE} in a small town",
    f"By {OPEN}1990{CLOSE} the company had two thousand workers",
    f"The river flows through {OPEN}Vienna{CLOSE} and Budapest",
    f"The bridge opened in {OPEN}1883{CLOSE} to great crowds",
], "4")


def plain_text(tokens: Sequence[str]) -> str:
    return "".join(escape_token(t) for t in tokens).strip()


def marked_text(tokens: Sequence[str], marks: Sequence[bool]) -> str:
    """Tokens with the marked ones wrapped in << >>; adjacent marks merge, a span's leading space stays outside."""
    out: list[str] = []
    span: list[str] = []

    def close() -> None:
        joined = "".join(span)
        stripped = joined.lstrip()
        out.append(f"{joined[: len(joined) - len(stripped)]}{OPEN}{stripped}{CLOSE}" if stripped else joined)
        span.clear()

    for tok, mark in zip(tokens, marks):
        if mark:
            span.append(escape_token(tok))
            continue
        if span:
            close()
        out.append(escape_token(tok))
    if span:
        close()
    return "".join(out).strip()


def _numbered(texts: Sequence[str]) -> str:
    return "\n".join(f"{i}. {t}" for i, t in enumerate(texts, 1))


BINARY = ("0", "1")


def _request(system: str, fewshot_user: str, fewshot_answer: str, user: str, max_tokens: int,
             pieces: tuple[str, ...], choices: tuple[str, ...]) -> ScoredRequest:
    messages = (("system", system), ("user", fewshot_user), ("assistant", fewshot_answer), ("user", user))
    return ScoredRequest(messages=messages, max_tokens=max_tokens, shared=SHARED_MESSAGES, pieces=pieces,
                         choices=choices)


def list_pieces(n: int) -> tuple[str, ...]:
    """The fixed text of an answer list of n judgements: "[", n - 1 commas, "]"."""
    return ("[",) + (",",) * (n - 1) + ("]",)


def list_answer_tokens(n: int) -> int:
    """Token budget for a list of n 0/1 answers: "[", n digits, n - 1 commas, "]", and one token of slack
    (a model that keeps writing past the list has not answered; its batch fails either way)."""
    return 2 * n + 2


def detection_request(explanation: str, texts: Sequence[str]) -> ScoredRequest:
    """`texts` are already plain text (`plain_text`)."""
    expl, shots, answer = DETECTION_FEWSHOT
    return _request(DETECTION_SYSTEM, f"Explanation: {expl}\n\n{_numbered(shots)}", answer,
                    f"Explanation: {explanation.strip()}\n\n{_numbered(texts)}", list_answer_tokens(len(texts)),
                    list_pieces(len(texts)), BINARY)


def fuzzing_request(explanation: str, texts: Sequence[str]) -> ScoredRequest:
    """`texts` are already marked (`marked_text`)."""
    expl, shots, answer = FUZZING_FEWSHOT
    return _request(FUZZING_SYSTEM, f"Explanation: {expl}\n\n{_numbered(shots)}", answer,
                    f"Explanation: {explanation.strip()}\n\n{_numbered(texts)}", list_answer_tokens(len(texts)),
                    list_pieces(len(texts)), BINARY)


def intruder_request(texts: Sequence[str]) -> ScoredRequest:
    """`texts` are already marked; the answer is one number."""
    shots, answer = INTRUDER_FEWSHOT
    return _request(INTRUDER_SYSTEM, _numbered(shots), answer, _numbered(texts), 4, ("", ""),
                    tuple(str(i) for i in range(1, len(texts) + 1)))
