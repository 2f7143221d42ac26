"""Run only the part of the model after a hook, many edited copies at once.

Feature selection evaluates thousands of edits at the same hook; the layers
before the hook compute the same thing every time. `SuffixRunner` caches
the residual stream entering the first block it needs and, for each call,
temporarily swaps the model's block list for the blocks from that one on,
so the model's own forward (embeddings are recomputed and discarded,
position embeddings, masks, final norm, lm_head) runs only the suffix.
The cached input replaces the first remaining block's input through the
ordinary `blocks.0.hook_resid_pre` callback.

This relies on the model's forward looping over its block list, which is
true of every supported family but not promised by transformers; so the
runner checks itself against a full forward when built and falls back to
full forwards (reported in `suffix_only`) if they disagree.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

from activations.hooks import blocks, hooks_installed, n_layers, parse_hook, run_with_cache
from activations.hooks import hook_name as hook_at  # this module calls its hook-name arguments `hook_name`
from causal.patching import PairBatch


def _parent_and_attr(model: nn.Module, target: nn.Module) -> tuple[nn.Module, str]:
    for name, module in model.named_modules():
        if module is target:
            parent_name, _, attr = name.rpartition(".")
            return (model.get_submodule(parent_name) if parent_name else model), attr
    raise RuntimeError("block list not found among the model's modules")


@contextmanager
def blocks_from(model: nn.Module, start: int) -> Iterator[None]:
    """Within the block, the model's block list holds only blocks start..end (same module objects)."""
    layers = blocks(model)
    parent, attr = _parent_and_attr(model, layers)
    setattr(parent, attr, nn.ModuleList(list(layers)[start:]))
    try:
        yield
    finally:
        setattr(parent, attr, layers)


class SuffixRunner:
    """Last-position logits of the clean prompts with an additive edit at one hook.

    `logits(edits)` takes edits [R, N, T, d] (R edited copies of the N
    prompts) and returns logits [R, N, V]; the R·N sequences go through the
    model as one batch. `logits_for` runs any list of (prompt, edit) pairs.
    """

    def __init__(self, model: nn.Module, hook_name: str, batch: PairBatch, suffix_only: bool = True,
                 check_tolerance: float = 1e-3):
        self.model, self.hook_name, self.batch = model, hook_name, batch
        hook = parse_hook(hook_name)
        last_layer = n_layers(model) - 1
        # Resid_post of layer L is the input of layer L+1: start there and add the edit to the input.
        if hook.kind == "hook_resid_post" and hook.layer < last_layer:
            self.start, self.edit_at_input = hook.layer + 1, True
        else:
            self.start, self.edit_at_input = hook.layer, hook.kind == "hook_resid_pre"
        names = [hook_name]
        start_name = hook_at(self.start, "hook_resid_pre")
        if not self.edit_at_input:
            names.append(start_name)
        cache = run_with_cache(model, batch.clean_ids, names)
        self.x_clean = cache[hook_name]  # [N, T, d] the clean activation at the hook
        self.start_input = self.x_clean if self.edit_at_input else cache[start_name]
        # Inside the cut model the blocks are renumbered from self.start.
        self.entry_hook = hook_at(0, "hook_resid_pre")
        self.inner_hook = None if self.edit_at_input else hook_at(hook.layer - self.start, hook.kind)
        self.suffix_only = suffix_only
        if suffix_only:
            self._check(check_tolerance)

    @torch.no_grad()
    def _check(self, check_tolerance: float) -> None:
        """Suffix-only logits must match a full forward pass, else use full passes from now on."""
        zero = torch.zeros((1, *self.x_clean.shape), dtype=self.x_clean.dtype, device=self.x_clean.device)
        suffix = self.logits(zero)[0]
        self.suffix_only = False
        full = self.logits(zero)[0]
        scale = 1.0 + float(full.abs().max())
        self.suffix_only = bool((suffix - full).abs().max() <= check_tolerance * scale)

    def logits(self, edits: Tensor) -> Tensor:
        """[R, N, T, d] edits of all N prompts -> [R, N, V]; differentiable unless under torch.no_grad()."""
        r, n = edits.shape[:2]
        prompts = torch.arange(n, device=edits.device).repeat(r)
        return self.logits_for(prompts, edits.reshape(r * n, *edits.shape[2:])).reshape(r, n, -1)

    def logits_for(self, prompts: Tensor, edits: Tensor) -> Tensor:
        """Logits [M, V] of prompts[i] with edits[i] ([M, T, d]) added at the hook.

        Any subset and repetition of the prompts can share one forward pass;
        the batch is cut to the longest selected prompt.
        """
        prompts = prompts.to(self.batch.clean_ids.device)
        lengths = self.batch.lengths[prompts]
        t = int(lengths.max())
        ids = self.batch.clean_ids[prompts, :t]
        flat = edits[:, :t].to(self.x_clean.dtype)
        keep = (lengths - 1)[:, None]
        if not self.suffix_only:
            callbacks = {self.hook_name: lambda x: x + flat}
            with hooks_installed(self.model, callbacks):
                out = self.model(input_ids=ids, use_cache=False, logits_to_keep=keep)
            return out.logits[:, 0].float()
        base = self.start_input[prompts, :t]
        if self.edit_at_input:
            callbacks = {self.entry_hook: lambda x: base + flat}
        else:
            callbacks = {self.entry_hook: lambda x: base, self.inner_hook: lambda x: x + flat}
        with blocks_from(self.model, self.start), hooks_installed(self.model, callbacks):
            out = self.model(input_ids=ids, use_cache=False, logits_to_keep=keep)
        return out.logits[:, 0].float()
