"""IOI prompt pairs: one-token names, equal lengths, reproducible, ending right before the answer."""

from __future__ import annotations

import pytest

from common.errors import UserError
from causal.prompts import (ABBA_TEMPLATES, BABA_TEMPLATES, IOIConfig, make_ioi_pairs, single_token_names)
from tests.support.tiny_models import make_tokenizer

TINY_NAMES = ["John", "Mary", "Mar", "Jo", "Ber", "Fr", "Ger"]


@pytest.fixture(scope="module")
def real_tokenizer():
    """The default model's tokenizer alone (no weights): cheap, and has real whole-word names."""
    from transformers import AutoTokenizer

    from activations.models import default_model_dir

    return AutoTokenizer.from_pretrained(default_model_dir())


def test_at_least_15_templates_of_each_order_with_answer_A():
    assert len(ABBA_TEMPLATES) >= 15 and len(BABA_TEMPLATES) >= 15
    for abba, baba in zip(ABBA_TEMPLATES, BABA_TEMPLATES):
        filled_abba = abba.format(A="Ann", B="Bo", PLACE="p", OBJECT="o")
        filled_baba = baba.format(A="Ann", B="Bo", PLACE="p", OBJECT="o")
        # ABBA: A first, B twice; BABA: B first; both mention A once (the answer, not yet written).
        assert filled_abba.index("Ann") < filled_abba.index("Bo")
        assert filled_baba.index("Bo") < filled_baba.index("Ann")
        for text in (filled_abba, filled_baba):
            assert text.count("Ann") == 1 and text.count("Bo") == 2
            assert not text.rstrip().endswith(("Ann", "Bo"))


def test_real_tokenizer_pairs_have_equal_lengths_and_single_token_names(real_tokenizer):
    pairs = make_ioi_pairs(real_tokenizer, IOIConfig(n_prompts=50, seed=0))
    assert len(pairs) == 50
    assert {p.order for p in pairs} == {"ABBA", "BABA"}
    for p in pairs:
        assert len(p.clean_ids) == len(p.cf_ids)
        for name, token in ((p.io, p.io_id), (p.s, p.s_id), (p.cf_io, p.cf_io_id)):
            assert real_tokenizer(" " + name, add_special_tokens=False)["input_ids"] == [token]
        assert len({p.io, p.s, p.cf_io}) == 3
        # The counterfactual is the clean prompt with the indirect object replaced, nothing else.
        assert p.cf_text == p.clean_text.replace(p.io, p.cf_io)
        assert p.clean_text.count(p.io) == 1 and p.clean_text.count(p.s) == 2
        # The prompt ends right before the answer: clean prompt + " IO" tokenizes as prompt tokens + IO token.
        assert real_tokenizer(p.clean_text + " " + p.io)["input_ids"] == p.clean_ids + [p.io_id]
        # Only the IO position differs between the two prompts.
        diffs = [i for i, (a, b) in enumerate(zip(p.clean_ids, p.cf_ids)) if a != b]
        assert len(diffs) == 1 and p.clean_ids[diffs[0]] == p.io_id and p.cf_ids[diffs[0]] == p.cf_io_id


def test_seeded_and_reproducible(real_tokenizer):
    a = make_ioi_pairs(real_tokenizer, IOIConfig(n_prompts=20, seed=3))
    b = make_ioi_pairs(real_tokenizer, IOIConfig(n_prompts=20, seed=3))
    c = make_ioi_pairs(real_tokenizer, IOIConfig(n_prompts=20, seed=4))
    assert [p.clean_text for p in a] == [p.clean_text for p in b]
    assert [p.clean_text for p in a] != [p.clean_text for p in c]


def test_name_filter_keeps_only_single_token_names(real_tokenizer):
    names = single_token_names(real_tokenizer, ["Mary", "John", "Xzyqwvbtrk", "Alice"])
    assert "Xzyqwvbtrk" not in names
    assert set(names) == {"Mary", "John", "Alice"}


def test_tiny_tokenizer_without_names_is_a_clear_user_error():
    tok = make_tokenizer()
    with pytest.raises(UserError, match=r"only \d+ of \d+ names are a single token.*at least 3"):
        make_ioi_pairs(tok, IOIConfig(n_prompts=4))


def test_tiny_tokenizer_with_custom_names():
    tok = make_tokenizer(add_bos=True)
    pairs = make_ioi_pairs(tok, IOIConfig(n_prompts=8, seed=1, names=TINY_NAMES))
    for p in pairs:
        assert len(p.clean_ids) == len(p.cf_ids)
        assert p.clean_ids[0] == tok.bos_token_id  # the tokenizer's own special tokens are kept
        assert tok(" " + p.io, add_special_tokens=False)["input_ids"] == [p.io_id]
