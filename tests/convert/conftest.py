"""The detectron2 R50-FPN Mask R-CNN that several test modules share (built once per session)."""

from __future__ import annotations

import pytest

from .d2_reference import SMALL, Built


@pytest.fixture(scope="session")
def r50(tmp_path_factory) -> Built:
    """detectron2's R50-FPN 3x model (seeded, decisive) at 384-640 px, its .pth, .pkl and config.yaml,
    and ours converted from them."""
    tmp = tmp_path_factory.mktemp("d2-r50")
    return Built(
        tmp, "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", min_size=384, max_size=640, **SMALL
    )
