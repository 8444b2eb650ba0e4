"""Loading a state dict that must fit a module exactly, checked before anything is copied:
`load_fitting(module, state, source=...)`. `nn.Module.load_state_dict` copies the tensors that fit
before it raises on the first mismatch (a half-loaded module) and its message is a multi-line
RuntimeError; here a file whose tensors do not fit is one UserError naming the file and the first
tensors that differ, and the module is left as it was.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import UserError

__all__ = ["load_fitting", "state_differences"]

_COUNTER = "num_batches_tracked"  # absent from FrozenBatchNorm2d and from some checkpoints


def state_differences(own: dict[str, Tensor], state: dict) -> list[str]:
    """What keeps `state` from loading into a module whose state dict is `own`: missing and
    unexpected keys (BatchNorm's batch counters aside), values that are not tensors, shape
    mismatches; [] when it fits."""
    missing = [k for k in own if k not in state and not k.endswith(_COUNTER)]
    unexpected = [k for k in state if k not in own and not str(k).endswith(_COUNTER)]
    not_tensors = [f"{k}: {type(v).__name__}" for k, v in state.items() if not isinstance(v, Tensor)]
    mismatched = [
        f"{k}: {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model"
        for k, v in state.items()
        if k in own and isinstance(v, Tensor) and v.shape != own[k].shape
    ]
    out = []
    for label, items in (
        ("shape mismatches", mismatched),
        ("not tensors", not_tensors),
        ("missing", missing),
        ("unexpected", unexpected),
    ):
        if items:
            more = f", and {len(items) - 3} more" if len(items) > 3 else ""
            out.append(f"{len(items)} {label}: {'; '.join(map(str, items[:3]))}{more}")
    return out


def load_fitting(module: nn.Module, state: dict, *, source: str, what: str = "the model") -> None:
    """`module.load_state_dict(state)` when every tensor fits (batch counters may be absent);
    otherwise a UserError naming `source` and the first differences, nothing loaded."""
    problems = state_differences(module.state_dict(), state)
    if problems:
        raise UserError(f"{source}: its weights do not fit {what} ({'; '.join(problems)})")
    module.load_state_dict(state, strict=False)
