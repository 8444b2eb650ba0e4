"""Config schema versions: a checkpoint records the version of the config layout it was written
with (`schema`), and `upgrade_config` brings an older config dict to the current layout before it is
read, so that renaming or moving a key later breaks no checkpoint written before.

To rename a key: raise `SCHEMA_VERSION` by one and add the step from the previous version to
`UPGRADES`, e.g. `(1, lambda d: rename_key(d, "solver.lr", "solver.base_lr"))`.

Version history:
    1: the first recorded version. Checkpoints without `schema` were written before versions were
       recorded, with the keys of version 1.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from ..errors import UserError

SCHEMA_VERSION = 1

# (version, step): `step` turns a config dict of schema `version` into one of `version + 1`
UPGRADES: tuple[tuple[int, Callable[[dict], dict]], ...] = ()

FIRST_SCHEMA = 1  # what a checkpoint without `schema` holds


def rename_key(data: dict, old: str, new: str) -> dict:
    """`data` with the dotted key `old` (e.g. "solver.lr") moved to `new`, if present."""
    *old_parents, old_name = old.split(".")
    node = data
    for part in old_parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or old_name not in node:
        return data
    value = node.pop(old_name)
    *new_parents, new_name = new.split(".")
    target = data
    for part in new_parents:
        target = target.setdefault(part, {})
    target[new_name] = value
    return data


def upgrade_config(
    data: dict,
    *,
    schema: int | None,
    source: str = "config",
    upgrades: tuple[tuple[int, Callable[[dict], dict]], ...] | None = None,
    current: int | None = None,
) -> dict:
    """A config dict of schema version `schema` (None: written before versions were recorded) in
    the layout of `current` (default SCHEMA_VERSION), through the `upgrades` steps (default
    UPGRADES); a copy, `data` is left as it is. A version newer than this package's -> UserError."""
    upgrades = UPGRADES if upgrades is None else upgrades
    current = SCHEMA_VERSION if current is None else current
    version = FIRST_SCHEMA if schema is None else schema
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise UserError(f"{source}: config schema version must be a non-negative integer, got {schema!r}")
    if version > current:
        raise UserError(
            f"{source}: its config has schema version {version}, newer than this package's ({current}): "
            "upgrade maskrcnn to read it"
        )
    steps = dict(upgrades)
    data = copy.deepcopy(data)
    for step_from in range(version, current):
        if step_from in steps:
            data = steps[step_from](data)
    return data
