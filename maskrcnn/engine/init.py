"""Starting a run from trained weights: `maskrcnn train --init W` (config key `train.init`).

W is a weights name (`maskrcnn weights`), a path or URL of our checkpoint, or a torchvision Mask
R-CNN / Keypoint R-CNN state dict (any file `maskrcnn.checkpoints.read_checkpoint` reads, so the foreign
formats it converts too). The model is built from the training config, with the classes of the
training data (K of them); then, tensor by tensor of its state dict:

- loaded:    a tensor of W with the same name and shape is copied;
- remapped:  the class-specific tensors are copied slot by slot, matched by class name
             (case-insensitive; `train.init_class_map` for other names): the box classifier's
             K+1 rows (row 0 background, always copied), the box regressor's 4 rows per class, the
             mask predictor's K channels (a class-agnostic mask predictor is an ordinary tensor,
             copied whole; a class-agnostic one in W initialises every class's channel), and the
             keypoint predictor's J channels, matched by keypoint name. Slots of classes W lacks
             keep their fresh initialisation (the seeded one of a run from scratch);
- new:       not in W: keeps its fresh initialisation (only BatchNorm's num_batches_tracked
             counters, or what `train.init_strict=false` skipped);
- skipped:   (init_strict=false only) a tensor that does not fit: it stays fresh.
W's tensors the model has no place for are `unused` (e.g. the keypoint head of a Keypoint R-CNN
initialising a Mask R-CNN). An architecture mismatch (depth, widths, norm, a branch W lacks: any
tensor that is not class-specific with another shape, missing from W, or a module holding other
tensors, as a GroupNorm where W has a BatchNorm) is a UserError naming the first tensors that
differ, unless `train.init_strict=false`.

`train.init_class_map`: `data_name=W_name` pairs, inline (`balloon=sports ball,car=truck`) or one per
line in a text file (blank lines and `#` comments skipped); names not listed match by name.

The run prints one `init:` line (`init_line`) and writes RUN/init_report.json (`init_model`'s report:
every tensor's fate, the class correspondence, config values that change what the weights mean).
Under torchrun, rank 0 alone reads W and initialises; every tensor is then sent to the other ranks
(`initialize`), so they need no access to W and all start from the same weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..checkpoints import read_cached_checkpoint, read_checkpoint, upgraded_state
from ..config import Config, from_dict, to_dict
from ..distributed import DistInfo
from ..errors import UserError
from ..files import atomic_write_json

BACKGROUND = "\0background"  # the name of the background slot (no class can be called so)
COUNTER = "num_batches_tracked"  # BatchNorm's step counter: absent from FrozenBatchNorm2d and W's of it
# config values that change what the weights mean without changing a shape (a note when they differ)
FREE_KEYS = frozenset({"min_size", "max_size", "size_divisible", "frozen_stages", "weights", "norm"})
SHOWN = 5  # names shown in one-line messages


# ---------------------------------------------------------------- reading W


def read_source(text: str, *, progress: bool = True) -> tuple[Path, dict]:
    """(the local file, our checkpoint dict) of W: a weights name, a path or URL of a checkpoint, or
    of a torchvision state dict (converted by `read_checkpoint`)."""
    from .. import weights

    if weights.is_name(text):
        path = weights.converted(text, progress=progress)
        return path, read_checkpoint(path, torchvision=True)
    ckpt, path = read_cached_checkpoint(text, torchvision=True)
    return path, ckpt


def parse_class_map(text: str, *, data_names: list[str]) -> dict[str, str]:
    """`train.init_class_map` -> {data class name (lower case): W class name}."""
    if not text.strip():
        return {}
    path = Path(text)
    if path.is_file():
        where = str(path)
        items = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        items = [line for line in items if line and not line.startswith("#")]
    elif "=" in text:
        where, items = "train.init_class_map", [item.strip() for item in text.split(",") if item.strip()]
    else:
        raise FileNotFoundError(f"train.init_class_map: {text!r} is neither a file nor data=source pairs")
    known = {name.lower() for name in data_names}
    aliases: dict[str, str] = {}
    for item in items:
        data, _, source = (part.strip() for part in item.partition("="))
        if not data or not source:
            raise UserError(f"{where}: {item!r} is not data_name=source_name")
        if data.lower() not in known:
            classes = ", ".join(data_names)
            raise UserError(f"{where}: {data!r} is not a class of the training data ({classes})")
        aliases[data.lower()] = source
    return aliases


# ---------------------------------------------------------------- class-specific tensors


@dataclass(frozen=True)
class Slots:
    """A class-specific tensor: `names` slots along `axis`, `size` entries each (4 box deltas per
    class). `agnostic`: W's one class-agnostic mask channel, which every class may take."""

    names: tuple[str, ...]
    axis: int = 0
    size: int = 1
    agnostic: bool = False


def class_slots(cfg: Config, class_names: list[str]) -> dict[str, Slots]:
    """Tensor name -> its slots, for a model of `cfg` with these K class names."""
    classes = tuple(class_names)
    with_bg = (BACKGROUND, *classes)
    box = "roi_heads.box.predictor."
    out = {f"{box}cls_score.{k}": Slots(with_bg) for k in ("weight", "bias")}
    out.update({f"{box}bbox_pred.{k}": Slots(with_bg, size=4) for k in ("weight", "bias")})
    heads = cfg.model.roi_heads
    if heads.mask_on:
        if heads.mask_loss == "softmax":
            mask = Slots(with_bg)
        elif heads.class_agnostic_mask:
            mask = Slots((BACKGROUND,), agnostic=True)  # a source layout only: the target copies it whole
        else:
            mask = Slots(classes)
        out.update({f"roi_heads.mask.head.predictor.{k}": mask for k in ("weight", "bias")})
    if heads.keypoint_on:
        from ..data.keypoint_meta import keypoint_names

        names = keypoint_names(cfg.model.keypoints, num_keypoints=heads.num_keypoints)
        if names:  # ConvTranspose2d weight (C, J, 4, 4): keypoints on axis 1
            out["roi_heads.keypoint.head.predictor.weight"] = Slots(tuple(names), axis=1)
            out["roi_heads.keypoint.head.predictor.bias"] = Slots(tuple(names))
    return out


def _index(slots: Slots) -> dict[str, int]:
    """Lower-case name -> slot of W; names W holds twice (torchvision's "N/A") match nothing."""
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(slots.names):
        seen.setdefault(name.lower(), []).append(i)
    return {name: places[0] for name, places in seen.items() if len(places) == 1}


def _remap(fresh: Tensor, src: Tensor, target: Slots, source: Slots, aliases: dict[str, str]):
    """(the remapped tensor, carried slot names, fresh slot names), or a reason it does not fit."""
    t_shape, s_shape = list(fresh.shape), list(src.shape)
    axis = target.axis
    if t_shape[:axis] + t_shape[axis + 1 :] != s_shape[:axis] + s_shape[axis + 1 :] or s_shape[
        axis
    ] != source.size * len(source.names):
        return f"shape {tuple(s_shape)} in W, {tuple(fresh.shape)} here"
    index = _index(source)
    out, carried, kept = fresh.clone(), [], []
    for t, name in enumerate(target.names):
        key = aliases.get(name.lower(), name).lower()
        s = 0 if source.agnostic and name != BACKGROUND else index.get(key)
        if s is None:
            kept.append(name)
            continue
        size = target.size
        out.narrow(axis, t * size, size).copy_(src.narrow(axis, s * size, size))
        carried.append(name)
    return out, carried, kept


def _module(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _label(name: str) -> str:
    return "background" if name == BACKGROUND else name


def plan_init(
    *,
    target: dict[str, Tensor],
    source: dict[str, Tensor],
    target_slots: dict[str, Slots],
    source_slots: dict[str, Slots],
    aliases: dict[str, str],
) -> tuple[dict[str, Tensor], dict[str, dict], dict[str, dict], list[str]]:
    """(the new state dict, {tensor: its fate}, {unused tensor of W: shape}, problems) of putting
    `source` (W's state) into a model whose fresh state is `target`. Problems are the tensors that do
    not fit (they keep their fresh values in the new state)."""
    state, fates, problems = {}, {}, []
    for name, fresh in target.items():
        src = source.get(name)
        shape = list(fresh.shape)
        if src is None:
            state[name] = fresh
            if name.endswith(COUNTER):
                fates[name] = {"fate": "new", "shape": shape, "reason": "a counter W does not hold"}
                continue
            fates[name] = {"fate": "skipped", "shape": shape, "reason": "not in W"}
            problems.append(f"{name} is not in W")
            continue
        if name in target_slots and name in source_slots and not target_slots[name].agnostic:
            done = _remap(fresh, src.to(fresh.dtype), target_slots[name], source_slots[name], aliases)
            if not isinstance(done, str):
                state[name], carried, kept = done
                fates[name] = {
                    "fate": "remapped",
                    "shape": shape,
                    "carried": [_label(n) for n in carried],
                    "fresh": [_label(n) for n in kept],
                }
                continue
            reason = done
        elif src.shape == fresh.shape:
            state[name] = src.to(fresh.dtype)
            fates[name] = {"fate": "loaded", "shape": shape}
            continue
        else:
            reason = f"shape {tuple(src.shape)} in W, {tuple(fresh.shape)} here"
        state[name] = fresh
        fates[name] = {"fate": "skipped", "shape": shape, "reason": reason}
        problems.append(f"{name}: {reason}")
    modules = {_module(name) for name in target}
    unused = {}
    for name, src in source.items():
        if name in target:
            continue
        unused[name] = {"shape": list(src.shape)}
        if _module(name) in modules and not name.endswith(COUNTER):  # e.g. a BN's statistics, GN here
            problems.append(f"{name} is in W, but this model's {_module(name)} has no such tensor")
    return state, fates, unused, problems


# ---------------------------------------------------------------- initialising a model


def _config_notes(source: Config, target: Config) -> list[str]:
    """The input, backbone and anchor settings that differ between W's config and this run's and
    change what the weights mean (pixel mean and scale, frozen BN eps, anchor sizes, ...)."""
    notes = []
    for part in ("input", "backbone", "anchors"):
        theirs, ours = to_dict(getattr(source.model, part)), to_dict(getattr(target.model, part))
        for key in sorted(ours):
            if key not in FREE_KEYS and theirs.get(key) != ours[key]:
                notes.append(f"model.{part}.{key}: {theirs.get(key)!r} in W, {ours[key]!r} here")
    return notes


def _shown(names: list[str]) -> str:
    return ", ".join(names[:SHOWN]) + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def init_model(
    model: nn.Module, source_text: str, *, strict: bool = True, class_map: str = "", progress: bool = True
) -> dict:
    """Initialise `model` (built from the training config, with the data's class names) from W;
    returns the report (what RUN/init_report.json holds). The model is changed only when W fits
    (or `strict` is False)."""
    path, ckpt = read_source(source_text, progress=progress)
    source_cfg = from_dict(ckpt.get("config") or {}, Config)
    source_names = list(ckpt.get("class_names") or [])
    target_cfg: Config = model.config
    names = list(model.class_names)
    aliases = parse_class_map(class_map, data_names=names)
    source_slots = class_slots(source_cfg, source_names)
    known = {n.lower() for n in source_names}
    missing = [f"{d}={s}" for d, s in aliases.items() if s.lower() not in known]
    if missing:
        raise UserError(f"train.init_class_map: {_shown(missing)}: W ({source_text}) has no such class")
    target = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state, fates, unused, problems = plan_init(
        target=target,
        source={k: v for k, v in upgraded_state(ckpt).items() if isinstance(v, Tensor)},
        target_slots=class_slots(target_cfg, names),
        source_slots=source_slots,
        aliases=aliases,
    )
    if problems and strict:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise UserError(
            f"--init {source_text}: its weights do not fit this model's architecture "
            f"({'; '.join(problems[:3])}{more}); check depth, widths and norms against W's config, or "
            "set train.init_strict=false to load what fits"
        )
    model.load_state_dict(state, strict=True)
    index = _index(Slots(tuple(source_names)))
    classes = []
    for label, name in enumerate(names, 1):
        match = index.get(aliases.get(name.lower(), name).lower())
        classes.append({"name": name, "label": label, "from": None if match is None else source_names[match]})
    counts = {fate: sum(f["fate"] == fate for f in fates.values()) for fate in ("loaded", "remapped", "new")}
    counts["skipped"] = sum(f["fate"] == "skipped" for f in fates.values())
    return {
        "init": source_text,
        "file": str(path),
        "strict": strict,
        "counts": {
            **counts,
            "unused": len(unused),
            "classes_carried": sum(c["from"] is not None for c in classes),
        },
        "classes": classes,
        "source_classes": source_names,
        "config_differences": _config_notes(source_cfg, target_cfg),
        "skipped": problems,
        "tensors": fates,
        "unused": unused,
    }


def init_line(report: dict, *, report_path: Path | str) -> str:
    """The one `init:` line: N tensors loaded, M remapped with K classes carried, L newly
    initialised, U unused (skipped ones, with init_strict=false, named)."""
    c = report["counts"]
    carried = [x["name"] for x in report["classes"] if x["from"] is not None]
    classes = f"{c['classes_carried']} of {len(report['classes'])} classes carried"
    line = (
        f"init: from {report['init']}: {c['loaded']} tensors loaded, {c['remapped']} remapped with "
        f"{classes}{f' ({_shown(carried)})' if carried else ''}, {c['new'] + c['skipped']} newly "
        f"initialised, {c['unused']} unused; every tensor's fate: {report_path}"
    )
    if report["skipped"]:
        skipped = [re.split(r"[: ]", problem)[0] for problem in report["skipped"]]
        line += f"; skipped (train.init_strict=false): {_shown(skipped)}"
    return line


def initialize(
    model: nn.Module, cfg: Config, *, out_dir: Path, info: DistInfo, progress: bool
) -> dict | None:
    """`train.init` of a run that does not resume: rank 0 initialises `model` from W, writes
    out_dir/init_report.json and prints the `init:` line (and a `note:` line for config values that
    change what the weights mean); then every tensor goes from rank 0 to the other ranks. A failure on
    rank 0 raises on every rank. Returns the report on rank 0 (None elsewhere, or without train.init)."""
    if not cfg.train.init:
        return None
    report, error = None, None
    if info.is_main:
        try:
            report = init_model(
                model,
                cfg.train.init,
                strict=cfg.train.init_strict,
                class_map=cfg.train.init_class_map,
                progress=progress,
            )
        except Exception as e:  # sent to the other ranks before it is raised here
            error = e
    if info.enabled:
        box = [None if error is None else str(error)]
        dist.broadcast_object_list(box, src=0)
        if error is None and box[0] is not None:
            raise UserError(f"rank 0 could not initialise from {cfg.train.init}: {box[0]}")
        if box[0] is None:
            with torch.no_grad():
                for tensor in model.state_dict().values():
                    dist.broadcast(tensor, src=0)
    if error is not None:
        raise error
    if report is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "init_report.json"
        atomic_write_json(path, report, indent=1)
        print(init_line(report, report_path=path), flush=True)
        if report["config_differences"]:
            print(f"note: W's config differs here: {'; '.join(report['config_differences'])}", flush=True)
    return report
