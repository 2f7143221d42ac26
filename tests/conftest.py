"""Shared fixtures: tiny random models of each family (no download) and the real default model.

Tiny models use a small BPE tokenizer trained here on a few sentences, so no
test needs the network; `add_bos=True` mimics Llama-style tokenizers that
prepend a BOS token.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "Numbers like 1, 2, 3, 10 and 42 appear in text; so do <tags> & symbols!",
    "def main():\n    return 0\n",
    "Sparse autoencoders find interpretable features in language models.",
]


def make_tokenizer(add_bos: bool = False, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TRAIN_TEXT * 5, trainer=trainer)
    if add_bos:
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>" if add_bos else "<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def make_tiny_model(arch: str, vocab_size: int, n_layers: int = 3, seed: int = 0):
    from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig

    torch.manual_seed(seed)
    if arch == "gpt_neox":
        config = GPTNeoXConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=n_layers,
                               num_attention_heads=4, intermediate_size=64, max_position_embeddings=256)
    elif arch == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=n_layers, n_head=4, n_positions=256)
    elif arch == "llama":
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=n_layers,
                             num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                             max_position_embeddings=256)
    else:
        raise ValueError(arch)
    model = AutoModelForCausalLM.from_config(config)
    return model.eval()


ARCHS = ["gpt_neox", "gpt2", "llama"]


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """Saved tiny models (model + tokenizer folders) usable as `--model <dir>`; llama's tokenizer adds BOS."""
    root = tmp_path_factory.mktemp("tiny_models")
    dirs = {}
    for arch_name in ARCHS:
        tokenizer = make_tokenizer(add_bos=(arch_name == "llama"))
        model = make_tiny_model(arch_name, vocab_size=len(tokenizer))
        path = root / arch_name
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[arch_name] = path
    return dirs


@pytest.fixture(scope="session")
def default_model():
    """The real offline default model (SmolLM2-135M-Instruct), loaded once per test session."""
    from activations.models import load_model

    return load_model("default")


@pytest.fixture
def text_corpus(tmp_path) -> Path:
    """A small .jsonl corpus of real-looking documents, including HTML that must be escaped downstream."""
    import json

    docs = [
        "The history of Paris begins with a small settlement on the Seine. " * 6,
        "Berlin is the capital and largest city of Germany by both area and population. " * 6,
        "A <script>alert('x')</script> tag & an ampersand should never run in a report. " * 6,
        "Mathematics studies numbers such as 1, 2, 3 and 42, shapes, and patterns. " * 6,
        "The quick brown fox jumps over the lazy dog again and again. " * 6,
        "Sparse autoencoders learn features from the residual stream of transformers. " * 6,
    ]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n", encoding="utf-8")
    return path
