"""Simulation from text answers: for backends that return no log-probabilities (the text scoring mode).

The all-at-once simulator reads a distribution over 0..10 at every token,
which needs log-probabilities. Many servers give none (`transformers serve`,
some hosted APIs and gateways), so in text mode the model is asked instead,
once per fragment, for the activation of each listed token as a JSON list
of integers 0..10, and the parsed integers are the simulated values (the
same scale as the expected values of the logprob mode, but each is one
written integer, not an average over the model's distribution: scores of
the two modes are kept apart by `compare` and the report).

An answer that holds no JSON list, a list with anything but integers
0..10, or a list of the wrong length is a *failed fragment*: its value is
None (never padded with zeros or guessed), the answer and the reason are
recorded, and the scorer leaves the fragment out of the correlation. The
prompt shows the simulator's one handwritten few-shot feature as a worked
turn, like the logprob mode's prompt, so both modes see the same example.
"""

from __future__ import annotations

import json
import re
from typing import Sequence

from common.errors import UserError
from explain.llm.base import Generation, LLMBackend, ScoredRequest
from explain.prompts import display_value, max_activation
from explain.records import DEFAULT_SIM_FEWSHOT, FewShotExample, Fragments, SimulationResult, fragment_tokens, load_fewshot
from explain.scorers.answers import AnswerError

TEXT_MODE = "text"
SYSTEM = (
    "You predict how strongly a feature of a language model responds to each token of a text, from an "
    "explanation of what the feature responds to. Rate each token with an integer from 0 (not at all) to 10 "
    "(most strongly); most tokens are usually 0. Answer with a JSON list of integers, one per token, in order, "
    "and nothing else."
)
_LIST = re.compile(r"\[[^\[\]]*\]")


def _user(explanation: str, tokens: Sequence[str]) -> str:
    listed = "\n".join(f"{i}. {json.dumps(t, ensure_ascii=False)}" for i, t in enumerate(tokens, 1))
    return (f"Explanation: {explanation.strip()}\n\nTokens ({len(tokens)}):\n{listed}\n\n"
            f"Answer with a JSON list of exactly {len(tokens)} integers from 0 to 10.")


def text_request(explanation: str, tokens: Sequence[str], fewshot: FewShotExample) -> ScoredRequest:
    """The chat request for one fragment: system, the few-shot turn (its first record), the question."""
    if not tokens:
        raise UserError("nothing to simulate: every fragment needs at least one token")
    shot = fewshot.records[0]
    peak = max_activation(fewshot.records)
    answer = json.dumps([display_value(a, peak) for a in shot.activations])
    messages = (("system", SYSTEM), ("user", _user(fewshot.explanation, shot.tokens)), ("assistant", answer),
                ("user", _user(explanation, tokens)))
    # "10, " is 4 tokens where digits are split one per token (SmolLM2, Llama 3); slack for the brackets
    return ScoredRequest(messages=messages, max_tokens=4 * len(tokens) + 8, shared=3)


def parse_values(text: str, n: int) -> list[int]:
    """The n integers 0..10 of an answer like "[0, 3, 10]"; AnswerError for anything else (nothing is padded)."""
    found = _LIST.search(text)
    if found is None and "[" in text:
        raise AnswerError(f"the answer's list is never closed (cut off, or longer than asked): {text.strip()[:60]!r}")
    if found is None:
        raise AnswerError(f"no JSON list in the answer {text.strip()[:60]!r}")
    try:
        values = json.loads(found.group(0))
    except json.JSONDecodeError as err:
        raise AnswerError(f"the answer's list is not JSON ({err.msg}): {found.group(0)[:60]!r}") from err
    if not all(type(v) is int and 0 <= v <= 10 for v in values):
        raise AnswerError(f"the answer's list holds something other than integers 0..10: {found.group(0)[:60]!r}")
    if len(values) != n:
        raise AnswerError(f"{len(values)} values for {n} tokens: {found.group(0)[:60]!r}")
    return values


class TextSimulator:
    """`simulate_many` as `AllAtOnceSimulator` has it, from text answers; failed fragments are None."""

    def __init__(self, backend: LLMBackend, fewshot_id: str = DEFAULT_SIM_FEWSHOT):
        self.backend = backend
        self.fewshot = load_fewshot([fewshot_id])[0]

    def simulate_many(self, jobs: Sequence[tuple[str, Fragments]]) -> list[SimulationResult]:
        requests: list[ScoredRequest] = []
        spans: list[tuple[int, int]] = []
        token_lists: list[list[str]] = []
        for explanation, fragments in jobs:
            if not fragments:
                raise UserError("nothing to simulate: pass at least one fragment per explanation")
            lists = [fragment_tokens(f) for f in fragments]
            spans.append((len(requests), len(requests) + len(lists)))
            token_lists.extend(lists)
            requests.extend(text_request(explanation, t, self.fewshot) for t in lists)
        answers = self.backend.generate_text(requests)
        return [self._result(explanation, token_lists[a:b], answers[a:b])
                for (explanation, _), (a, b) in zip(jobs, spans)]

    def _result(self, explanation: str, token_lists: list[list[str]], answers: list[Generation]) -> SimulationResult:
        values: list[list[float] | None] = []
        failed = []
        for i, (tokens, gen) in enumerate(zip(token_lists, answers)):
            try:
                values.append([float(v) for v in parse_values(gen.text, len(tokens))])
            except AnswerError as err:
                values.append(None)
                failed.append({"fragment": i, "error": str(err), "answer": gen.text[:300]})
        return SimulationResult(
            explanation=explanation, expected_values=values, distributions=[[] for _ in values],
            mode=TEXT_MODE, ten="n/a", backend=self.backend.name,
            n_calls=sum(g.n_calls for g in answers), n_cached=sum(g.n_cached for g in answers),
            extra={"fewshot": self.fewshot.id, "n_prompts": len(answers), "n_tokens": 0, "failed_fragments": failed})
