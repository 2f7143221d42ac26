"""`cli.py ioi-layers`: where along the depth the indirect object's identity travels.

Before training dictionaries for IOI patching one has to choose a layer.
This scan answers it with two whole-vector patches per layer, no
dictionary involved: at the residual stream after layer L, copy the
counterfactual run's vector into the clean run at one position only, either
the position where the two prompts first differ (the IO name) or the last
position (where the answer is read out), and measure KL(patched ‖
counterfactual) at the last position. The fraction of the clean-vs-
counterfactual KL that one patch removes is the share of the IO information
that this position carries at that layer:

    carried = 1 − KL(patched ‖ cf) / KL(clean ‖ cf)

At the embeddings the name position carries everything (patching it turns
the clean run into the counterfactual run exactly); after the last layer
only the final position matters. The suggested layer is the first one at
which the final position carries at least as much as the name position:
the information is being moved there, so it lives at both positions, and
a dictionary patched at every position must represent it to move it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from common.errors import UserError
from activations.hooks import hook_name, n_layers, run_with_cache
from common.runstate import check_output_file, write_json_atomic
from causal.patching import PairBatch, kl_rows, last_logits, pad_token_id, pair_batch, task_check
from causal.prompts import IOIConfig, make_ioi_pairs
from causal.settings import IOILayersSettings


@dataclass
class LayerRow:
    hook: str
    kl_name_patch: float  # KL(patched ‖ cf) with the IO-name position copied from the counterfactual
    kl_end_patch: float  # ... with the final position copied
    carried_at_name: float
    carried_at_end: float


def _copy_at(positions: torch.Tensor, source: torch.Tensor):
    rows = torch.arange(positions.shape[0], device=positions.device)

    def replace(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[rows, positions] = source[rows, positions].to(x.dtype)
        return x

    return replace


@torch.no_grad()
def scan_layers(model, batch: PairBatch, hooks: list[str], clean_logits: torch.Tensor,
                cf_logits: torch.Tensor) -> tuple[float, list[LayerRow]]:
    """KL(clean ‖ cf) and one row per hook; every hook must be a residual-stream point."""
    base = float(kl_rows(clean_logits, cf_logits).mean())
    if base <= 0:
        raise UserError("the clean and counterfactual prompts give the same next-token distribution: "
                        "nothing to localise (check the model and the names)")
    cf_acts = run_with_cache(model, batch.cf_ids, hooks, stop_early=True)
    name_pos = batch.differs.float().argmax(dim=1)  # first position where clean and counterfactual differ
    end_pos = batch.last
    rows = []
    for hook in hooks:
        kls = []
        for positions in (name_pos, end_pos):
            logits = last_logits(model, batch.clean_ids, batch.lengths, {hook: _copy_at(positions, cf_acts[hook])})
            kls.append(float(kl_rows(logits, cf_logits).mean()))
        rows.append(LayerRow(hook, kls[0], kls[1], 1 - kls[0] / base, 1 - kls[1] / base))
    return base, rows


def suggest_layer(rows: list[LayerRow]) -> LayerRow:
    """The first row where the final position carries at least as much as the name position."""
    for row in rows:
        if row.carried_at_end >= row.carried_at_name:
            return row
    return rows[-1]


def residual_hooks(model) -> list[str]:
    """The embeddings (resid_pre of block 0) and the residual stream after every block."""
    return [hook_name(0, "hook_resid_pre")] + [hook_name(i, "hook_resid_post") for i in range(n_layers(model))]


def _validate(settings: IOILayersSettings) -> None:
    from activations.devices import check_device

    settings.validate()
    check_device(settings.device)
    if settings.json_path is not None:
        check_output_file(settings.json_path, "--json")
        if not Path(settings.json_path).resolve().parent.is_dir():
            raise UserError(f"the folder of --json {settings.json_path!r} does not exist: create it or pass another path")


def ioi_layers_command(settings: IOILayersSettings) -> dict:
    from activations.models import load_model

    s = settings
    _validate(s)
    loaded = load_model(s.model, device=s.device)
    pairs = make_ioi_pairs(loaded.tokenizer, IOIConfig(n_prompts=s.n_prompts, seed=s.seed, names=s.names or None))
    batch = pair_batch(pairs, pad_token_id(loaded.tokenizer), device=s.device)
    clean_logits = last_logits(loaded.model, batch.clean_ids, batch.lengths)
    cf_logits = last_logits(loaded.model, batch.cf_ids, batch.lengths)
    check = task_check(batch, clean_logits, cf_logits)
    base, rows = scan_layers(loaded.model, batch, residual_hooks(loaded.model), clean_logits, cf_logits)
    pick = suggest_layer(rows)
    print(f"IOI on {batch.n} prompts: logit diff IO-S {check.logit_diff:.3f}, accuracy {check.accuracy:.0%}; "
          f"KL(clean || counterfactual) = {base:.4f}")
    print(f"{'hook':<28} {'carried at name':>16} {'carried at end':>15}")
    for row in rows:
        mark = "  <- suggested" if row is pick else ""
        print(f"{row.hook:<28} {row.carried_at_name:>16.3f} {row.carried_at_end:>15.3f}{mark}")
    result = {"model": s.model, "n_prompts": batch.n, "seed": s.seed, "clean_logit_diff": check.logit_diff,
              "clean_accuracy": check.accuracy, "kl_clean_vs_counterfactual": base,
              "rows": [asdict(r) for r in rows], "suggested_hook": pick.hook,
              "rule": "first layer where the final position carries at least as much IO information as the name position"}
    if s.json_path:
        write_json_atomic(s.json_path, result)
    return result
