"""Hook points read the same numbers as references computed another way."""

from __future__ import annotations

import pytest
import torch

from activations.hooks import HookError, list_hooks, run_with_cache, validate_hooks
from tests.support.hook_references import blocks_and_norm, mlp_reference
from tests.support.tiny_models import make_tiny_model, make_tokenizer


def _inputs(tokenizer):
    text = ["Paris is the capital of France.", "When Mary and John went to the store"]
    return tokenizer(text, return_tensors="pt", padding=True).input_ids


@torch.no_grad()
def test_every_hook_matches_reference(arch):
    tokenizer = make_tokenizer(add_bos=arch == "llama")
    model = make_tiny_model(arch, len(tokenizer))
    ids = _inputs(tokenizer)
    names = [name for name, _ in list_hooks(model)]
    acts = run_with_cache(model, ids, names, stop_early=False)
    hidden = model(ids, output_hidden_states=True).hidden_states
    blocks, final_norm = blocks_and_norm(arch, model)

    mlp_inputs = {}
    handles = [b.mlp.register_forward_pre_hook(lambda m, a, i=i: mlp_inputs.__setitem__(i, a[0]))
               for i, b in enumerate(blocks)]
    model(ids)
    for h in handles:
        h.remove()

    n = len(blocks)
    for layer in range(n):
        torch.testing.assert_close(acts[f"blocks.{layer}.hook_resid_pre"], hidden[layer], rtol=0, atol=0)
        if layer < n - 1:
            torch.testing.assert_close(acts[f"blocks.{layer}.hook_resid_post"], hidden[layer + 1], rtol=0, atol=0)
        else:  # HF applies the final norm to the last hidden state
            torch.testing.assert_close(final_norm(acts[f"blocks.{layer}.hook_resid_post"]), hidden[-1])
        post_ref, out_ref = mlp_reference(arch, blocks[layer], mlp_inputs[layer])
        torch.testing.assert_close(acts[f"blocks.{layer}.mlp.hook_post"], post_ref)
        torch.testing.assert_close(acts[f"blocks.{layer}.hook_mlp_out"], out_ref)
        assert acts[f"blocks.{layer}.mlp.hook_post"].shape[-1] == dict(list_hooks(model))[f"blocks.{layer}.mlp.hook_post"]


@torch.no_grad()
def test_list_hooks_is_in_the_order_the_hooks_fire(arch):
    """stop_after and validate_hooks' sorting rely on this order; record the real one."""
    from activations.hooks import hooks_installed

    tokenizer = make_tokenizer()
    model = make_tiny_model(arch, len(tokenizer))
    names = [name for name, _ in list_hooks(model)]
    fired: list[str] = []
    with hooks_installed(model, {n: (lambda x, n=n: fired.append(n)) for n in names}):
        model(_inputs(tokenizer))
    assert fired == names
    assert [h.name for h in validate_hooks(model, list(reversed(names)))] == names


@torch.no_grad()
def test_stop_early_after_mlp_out_and_mlp_post_of_one_layer(arch):
    """The MLP's output fires after its out-projection's input: stopping early must wait for it."""
    tokenizer = make_tokenizer()
    model = make_tiny_model(arch, len(tokenizer))
    ids = _inputs(tokenizer)
    names = ["blocks.1.hook_mlp_out", "blocks.1.mlp.hook_post"]
    early = run_with_cache(model, ids, names)
    full = run_with_cache(model, ids, names, stop_early=False)
    for name in names:
        torch.testing.assert_close(early[name], full[name], rtol=0, atol=0)


@torch.no_grad()
def test_stop_early_skips_later_layers_and_gives_same_values(arch):
    tokenizer = make_tokenizer()
    model = make_tiny_model(arch, len(tokenizer))
    ids = _inputs(tokenizer)
    blocks, _ = blocks_and_norm(arch, model)
    calls = []
    handle = blocks[2].register_forward_hook(lambda *a: calls.append(1))
    early = run_with_cache(model, ids, ["blocks.1.mlp.hook_post", "blocks.0.hook_resid_post"])
    assert calls == []  # block 2 never ran
    full = run_with_cache(model, ids, ["blocks.1.mlp.hook_post", "blocks.0.hook_resid_post"], stop_early=False)
    handle.remove()
    assert calls == [1]
    for name in full:
        torch.testing.assert_close(early[name], full[name], rtol=0, atol=0)


def test_bad_hook_names_have_clear_errors():
    tokenizer = make_tokenizer()
    model = make_tiny_model("gpt2", len(tokenizer))
    with pytest.raises(HookError, match="unknown hook name 'blocks.0.resid'.*cli.py hooks"):
        validate_hooks(model, ["blocks.0.resid"])
    with pytest.raises(HookError, match="layer 7 but the model has layers 0..2"):
        validate_hooks(model, ["blocks.7.hook_resid_post"])
    with pytest.raises(HookError, match="duplicate"):
        validate_hooks(model, ["blocks.0.hook_resid_post", "blocks.0.hook_resid_post"])


def test_edit_at_hook_changes_downstream_only():
    from activations.hooks import logits_with_edits

    tokenizer = make_tokenizer()
    model = make_tiny_model("gpt_neox", len(tokenizer))
    ids = _inputs(tokenizer)
    base = logits_with_edits(model, ids, {})
    same = logits_with_edits(model, ids, {"blocks.1.hook_resid_post": lambda x: x.clone()})
    zeroed = logits_with_edits(model, ids, {"blocks.1.hook_resid_post": lambda x: torch.zeros_like(x)})
    torch.testing.assert_close(base, same, rtol=0, atol=0)
    assert not torch.allclose(base, zeroed)
    # With the residual zeroed after block 1, the output cannot depend on the input tokens any more
    # except through later blocks' own computation on zeros: every position sees identical inputs.
    other = logits_with_edits(model, ids.flip(-1), {"blocks.1.hook_resid_post": lambda x: torch.zeros_like(x)})
    torch.testing.assert_close(zeroed[:, -1], other[:, -1], atol=1e-5, rtol=1e-5)
