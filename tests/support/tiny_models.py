"""Tiny random models of each family and a small BPE tokenizer trained on a few sentences (no download).

`add_bos=True` mimics Llama-style tokenizers that prepend a BOS token.
"""

from __future__ import annotations

import torch

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
