"""Every hook kind of every supported family against a reference computed another way (tiny random models).

The references: `hook_resid_pre` / `hook_resid_post` are Hugging Face's own
hidden states; `hook_mlp_out` is what the block adds to the residual stream,
checked by the residual-stream identity resid_post = resid_pre + attn_out +
mlp_out (attn_out read at the attention's output, after Gemma's
post-attention norm); `mlp.hook_post` is the input of the MLP's output
projection, checked by rebuilding mlp_out from it. Gemma-2/3 normalise the
MLP's output again before adding it (`post_feedforward_layernorm`), which is
where the raw MLP output and TransformerLens's `hook_mlp_out` part.
"""

from __future__ import annotations

import functools

import pytest
import torch

from activations.hooks import blocks, list_hooks, run_with_cache

FAMILIES = ["gpt2", "gpt_neox", "llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text"]
VOCAB = 128


@functools.lru_cache(maxsize=None)
def tiny_model(family: str, n_layers: int = 3):
    """One tiny random model per family for the whole module (no test changes its weights)."""
    import transformers as tf

    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4,
                  max_position_embeddings=128)
    gated = dict(common, intermediate_size=48, num_key_value_heads=2)
    configs = {
        "gpt2": lambda: tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=n_layers, n_head=4, n_positions=128),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**common, intermediate_size=64),
        "llama": lambda: tf.LlamaConfig(**gated),
        "mistral": lambda: tf.MistralConfig(**gated, sliding_window=None),
        "qwen2": lambda: tf.Qwen2Config(**gated),
        "gemma": lambda: tf.GemmaConfig(**gated, head_dim=8),
        "gemma2": lambda: tf.Gemma2Config(**gated, head_dim=8),
        "gemma3_text": lambda: tf.Gemma3TextConfig(**gated, head_dim=8),
    }
    config = configs[family]()
    config._attn_implementation = "eager"
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    assert model.config.model_type == family
    with torch.no_grad():  # norms start at the identity; random weights make every norm matter in the test
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.5)
    return model


def _attention_output_module(family: str, block):
    """The module whose output is what attention adds to the residual stream."""
    if family == "gpt2":
        return block.attn
    if family == "gpt_neox":
        return block.attention
    if family in ("gemma2", "gemma3_text"):
        return block.post_attention_layernorm
    return block.self_attn


def _mlp_out_from_post(family: str, block, post: torch.Tensor) -> torch.Tensor:
    mlp = block.mlp
    if family == "gpt2":
        return mlp.dropout(mlp.c_proj(post))
    if family == "gpt_neox":
        return mlp.dense_4h_to_h(post)
    out = mlp.down_proj(post)
    if family in ("gemma2", "gemma3_text"):
        out = block.post_feedforward_layernorm(out)
    return out


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@torch.no_grad()
def test_every_hook_kind_matches_the_residual_stream_identity(family):
    model = tiny_model(family)
    ids = torch.randint(2, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    names = [name for name, _ in list_hooks(model)]
    acts = run_with_cache(model, ids, names, stop_early=False)
    hidden = model(input_ids=ids, output_hidden_states=True).hidden_states

    layers = blocks(model)
    attn: dict[int, torch.Tensor] = {}
    handles = [_attention_output_module(family, b).register_forward_hook(
        lambda m, a, out, i=i: attn.__setitem__(i, out[0] if isinstance(out, tuple) else out))
        for i, b in enumerate(layers)]
    try:
        model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()

    n = len(layers)
    for layer in range(n):
        pre, post = acts[f"blocks.{layer}.hook_resid_pre"], acts[f"blocks.{layer}.hook_resid_post"]
        mlp_out, mlp_post = acts[f"blocks.{layer}.hook_mlp_out"], acts[f"blocks.{layer}.mlp.hook_post"]
        torch.testing.assert_close(pre, hidden[layer], rtol=0, atol=0)
        if layer < n - 1:  # HF applies the final norm to the last hidden state
            torch.testing.assert_close(post, hidden[layer + 1], rtol=0, atol=0)
        scale = post.abs().max().item()
        torch.testing.assert_close(pre + attn[layer] + mlp_out, post, rtol=1e-5, atol=1e-5 * scale,
                                   msg=lambda m: f"{family} layer {layer}: resid_post != resid_pre + attn + mlp_out\n{m}")
        torch.testing.assert_close(_mlp_out_from_post(family, layers[layer], mlp_post), mlp_out,
                                   msg=lambda m: f"{family} layer {layer}: mlp_out is not built from mlp.hook_post\n{m}")
        widths = dict(list_hooks(model))
        assert mlp_post.shape[-1] == widths[f"blocks.{layer}.mlp.hook_post"]
        assert mlp_out.shape[-1] == pre.shape[-1] == widths[f"blocks.{layer}.hook_mlp_out"]


@torch.no_grad()
def test_hooks_fire_in_the_listed_order_and_stop_early_matches(family):
    """stop_after relies on list_hooks' order; the early-stopped values equal the full run's."""
    model = tiny_model(family)
    ids = torch.randint(2, VOCAB, (1, 8), generator=torch.Generator().manual_seed(2))
    names = [name for name, _ in list_hooks(model)]
    fired: list[str] = []
    from activations.hooks import hooks_installed

    with hooks_installed(model, {name: (lambda x, name=name: fired.append(name)) for name in names}):
        model(input_ids=ids)
    assert fired == names
    full = run_with_cache(model, ids, names, stop_early=False)
    for name in ("blocks.1.hook_mlp_out", "blocks.1.mlp.hook_post"):
        early = run_with_cache(model, ids, [name])
        torch.testing.assert_close(early[name], full[name], rtol=0, atol=0)
