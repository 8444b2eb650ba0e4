"""`maskrcnn inspect`: pictures of every stage of the model on one image, and a page that shows them.

    image -> preprocess -> backbone + FPN -> RPN head -> anchors, pre-NMS candidates, proposals
          -> RoI level assignment -> box head (refinement) -> mask head (28×28 logits) -> detections

Modules:
    stages         `inspect_model`: runs the model stage by stage, keeps what each produced in an
                   `Inspection`
    pictures       `draw_all`: every picture, in page order, and the numbers behind them
    rpn_pictures   anchors per level, anchor targets, RPN proposals before/after NMS
    head_pictures  RoI pooling levels, box refinement, mask logits, final detections
    canvas         drawing primitives: faded image, outlines, panels, legends, colour bars
    page           `write_inspection`: the PNG files, `index.html` and `summary.json`
    command        the command line: arguments, ground truth from a dataset, `cmd_inspect`

Stage pictures are drawn on the model's input frame: the image resized as the model resizes it,
before padding, in which anchors, proposals and RoIs live. The final detections are drawn on the
original image, as the model returns them.
"""

from __future__ import annotations

import importlib
from typing import Any

# the names load lazily (PEP 562): the CLI imports `command` without paying for torch
_LAZY = {
    "add_inspect_arguments": "command",
    "cmd_inspect": "command",
    "find_annotations": "command",
    "render_html": "page",
    "write_inspection": "page",
    "Inspection": "stages",
    "inspect_model": "stages",
    "pooled_levels": "stages",
}

__all__ = [
    "Inspection",
    "add_inspect_arguments",
    "cmd_inspect",
    "find_annotations",
    "inspect_model",
    "pooled_levels",
    "render_html",
    "write_inspection",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'maskrcnn.inspect' has no attribute {name!r}")
