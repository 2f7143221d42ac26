"""`--device`: refuse a device this machine does not have in one line, before any model or data is loaded.

Every command with a `--device` option calls `check_device` first, so
`--device cuda` on a machine without CUDA is an error naming the fix, not a
traceback from deep inside torch after the model has loaded.
"""

from __future__ import annotations

from common.errors import UserError


def check_device(device: str) -> None:
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError) as err:
        raise UserError(f"--device {device!r} is not a device torch knows: use cpu or cuda (cuda:N)") from err
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for but CUDA is not available here: use --device cpu")
    if kind == "cuda" and torch.device(device).index is not None and torch.device(device).index >= torch.cuda.device_count():
        raise UserError(f"--device {device} asked for but this machine has {torch.cuda.device_count()} CUDA "
                        "device(s): pass one of them, or --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device} asked for but MPS is not available here: use --device cpu")
