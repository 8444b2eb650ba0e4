"""Configuration: frozen dataclasses, presets, YAML load/save and `key=value` overrides.

Only `maskrcnn.model.build_model(cfg)` (and the training engine) read a Config; every module
takes explicit keyword arguments.

- `maskrcnn.config.schema`: the dataclasses (`Config` and its parts) and their defaults;
- `maskrcnn.config.presets`: the named configs (`get_preset`, `PRESETS`): `torchvision_v1`,
  `torchvision_v2` and `torchvision_keypoint` reproduce torchvision's models, `default` is v1 with
  pixel-aligned adaptive RoIAlign (as in detectron2), `shapes_demo` and `shapes_keypoints` are the
  demos' small networks;
- `maskrcnn.config.upgrade`: the schema version checkpoints record (`SCHEMA_VERSION`) and
  `upgrade_config`, which brings an older config dict to the current keys;
- this module: a config as a dict and as YAML (`to_dict`, `from_dict`, `load_config`,
  `save_config`), `key=value` overrides (`apply_overrides`) and `resolve` (a preset name or a YAML
  file, plus overrides). Every name above is importable from `maskrcnn.config`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from ..errors import UserError, UserKeyError
from .presets import (
    PRESETS,
    default,
    get_preset,
    shapes_demo,
    shapes_keypoints,
    torchvision_keypoint,
    torchvision_v1,
    torchvision_v2,
)
from .schema import (
    CHOICES,
    AnchorConfig,
    BackboneConfig,
    Config,
    DataConfig,
    InputConfig,
    KeypointConfig,
    ModelConfig,
    RoIHeadsConfig,
    RPNConfig,
    SolverConfig,
    TrainConfig,
    replace,
)
from .upgrade import SCHEMA_VERSION, rename_key, upgrade_config

__all__ = [
    "CHOICES",
    "PRESETS",
    "SCHEMA_VERSION",
    "AnchorConfig",
    "BackboneConfig",
    "Config",
    "DataConfig",
    "InputConfig",
    "KeypointConfig",
    "ModelConfig",
    "RPNConfig",
    "RoIHeadsConfig",
    "SolverConfig",
    "TrainConfig",
    "apply_overrides",
    "config_yaml",
    "default",
    "from_dict",
    "get_preset",
    "load_config",
    "rename_key",
    "replace",
    "resolve",
    "save_config",
    "shapes_demo",
    "shapes_keypoints",
    "to_dict",
    "torchvision_keypoint",
    "torchvision_v1",
    "torchvision_v2",
    "upgrade_config",
]


# ---------------------------------------------------------------- dict / YAML conversion


def to_dict(cfg: Any) -> dict:
    out = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


# PyYAML follows YAML 1.1, which reads `1e-3` (no dot) as a string: such strings count as numbers
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _as_number(value: Any) -> Any:
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)
    return value


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    if get_origin(annotation) is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[int, ...]: any length
            element_types = [args[0]] * len(value)
        else:  # tuple[float, float]: exactly that many
            if len(value) != len(args):
                raise UserError(f"{where}: expected a list of {len(args)} values, got {list(value)!r}")
            element_types = list(args)
        return tuple(_coerce(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, element_types)))
    if annotation is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        value = _as_number(value)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and not value.is_integer())
        ):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if annotation is float:
        value = _as_number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(data: dict, cls: type = Config, base: Any = None, where: str = "") -> Any:
    """Build `cls` from a (possibly partial) dict on top of `base` (default: cls())."""
    base = cls() if base is None else base
    if not isinstance(data, dict):
        raise UserError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    changes = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise UserKeyError(f"unknown config key {path!r}; valid keys here: {sorted(names)}")
        current = getattr(base, key)
        if is_dataclass(current):
            changes[key] = from_dict(value, type(current), current, path)
        else:
            changes[key] = _check_choice(_coerce(value, hints[key], path), path)
    return dataclasses.replace(base, **changes)


def _check_choice(value: Any, path: str) -> Any:
    """`value` if `path` has no fixed set of values (`CHOICES`) or it is one of them."""
    allowed = CHOICES.get(path)
    if allowed is not None and value not in allowed:
        listed = ", ".join(str(v) for v in allowed)
        raise UserError(f"config key {path!r}: {value!r} is not one of the allowed values: {listed}")
    return value


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `a.b.c=value` strings; values are parsed as YAML (numbers, lists, booleans)."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} must look like key=value (e.g. solver.base_lr=0.01)")
        key, raw = item.split("=", 1)
        nested: dict = {}
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise UserError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(e)})") from e
        cfg = from_dict(nested, Config, cfg)
    return cfg


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML parse error on one line: what is wrong and where."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(error, 'problem', None) or error}{where}"


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a YAML file. A top-level `preset:` key picks the base the file's keys change."""
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise UserError(f"config file {path} is not valid YAML: {_yaml_problem(e)}") from e
    preset = data.pop("preset", "default") if isinstance(data, dict) else "default"
    cfg = from_dict(data, Config, get_preset(preset))
    return apply_overrides(cfg, overrides or [])


def config_yaml(cfg: Config) -> str:
    """The YAML text of a config (what `save_config` writes, `load_config` reads)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(config_yaml(cfg))


def resolve(spec: str | None, overrides: list[str] | None = None) -> Config:
    """A preset name or a YAML path, plus overrides."""
    spec = spec or "default"
    if spec not in PRESETS and not Path(spec).is_file():
        raise FileNotFoundError(f"config {spec!r} is neither a preset {sorted(PRESETS)} nor a YAML file")
    cfg = get_preset(spec) if spec in PRESETS else load_config(spec)
    return apply_overrides(cfg, overrides or [])
