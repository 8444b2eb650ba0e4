"""Other packages' checkpoints made ours, as files and as models.

- `maskrcnn convert --from torchvision-v1|v2|keypoint|detectron2 IN OUT` (`add_convert_arguments`,
  `cmd_convert`): a torchvision state dict or a detectron2 checkpoint file -> our checkpoint file
  (`convert_detectron2` for detectron2's);
- the published weights of `maskrcnn.weights` (`CONVERTERS`): a downloaded torchvision or
  detectron2 model-zoo file -> our model, with the registry entry's config overrides.

`maskrcnn --help` builds the parser without torch: what needs it is imported when a command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError

SOURCES = ("torchvision-v1", "torchvision-v2", "torchvision-keypoint", "detectron2")


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, choices=SOURCES)
    p.add_argument(
        "input", help="torchvision state dict (.pth), or detectron2 model_final.pth / model-zoo .pkl"
    )
    p.add_argument("output", help="our checkpoint (.pt)")
    p.add_argument(
        "--config",
        help="detectron2: the model's YAML config (_BASE_ files followed); default: from the weights",
    )
    p.add_argument("--classes", help="detectron2: a file of class names, one per line (default: COCO's 80)")


def cmd_convert(args: argparse.Namespace) -> int:
    from ..convert.torchvision import from_torchvision, load_torchvision_state
    from .checkpoint import save_model

    if args.source == "detectron2":
        print(convert_detectron2(args.input, args.output, d2_config=args.config, classes=args.classes))
        return 0
    if args.config or args.classes:
        raise UserError("--config and --classes are for --from detectron2")
    version = args.source.split("-")[-1]
    model = from_torchvision(load_torchvision_state(args.input), version, source=args.input)
    save_model(model, args.output)
    print(f"wrote {args.output}: torchvision {version}, {model.config.model.num_classes} classes")
    return 0


def read_class_names(path: str | Path) -> list[str]:
    """A class-names file: one name per line (blank lines ignored)."""
    try:
        return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as e:
        raise UserError(f"--classes {path}: cannot read ({e.strerror or e})") from e


def convert_detectron2(
    source: str | Path,
    target: str | Path,
    *,
    d2_config: str | Path | None = None,
    classes: str | Path | None = None,
) -> str:
    """Convert `source` (model_final.pth or a zoo .pkl, read safely) into our checkpoint `target`,
    written atomically and only once the converted model loads; returns the line that says what."""
    from ..checkpoints import model_from_checkpoint
    from ..convert.detectron2 import from_detectron2
    from ..safe_load import load_weights_file
    from .checkpoint import atomic_save

    names = read_class_names(classes) if classes else None
    obj = load_weights_file(source)
    ckpt = from_detectron2(obj, d2_config=d2_config, class_names=names, source=str(source))
    model_from_checkpoint(ckpt)  # it must load before anything is written
    atomic_save(ckpt, target)
    m = ckpt["config"]["model"]
    b, h = m["backbone"], m["roi_heads"]
    arch = f"{'X' if b['groups'] > 1 else 'R'}{b['depth']}-FPN"
    heads = " + ".join(n for n, on in (("mask", h["mask_on"]), ("keypoint", h["keypoint_on"])) if on) or "box"
    return f"wrote {target}: detectron2 {arch} {heads}, {m['num_classes']} classes"


# ---------------------------------------------------------------- the published weights' converters


def _torchvision_maskrcnn(version: str) -> Callable[[Path, Any], Any]:
    def convert(path: Path, entry):
        from ..config import apply_overrides, replace
        from ..convert.fit import load_fitting
        from ..convert.torchvision import config_for, convert_state_dict, load_torchvision_state
        from ..model import build_model

        state = load_torchvision_state(str(path))
        cfg = apply_overrides(config_for(state, version), list(entry.overrides))
        keypoint_names = entry.weights.meta.get("keypoint_names")
        if keypoint_names:  # the keypoint model: its 17 COCO person keypoints by name
            cfg = replace(
                cfg,
                model=replace(cfg.model, keypoints=replace(cfg.model.keypoints, names=tuple(keypoint_names))),
            )
        categories = list(entry.weights.meta["categories"])  # "__background__", then COCO ids 1..90
        # label L (1..90) is class_names[L-1] = categories[L], i.e. COCO category id L: the model's
        # default category ids 1..K are COCO's ids
        model = build_model(cfg, class_names=categories[1:])
        load_fitting(
            model, convert_state_dict(state), source=entry.name, what=f"torchvision's {version} model"
        )
        return model.eval()

    return convert


def _detectron2(path: Path, entry):
    """A detectron2 zoo file -> our model (architecture from its tensors, then the entry's overrides)."""
    from ..checkpoints import model_from_checkpoint
    from ..config import apply_overrides, from_dict, to_dict
    from ..convert.detectron2 import from_detectron2
    from ..safe_load import load_weights_file

    ckpt = from_detectron2(load_weights_file(path), source=str(path))
    cfg = apply_overrides(from_dict(ckpt["config"]), list(entry.overrides))
    model = model_from_checkpoint({**ckpt, "config": to_dict(cfg)})
    return model.eval()


# converter key (`maskrcnn.weights.Entry.converter`) -> (downloaded file, entry) -> our MaskRCNN model
CONVERTERS: dict[str, Callable[[Path, Any], Any]] = {
    "torchvision_maskrcnn_v1": _torchvision_maskrcnn("v1"),
    "torchvision_maskrcnn_v2": _torchvision_maskrcnn("v2"),
    "torchvision_keypoint": _torchvision_maskrcnn("keypoint"),
    "detectron2": _detectron2,
}
