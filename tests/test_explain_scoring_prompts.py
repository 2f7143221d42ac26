"""Golden prompts of the detection, fuzzing and intruder scorers, and how examples are shown and marked.

The prompts are part of what a score means (and of the LLM cache key), so
they are pinned here word for word; a change must be deliberate.
"""

from __future__ import annotations

import numpy as np

from explain.records import Example, ScoringSet
from explain.scorers.detection import DetectionScorer
from explain.scorers.fuzzing import FuzzingScorer, active_marks, fuzz_marks
from explain.scorers.intruder import IntruderScorer
from explain.scorers.prompts import marked_text, plain_text
from explain.settings import ScoringConfig

DETECTION_GOLDEN = [
    ("system", "You check explanations of features of a language model. An explanation says what kind of text a "
               "feature responds to. You will see an explanation and numbered text examples. For each example, answer "
               "1 if the explanation applies to it (the feature would respond to something in it) and 0 if it does "
               "not. Answer with a list of 0s and 1s, one per example, such as [1,0,0,1,1], and nothing else."),
    ("user", "Explanation: words about cooking\n\n1. She chopped the onions and fried them in butter\n"
             "2. The train left the station at noon\n3. Preheat the oven and bake for twenty minutes\n"
             "4. He scored twice in the second half\n5. The recipe calls for two cups of flour"),
    ("assistant", "[1,0,1,0,1]"),
    ("user", "Explanation: the word dog\n\n1. A dog barked.\n2. Cats\\nsleep here"),
]
FUZZING_GOLDEN = [
    ("system", "You check explanations of features of a language model. An explanation says which tokens a feature "
               "responds to. You will see an explanation and numbered text examples in which some tokens are marked "
               "<<like this>>. For each example, answer 1 if the marked tokens are what the explanation describes and "
               "0 if they are not (in some examples the marks were placed at random). Answer with a list of 0s and "
               "1s, one per example, such as [1,0,0,1,1], and nothing else."),
    ("user", "Explanation: names of cities\n\n1. The <<cat>> slept on the <<mat>> all day\n"
             "2. We flew from <<Paris>> to <<Rome>> last spring\n3. Traffic in <<Tokyo>> is heavy at "
             "night\n4. She <<bought>> a new red <<car>>\n5. He grew up in <<Lagos>> before moving"),
    ("assistant", "[0,1,1,0,1]"),
    ("user", "Explanation: the word dog\n\n1. A <<dog>> barked.\n2. Cats\\nsleep <<here>>"),
]
INTRUDER_GOLDEN = [
    ("system", "You will see numbered text examples in which some tokens are marked <<like this>>. In all but one "
               "example the marks show where the same feature of a language model responds, so they have something "
               "in common; in one example they come from a different feature. Which example is the odd one out? "
               "Answer with its number only."),
    ("user", "1. The treaty was signed in <<1648>> after long talks\n2. She was born on 3 May "
             "<<1921>> in a small town\n3. By <<1990>> the company had two thousand workers\n4. The "
             "river flows through <<Vienna>> and Budapest\n5. The bridge opened in <<1883>> to great crowds"),
    ("assistant", "4"),
    ("user", "1. A <<dog>> barked.\n2. Cats\\nsleep <<here>>"),
]

DOG = Example(fragment=4, start=0, tokens=["A", " dog", " barked", "."], activations=[0, 2.0, 0.5, 0], kind="quantile",
              feature=1, bin=9)
CATS = Example(fragment=7, start=32, tokens=["Cats", "\n", "sleep", " here"], activations=[0, 0, 0, 0], kind="random",
               feature=1)
CATS_INTRUDER = Example(fragment=7, start=32, tokens=CATS.tokens, activations=[0, 0, 0, 3.0], kind="intruder",
                        feature=2)


def test_detection_prompt_is_the_golden_one_and_shows_plain_text():
    scorer = DetectionScorer(backend=None, config=ScoringConfig())
    texts = scorer.texts(ScoringSet([DOG, CATS]))
    assert texts == ["A dog barked.", "Cats\\nsleep here"]  # a newline token is escaped: one example per line
    request = scorer.request("the word dog", texts)
    assert [tuple(m) for m in request.messages] == DETECTION_GOLDEN
    assert request.shared == 3 and request.max_tokens == 2 * 2 + 2
    assert request.pieces == ("[", ",", "]") and request.choices == ("0", "1")  # the answer a local model writes


def test_fuzzing_prompt_marks_active_tokens_and_as_many_random_ones_in_non_activating_examples():
    config = ScoringConfig()
    rng = np.random.default_rng(0)
    marks = fuzz_marks(ScoringSet([DOG, CATS]), 0.3, rng)
    # dog: 2.0 and 0.5 (>= 0.3 x 2.0 = 0.6? no) -> only " dog"; cats: one random token, as many as the dog's
    assert marks[0] == [False, True, False, False] and sum(marks[1]) == 1
    scorer = FuzzingScorer(backend=None, config=config)
    request = scorer.request("the word dog", ["A <<dog>> barked.", "Cats\\nsleep <<here>>"])
    assert [tuple(m) for m in request.messages] == FUZZING_GOLDEN
    texts = scorer.texts(ScoringSet([DOG, CATS]))
    assert texts[0] == "A <<dog>> barked." and texts == scorer.texts(ScoringSet([DOG, CATS]))  # seeded: stable


def test_intruder_prompt_needs_no_explanation():
    scorer = IntruderScorer(backend=None, config=ScoringConfig(batch_size=2))
    texts = scorer.texts(ScoringSet([DOG], intruders=[CATS_INTRUDER]), ([0], 0, 1))
    assert texts == ["A <<dog>> barked.", "Cats\\nsleep <<here>>"]  # each marked on its own feature's activations
    from explain.scorers.prompts import intruder_request

    request = intruder_request(texts)
    assert [tuple(m) for m in request.messages] == INTRUDER_GOLDEN
    assert request.pieces == ("", "") and request.choices == ("1", "2")


def test_marks_merge_into_spans_with_their_leading_space_outside():
    tokens = [" The", " big", " dog", " ran", "\n", " home"]
    assert marked_text(tokens, [False, True, True, False, False, True]) == "The <<big dog>> ran\\n <<home>>"
    assert plain_text([" The", " end", "\t"]) == "The end\\t"
    assert active_marks(Example(0, 0, ["a", "b", "c"], [0.0, 0.0, 0.0], "random", 0), 0.3) == [False] * 3
