"""References for hook values computed another way: explicit MLP submodule calls, each family's blocks and
final norm."""

from __future__ import annotations

import torch


def mlp_reference(arch: str, block, mlp_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mlp.hook_post, hook_mlp_out) by explicit submodule calls on the MLP's input."""
    mlp = block.mlp
    if arch == "gpt_neox":
        post = mlp.act(mlp.dense_h_to_4h(mlp_in))
        return post, mlp.dense_4h_to_h(post)
    if arch == "gpt2":
        post = mlp.act(mlp.c_fc(mlp_in))
        return post, mlp.c_proj(post)
    post = mlp.act_fn(mlp.gate_proj(mlp_in)) * mlp.up_proj(mlp_in)
    return post, mlp.down_proj(post)


def blocks_and_norm(arch: str, model):
    if arch == "gpt_neox":
        return model.gpt_neox.layers, model.gpt_neox.final_layer_norm
    if arch == "gpt2":
        return model.transformer.h, model.transformer.ln_f
    return model.model.layers, model.model.norm
