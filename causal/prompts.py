"""IOI (indirect object identification) prompt pairs for causal patching.

A clean prompt names two people, A (the indirect object, IO) and B (the
subject, S), mentions B again, and ends right before the answer, so the
model's next token should be A:  "When Mary and John went to the store,
John gave a drink to" -> " Mary".  The counterfactual replaces A by a third
name C everywhere, so the information that moves the answer from A to C is
exactly what feature patching has to carry.

Names must be one token (with their leading space) for the subject model's
tokenizer: otherwise the answer is not one next-token prediction and the
clean and counterfactual prompts could differ in length. Pairs whose token
lengths still differ (a name merging with its neighbour) are redrawn, so
positions line up one to one between the two runs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from common.errors import UserError


class IOIPromptError(UserError):
    """The tokenizer cannot express the IOI task (too few one-token names, no pair of equal length)."""


# ABBA: A, B, then B again; BABA: B, A, then B again. The answer is always A.
# Each body is used in both orders, so every scenario appears as ABBA and as BABA.
_BODIES = [
    "When {X} and {Y} went to the {PLACE}, {B} gave a {OBJECT} to",
    "Then, {X} and {Y} went to the {PLACE}. {B} gave a {OBJECT} to",
    "After {X} and {Y} went to the {PLACE}, {B} handed a {OBJECT} to",
    "While {X} and {Y} were working at the {PLACE}, {B} gave a {OBJECT} to",
    "When {X} and {Y} got a {OBJECT} at the {PLACE}, {B} decided to give it to",
    "Then, {X} and {Y} had a lot of fun at the {PLACE}. {B} gave a {OBJECT} to",
    "Afterwards, {X} and {Y} went to the {PLACE}. {B} brought a {OBJECT} to",
    "Friends {X} and {Y} found a {OBJECT} at the {PLACE}. {B} gave it to",
    "Yesterday {X} and {Y} walked to the {PLACE}, and {B} passed a {OBJECT} to",
    "When {X} and {Y} arrived at the {PLACE}, {B} showed a {OBJECT} to",
    "Later, {X} and {Y} met at the {PLACE}. {B} sold a {OBJECT} to",
    "While {X} and {Y} were sitting in the {PLACE}, {B} threw a {OBJECT} to",
    "After lunch, {X} and {Y} went to the {PLACE}. {B} offered a {OBJECT} to",
    "Then, {X} and {Y} were thinking about the {PLACE}. {B} wanted to give a {OBJECT} to",
    "When {X} and {Y} left the {PLACE}, {B} sent a {OBJECT} to",
    "On Sunday {X} and {Y} visited the {PLACE}, where {B} gave a {OBJECT} to",
]
ABBA_TEMPLATES = [b.replace("{X}", "{A}").replace("{Y}", "{B}") for b in _BODIES]
BABA_TEMPLATES = [b.replace("{X}", "{B}").replace("{Y}", "{A}") for b in _BODIES]

NAMES = [
    "Mary", "John", "Alice", "Bob", "James", "Michael", "David", "Sarah", "Emma", "Paul",
    "Mark", "Anna", "Laura", "Peter", "Tom", "Kate", "Lisa", "Daniel", "Robert", "William",
    "Richard", "Thomas", "Charles", "Joseph", "Linda", "Susan", "Karen", "Nancy", "Betty", "Helen",
    "Sandra", "Donna", "Carol", "Ruth", "Sharon", "Michelle", "Jessica", "Jennifer", "George", "Edward",
    "Brian", "Kevin", "Jason", "Jeff", "Ryan", "Gary", "Eric", "Stephen", "Andrew", "Frank",
    "Scott", "Justin", "Adam", "Henry", "Jack", "Rachel", "Amy", "Anne", "Emily", "Julia",
    "Grace", "Rose", "Alex", "Sam", "Max", "Ben", "Dan", "Tim", "Joe", "Jim",
    "Steve", "Chris", "Matt", "Nick", "Luke", "Sean", "Ian", "Carl", "Oliver", "Lucy",
    "Sophie", "Victoria", "Martin", "Simon", "Patrick", "Jane", "Elizabeth", "Maria", "Claire", "Amanda",
]
PLACES = [
    "store", "garden", "restaurant", "school", "hospital", "office", "station", "park", "house", "market",
    "library", "beach", "hotel", "church", "museum", "kitchen", "river", "farm", "bank", "airport",
]
OBJECTS = [
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack", "book", "letter",
    "bag", "ball", "cake", "key", "pen", "hat", "flower", "phone", "box", "gift",
]


@dataclass(frozen=True)
class IOIPair:
    """One clean / counterfactual pair with the token ids needed for logits and patching."""

    template: str
    order: str  # "ABBA" or "BABA"
    io: str  # the indirect object A (the clean answer)
    s: str  # the subject B
    cf_io: str  # the third name C that replaces A in the counterfactual
    clean_text: str
    cf_text: str
    clean_ids: list[int]
    cf_ids: list[int]
    io_id: int  # token of " A"
    s_id: int  # token of " B"
    cf_io_id: int  # token of " C"


@dataclass
class IOIConfig:
    n_prompts: int = 50
    seed: int = 0
    names: list[str] | None = None  # None: the built-in list, filtered to one-token names
    places: list[str] = field(default_factory=lambda: list(PLACES))
    objects: list[str] = field(default_factory=lambda: list(OBJECTS))


def single_token_id(tokenizer, word: str) -> int | None:
    """The id of `word` (leading space included) if the tokenizer makes it one token, else None."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def single_token_names(tokenizer, names: list[str] | None = None) -> dict[str, int]:
    """Names that are one token with a leading space, mapped to that token id.

    Raises IOIPromptError when fewer than 3 qualify: the task needs A, B and
    a distinct C.
    """
    candidates = NAMES if names is None else names
    found: dict[str, int] = {}
    for name in candidates:
        token = single_token_id(tokenizer, " " + name.strip())
        if token is not None and token not in found.values():
            found[name.strip()] = token
    if len(found) < 3:
        raise IOIPromptError(
            f"only {len(found)} of {len(candidates)} names are a single token (with a leading space) for this "
            f"tokenizer ({sorted(found) or 'none'}); the IOI task needs at least 3: use a model whose tokenizer "
            "has whole-word names, or pass a custom name list whose entries are single tokens"
        )
    return found


def _fill(template: str, a: str, b: str, place: str, obj: str) -> str:
    return template.format(A=a, B=b, PLACE=place, OBJECT=obj)


def make_ioi_pairs(tokenizer, config: IOIConfig, max_tries_per_pair: int = 200) -> list[IOIPair]:
    """Draw `n_prompts` pairs, alternating ABBA and BABA, seeded and reproducible.

    Reproducibility comes from a private random.Random(seed) and from the
    name list being filtered in its fixed order, so the same tokenizer and
    seed always give the same pairs.
    """
    if config.n_prompts < 1:
        raise IOIPromptError(f"--n-prompts must be at least 1, got {config.n_prompts}")
    if not config.places or not config.objects:
        raise IOIPromptError("the IOI templates need at least one place and one object: pass non-empty lists")
    names = single_token_names(tokenizer, config.names)
    name_list = list(names)
    n = len(name_list)
    distinct = 2 * len(_BODIES) * n * (n - 1) * (n - 2) * len(set(config.places)) * len(set(config.objects))
    if config.n_prompts > distinct:  # the pairs are drawn with replacement: ioi_prompts.json holds the repeats
        print(f"note: --n-prompts {config.n_prompts} is more than the {distinct:,} distinct prompts that "
              f"{n} names make: some prompts repeat; pass more --names or fewer --n-prompts")
    rng = random.Random(config.seed)
    pairs: list[IOIPair] = []
    for i in range(config.n_prompts):
        order = "ABBA" if i % 2 == 0 else "BABA"
        templates = ABBA_TEMPLATES if order == "ABBA" else BABA_TEMPLATES
        for _ in range(max_tries_per_pair):
            template = rng.choice(templates)
            a, b, c = rng.sample(name_list, 3)
            place, obj = rng.choice(config.places), rng.choice(config.objects)
            clean_text = _fill(template, a, b, place, obj)
            cf_text = _fill(template, c, b, place, obj)
            clean_ids = tokenizer(clean_text)["input_ids"]
            cf_ids = tokenizer(cf_text)["input_ids"]
            if len(clean_ids) == len(cf_ids):
                pairs.append(IOIPair(template, order, a, b, c, clean_text, cf_text, list(clean_ids),
                                     list(cf_ids), names[a], names[b], names[c]))
                break
        else:
            raise IOIPromptError(
                f"no clean/counterfactual pair of equal token length after {max_tries_per_pair} draws: "
                "the tokenizer merges names with their neighbours; use names, places and objects that tokenize cleanly"
            )
    return pairs
