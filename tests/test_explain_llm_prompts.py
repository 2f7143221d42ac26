"""Golden strings for the explainer and simulator prompts (expected text written by hand)."""

from __future__ import annotations

import pytest

from common.errors import UserError
from explain.prompts import (
    BILLS_SYSTEM,
    HIGHLIGHT_SYSTEM,
    SIMULATOR_SYSTEM,
    build_explainer_messages,
    build_simulation_prompt,
    display_value,
    highlight_threshold,
    parse_explanation,
)
from explain.records import ActivationRecord, FewShotExample, load_fewshot

FS = FewShotExample(id="fx", explanation="dogs", records=(ActivationRecord([" dog", " ran"], [3.0, 0.0]),))
R1 = ActivationRecord(["The", " cat", " sat"], [0.0, 2.0, 4.0])
R2 = ActivationRecord([" A", "\n", " dog"], [1.0, 0.0, 0.5])


def test_display_value_is_floor_of_ten_times_relu_over_max():
    assert [display_value(x, 4.0) for x in (-1.0, 0.0, 0.39, 0.4, 2.0, 3.99, 4.0, 9.0)] == [0, 0, 0, 1, 5, 9, 10, 10]
    assert display_value(1.0, 0.0) == 0


def test_bills_golden_two_records():
    messages = build_explainer_messages([R1, R2], "bills", FS)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == BILLS_SYSTEM
    assert messages[1]["content"] == (
        "Neuron 1\nActivations:\n<start>\n dog\t10\n ran\t0\n<end>\n\nExplanation of neuron 1 behavior:"
    )
    assert messages[2]["content"] == "the main thing this neuron does is find dogs."
    # max over both records is 4.0: 2.0 -> 5, 1.0 -> 2, 0.5 -> 1; the newline token is escaped.
    assert messages[3]["content"] == (
        "Neuron 2\nActivations:\n"
        "<start>\nThe\t0\n cat\t5\n sat\t10\n<end>\n"
        "<start>\n A\t2\n\\n\t0\n dog\t1\n<end>\n\n"
        "Explanation of neuron 2 behavior:"
    )
    assert messages[4] == {"role": "assistant", "content": "the main thing this neuron does is find"}


def test_bills_sparse_records_are_repeated_without_zeros():
    sparse = [ActivationRecord([" x", " y", " z"], [0.0, 0.0, 2.0]), ActivationRecord([" u", " v", " w"], [0.0] * 3)]
    user = build_explainer_messages(sparse, "bills", FS)[3]["content"]
    assert user == (
        "Neuron 2\nActivations:\n"
        "<start>\n x\t0\n y\t0\n z\t10\n<end>\n"
        "<start>\n u\t0\n v\t0\n w\t0\n<end>\n"
        "Same activations, but with all zeros filtered out:\n"
        "<start>\n z\t10\n<end>\n"
        "<start>\n<end>\n\n"
        "Explanation of neuron 2 behavior:"
    )


def test_bills_no_repeat_at_twenty_percent_nonzero():
    rec = ActivationRecord([f" t{i}" for i in range(5)], [0.0, 0.0, 0.0, 0.0, 1.0])  # exactly 1/5 = 20%
    assert "filtered out" not in build_explainer_messages([rec], "bills", FS)[3]["content"]


def test_highlight_golden_two_records():
    recs = [ActivationRecord(["The", " cat", " sat"], [0.0, 2.0, 4.0]),
            ActivationRecord([" New", " York", " is", " big"], [3.0, 3.5, 0.0, 0.5])]
    # values sorted: 0 0 0.5 2 3 3.5 4; quantiles .99-.7 highlight 1-2 tokens, .6 gives 3.0 -> 3 tokens.
    assert highlight_threshold(recs) == 3.0
    messages = build_explainer_messages(recs, "highlight", FS)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == HIGHLIGHT_SYSTEM
    assert messages[1]["content"] == "Excerpts:\n1. {{dog}} ran\n\nWhat do the highlighted tokens have in common?"
    assert messages[2]["content"] == "dogs"
    assert messages[3]["content"] == (
        "Excerpts:\n1. The cat {{sat}}\n2. {{New York}} is big\n\nWhat do the highlighted tokens have in common?"
    )


def test_highlight_never_marks_zero_activations():
    recs = [ActivationRecord([" a", " b", " c", " d"], [0.0, 0.0, 1.0, 0.0])]
    assert highlight_threshold(recs) == 1.0
    assert build_explainer_messages(recs, "highlight", FS)[3]["content"].startswith("Excerpts:\n1. a b {{c}} d\n")
    assert highlight_threshold([ActivationRecord([" a"], [0.0])]) == float("inf")


def test_simulation_prompt_golden():
    prompt = build_simulation_prompt("dogs", [["A", " dog"], [" ran"]], FS)
    assert prompt.prefix == (
        SIMULATOR_SYSTEM + "\n"
        "Neuron 1\nExplanation of neuron 1 behavior: the main thing this neuron does is find dogs\n"
        "Activations:\n<start>\n dog\t10\n ran\t0\n<end>\n\n"
        "Neuron 2\nExplanation of neuron 2 behavior: the main thing this neuron does is find"
    )
    assert prompt.text == prompt.prefix + (
        " dogs\nActivations:\n<start>\nA\tunknown\n dog\tunknown\n<end>\n<start>\n ran\tunknown\n<end>\n"
    )
    assert prompt.n_slots == 3 and prompt.record_lengths == (2, 1)
    # every slot sits right after a TAB, where "unknown" starts
    assert all(prompt.text[c - 1] == "\t" and prompt.text[c:].startswith("unknown") for c in prompt.slot_offsets())
    assert prompt.text_through_slot(1) == prompt.prefix + " dogs\nActivations:\n<start>\nA\tunknown\n dog\t"


def test_simulation_prompt_rejects_empty_fragment():
    with pytest.raises(UserError, match="at least one token"):
        build_simulation_prompt("x", [["a"], []], FS)


@pytest.mark.parametrize("text, expected", [
    (" the main thing this neuron does is find years, e.g. 1945. Also dates.\nmore", "years, e.g. 1945"),
    ("\n\n  \"capital cities\"  \n", "capital cities"),
    ("The main thing this neuron does is find closing brackets.", "closing brackets"),
    ("   \n ", ""),
])
def test_parse_explanation(text, expected):
    assert parse_explanation(text) == expected


def test_fewshot_examples_are_valid_and_distinct():
    examples = load_fewshot()
    assert {e.id for e in examples} >= {"years", "closing_brackets", "negation", "capital_cities"}
    for e in examples:
        assert e.explanation and len(e.records) >= 2
        assert any(a > 0 for r in e.records for a in r.activations)
    with pytest.raises(UserError, match="unknown few-shot"):
        load_fewshot(["nope"])
