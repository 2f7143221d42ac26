"""TransformerLens hook-point names mapped onto Hugging Face modules.

Reading and editing activations both go through PyTorch forward hooks on the
unmodified HF model, so any checkpoint of a supported family works without a
converted copy. `mlp.hook_post` is defined for every family as the input of
the MLP's output projection: the activation-function output for GPT-2 and
GPT-NeoX, and act(gate) * up for gated Llama MLPs (TransformerLens's choice).
`hook_mlp_out` is what the block adds to the residual stream: for Gemma-2/3
that is the MLP's output after `post_feedforward_layernorm`, not the raw
down projection (they differ by orders of magnitude on real checkpoints).
Names are parsed and built in `activations.hooknames` (no torch), re-exported here.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from activations.hooknames import HOOK_KINDS, HookError, HookPoint, hook_name, parse_hook

__all__ = ["HOOK_KINDS", "HookError", "HookPoint", "parse_hook", "hook_name", "blocks", "n_layers", "d_mlp",
           "hook_width", "list_hooks", "validate_hooks", "hooks_installed", "run_with_cache", "logits_with_edits",
           "StopForward", "is_encoder", "ENCODER_MODEL_TYPES"]


@dataclass(frozen=True)
class _Family:
    layers: str  # dotted path from the CausalLM to the ModuleList of blocks
    mlp: str  # attribute of a block
    mlp_out_proj: str  # attribute of the mlp whose *input* is mlp.hook_post
    # attribute of a block whose *output* is hook_mlp_out, when the MLP's own output is not what the block
    # adds to the residual stream (Gemma-2/3 normalise it again: post_feedforward_layernorm); None: the mlp
    mlp_out: str | None = None
    # True for encoders: `layers` is relative to `model.base_model`, so BertModel and BertForMaskedLM (whose
    # encoder sits under `.bert`) share one entry
    from_base: bool = False


# BERT-family encoders (post-LayerNorm blocks): hook_resid_post is the block's output (after its final
# LayerNorm), mlp.hook_post the intermediate activation (the input of `output.dense`), hook_mlp_out the
# MLP's output projection before the add-and-normalise (as TransformerLens's HookedEncoder names it).
_ENCODER = dict(layers="encoder.layer", mlp="output", mlp_out_proj="dense", mlp_out="output.dense", from_base=True)
ENCODER_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "camembert")


_GEMMA_POST_NORM = "post_feedforward_layernorm"


_FAMILIES = {
    "gpt_neox": _Family("gpt_neox.layers", "mlp", "dense_4h_to_h"),
    "gpt2": _Family("transformer.h", "mlp", "c_proj"),
    "llama": _Family("model.layers", "mlp", "down_proj"),
    "mistral": _Family("model.layers", "mlp", "down_proj"),
    "qwen2": _Family("model.layers", "mlp", "down_proj"),
    "gemma": _Family("model.layers", "mlp", "down_proj"),
    "gemma2": _Family("model.layers", "mlp", "down_proj", _GEMMA_POST_NORM),
    "gemma3_text": _Family("model.layers", "mlp", "down_proj", _GEMMA_POST_NORM),
    **{model_type: _Family(**_ENCODER) for model_type in ENCODER_MODEL_TYPES},
}


def is_encoder(model: nn.Module) -> bool:
    """True for a BERT-family encoder: no next-token logits, and documents carry [CLS] ... [SEP]."""
    return getattr(model.config, "model_type", None) in ENCODER_MODEL_TYPES


def _family(model: nn.Module) -> _Family:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in _FAMILIES:
        raise HookError(
            f"model type {model_type!r} is not supported: supported families are {', '.join(sorted(_FAMILIES))}"
        )
    return _FAMILIES[model_type]


def _get(root: nn.Module, dotted: str) -> nn.Module:
    module = root
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def blocks(model: nn.Module) -> nn.ModuleList:
    family = _family(model)
    return _get(getattr(model, "base_model", model) if family.from_base else model, family.layers)


def n_layers(model: nn.Module) -> int:
    return len(blocks(model))


def d_mlp(model: nn.Module) -> int:
    config = model.config
    for attr in ("intermediate_size", "n_inner"):
        value = getattr(config, attr, None)
        if value:
            return int(value)
    return 4 * int(config.hidden_size)  # GPT-2 with n_inner=None


def hook_width(model: nn.Module, hook: HookPoint) -> int:
    return d_mlp(model) if hook.kind == "mlp.hook_post" else int(model.config.hidden_size)


def list_hooks(model: nn.Module) -> list[tuple[str, int]]:
    """Every hook point of the model with its width, in firing order."""
    out = []
    for layer in range(n_layers(model)):
        for kind in HOOK_KINDS:
            hook = HookPoint(hook_name(layer, kind), layer, kind)
            out.append((hook.name, hook_width(model, hook)))
    return out


def validate_hooks(model: nn.Module, names: Sequence[str]) -> list[HookPoint]:
    hooks = [parse_hook(n) for n in names]
    if not hooks:
        raise HookError("no hooks given: pass at least one, e.g. --hooks blocks.1.hook_resid_post")
    count = n_layers(model)
    for hook in hooks:
        if hook.layer >= count:
            raise HookError(f"hook {hook.name!r} asks for layer {hook.layer} but the model has layers 0..{count - 1}")
    if len({h.name for h in hooks}) != len(hooks):
        raise HookError(f"duplicate hook names in {list(names)}: list each hook once")
    return sorted(hooks, key=lambda h: h.order)


def _module_and_side(model: nn.Module, hook: HookPoint) -> tuple[nn.Module, str]:
    """The module whose input ('pre') or output ('post') is the hook's value."""
    family = _family(model)
    block = blocks(model)[hook.layer]
    mlp = getattr(block, family.mlp)
    if hook.kind == "hook_resid_pre":
        return block, "pre"
    if hook.kind == "hook_resid_post":
        return block, "post"
    if hook.kind == "hook_mlp_out":
        return (_get(block, family.mlp_out) if family.mlp_out else mlp), "post"
    return getattr(mlp, family.mlp_out_proj), "pre"


class StopForward(Exception):
    """Raised inside a hook to end the forward pass after the deepest hook needed."""


def _first(value):
    return value[0] if isinstance(value, tuple) else value


@contextmanager
def hooks_installed(
    model: nn.Module,
    edits: dict[str, Callable[[torch.Tensor], torch.Tensor | None]],
    stop_after: str | None = None,
) -> Iterator[None]:
    """Install one callback per hook name for the duration of the block.

    A callback receives the activation tensor [batch, pos, d]; returning a
    tensor replaces the activation, returning None leaves it. If `stop_after`
    names a hook, the forward pass raises StopForward right after that hook's
    callback, so later layers are never computed.
    """
    handles = []
    try:
        for name, fn in edits.items():
            hook = parse_hook(name)
            module, side = _module_and_side(model, hook)
            stop = name == stop_after
            if side == "pre":

                def pre_hook(mod, args, kwargs, fn=fn, stop=stop):
                    x = args[0] if args else kwargs["hidden_states"]
                    new = fn(x)
                    if stop:
                        raise StopForward
                    if new is None:
                        return None
                    if args:
                        return (new, *args[1:]), kwargs
                    return args, {**kwargs, "hidden_states": new}

                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:

                def post_hook(mod, args, output, fn=fn, stop=stop):
                    new = fn(_first(output))
                    if stop:
                        raise StopForward
                    if new is None:
                        return None
                    if isinstance(output, tuple):
                        return (new, *output[1:])
                    return new

                handles.append(module.register_forward_hook(post_hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def run_with_cache(
    model: nn.Module,
    input_ids: torch.Tensor,
    hook_names: Sequence[str],
    attention_mask: torch.Tensor | None = None,
    stop_early: bool = True,
) -> dict[str, torch.Tensor]:
    """Run the model and return the activations at the named hooks.

    With stop_early, nothing after the last-firing requested hook is computed.
    """
    hooks = validate_hooks(model, hook_names)
    captured: dict[str, torch.Tensor] = {}

    def capture(name: str) -> Callable[[torch.Tensor], None]:
        def fn(x: torch.Tensor) -> None:
            captured[name] = x.detach()

        return fn

    last = hooks[-1].name if stop_early else None
    with hooks_installed(model, {h.name: capture(h.name) for h in hooks}, stop_after=last):
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except StopForward:
            pass
    return {h.name: captured[h.name] for h in hooks}


@torch.no_grad()
def logits_with_edits(
    model: nn.Module,
    input_ids: torch.Tensor,
    edits: dict[str, Callable[[torch.Tensor], torch.Tensor | None]],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Full forward pass with activations replaced at hooks; returns logits."""
    with hooks_installed(model, edits):
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
