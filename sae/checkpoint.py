"""Training checkpoints that survive kill -9 at any instant.

A checkpoint is a tensor file `step-N.safetensors` (weights and Adam state)
plus `state.json` naming it. The tensor file is written under a temporary
name and renamed; only then is `state.json` replaced (also by rename), and
only then is the previous tensor file deleted. So `state.json` always names
a complete tensor file, and a crash leaves either the old or the new
checkpoint, never a mixture.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from common.runstate import replace_atomically, staging_file, write_json_atomic

STATE_FILE = "state.json"


def save_checkpoint(folder: Path, step: int, modules: list[torch.nn.Module], optimizer: torch.optim.Optimizer,
                    meta: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for gi, module in enumerate(modules):
        for name, p in module.named_parameters():
            tensors[f"param.{gi}.{name}"] = p.detach().cpu().contiguous()
        for name, b in module.named_buffers():  # a kind's extra state, e.g. dead-latent counters
            tensors[f"buffer.{gi}.{name}"] = b.detach().cpu().contiguous()
    for idx, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"adam.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    name = f"step-{step}.safetensors"
    with staging_file(folder / name) as tmp:
        save_file(tensors, str(tmp))
        replace_atomically(tmp, folder / name)
    previous = read_state(folder)
    write_json_atomic(folder / STATE_FILE, {**meta, "step": step, "tensors": name})
    if previous and previous.get("tensors") != name:
        old = folder / previous["tensors"]
        if old.exists():
            old.unlink()
    return folder / name


def read_state(folder: Path) -> dict | None:
    path = folder / STATE_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def load_checkpoint(folder: Path, modules: list[torch.nn.Module], optimizer: torch.optim.Optimizer) -> int:
    """Restore weights and Adam state in place; returns the step to resume from."""
    state = read_state(folder)
    assert state is not None
    tensors = load_file(str(folder / state["tensors"]), device="cpu")
    with torch.no_grad():
        for gi, module in enumerate(modules):
            for name, p in module.named_parameters():
                p.copy_(tensors[f"param.{gi}.{name}"])
            for name, b in module.named_buffers():
                key = f"buffer.{gi}.{name}"
                if key in tensors:
                    b.copy_(tensors[key])
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("adam."):
            _, idx, field = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[field] = value
    sd = optimizer.state_dict()
    sd["state"] = opt_state
    optimizer.load_state_dict(sd)
    return int(state["step"])


def remove_stale(folder: Path) -> None:
    """Delete temporaries and tensor files that a killed save left but state.json does not name."""
    state = read_state(folder)
    keep = state.get("tensors") if state else None
    for path in folder.iterdir():
        stale_tmp = path.name.startswith(".step-") or path.name.startswith(f".{STATE_FILE}.")
        stale_step = path.name.startswith("step-") and path.name != keep
        if stale_tmp or stale_step:
            path.unlink()
