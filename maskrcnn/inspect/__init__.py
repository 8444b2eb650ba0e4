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

from .command import add_inspect_arguments, cmd_inspect, find_annotations
from .page import render_html, write_inspection
from .stages import Inspection, inspect_model, pooled_levels

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
