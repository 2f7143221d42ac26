"""Hook-point names: the one parser and the one builder of `blocks.L.<kind>` strings.

Kept apart from `activations.hooks` (which needs torch) so that settings
modules and `cli.py --help` can check and build hook names without loading
torch. Every other module parses a hook name with `parse_hook` and writes one
with `hook_name`, never with its own regex or string splitting, so a new hook
kind is added here once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.errors import UserError

# Order in which the hooks of one block fire during a forward pass: mlp.hook_post
# is the *input* of the MLP's out-projection, so it fires inside the MLP, before
# the MLP's output (hook_mlp_out). stop_after relies on this order being right.
HOOK_KINDS = ("hook_resid_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")
_FIRING_ORDER = {kind: i for i, kind in enumerate(HOOK_KINDS)}
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(" + "|".join(re.escape(k) for k in HOOK_KINDS) + r")$")


class HookError(UserError):
    """A hook name that does not exist (on this model)."""


@dataclass(frozen=True)
class HookPoint:
    name: str
    layer: int
    kind: str

    @property
    def order(self) -> tuple[int, int]:
        return (self.layer, _FIRING_ORDER[self.kind])


def parse_hook(name: str) -> HookPoint:
    match = _HOOK_RE.match(name.strip())
    if not match:
        raise HookError(
            f"unknown hook name {name!r}: use blocks.L.hook_resid_pre, blocks.L.hook_resid_post, "
            "blocks.L.hook_mlp_out or blocks.L.mlp.hook_post (list them with `python cli.py hooks --model M`)"
        )
    return HookPoint(name=name.strip(), layer=int(match.group(1)), kind=match.group(2))


def hook_name(layer: int, kind: str) -> str:
    """`blocks.{layer}.{kind}`, checked by `parse_hook` so a bad kind fails here and not at run time."""
    return parse_hook(f"blocks.{int(layer)}.{kind}").name


def check_hook_names(hooks: list[str] | tuple[str, ...]) -> None:
    """Syntax, emptiness and duplicates of a hook list: a typo fails at once, not after loading the model.

    Whether the layer exists needs the model; `activations.hooks.validate_hooks` checks that after loading.
    """
    if not hooks:
        raise UserError("no hooks given: pass at least one, e.g. --hooks blocks.1.hook_resid_post")
    names = [parse_hook(h).name for h in hooks]
    if len(set(names)) != len(names):
        raise UserError(f"duplicate hook names in {list(hooks)}: list each hook once")


def layer_and_site(hook: str) -> tuple[int | None, str]:
    """(layer, site) of a hook name, by the toolkit's one parser; (None, hook) for a name it does not know.

    Tolerant because records may come from elsewhere (another tool, a hook
    kind added later): such a record is still compared, on a row of its own
    without a layer, instead of failing the whole comparison.
    """
    try:
        point = parse_hook(hook or "")
    except HookError:
        return None, hook or "?"
    return point.layer, point.kind
