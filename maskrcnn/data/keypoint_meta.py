"""What a set of keypoints is: names, skeleton, OKS sigmas and the horizontal-flip map.

A keypoint set is described by `maskrcnn.config.KeypointConfig` (`model.keypoints` of a config) and
its size J (`model.roi_heads.num_keypoints`). Empty fields are filled here:

- COCO's 17 person keypoints are the default for J = 17 when no names are given, or when the names
  are COCO's: their names, skeleton (1-based index pairs, as in COCO's category records) and OKS
  sigmas (pycocotools' `COCOeval` values);
- the flip map (0-based index pairs a horizontal flip swaps) comes from the names: each name whose
  word `left` becomes `right` names another keypoint is paired with it (`left_eye` <-> `right_eye`,
  `hand_left` <-> `hand_right`; words are separated by `_`, `-`, `.` or spaces; case is ignored);
  names without `left` / `right` are their own mirror image.

A custom set (J != 17, or names that are not COCO's) without OKS sigmas, or without names and
without a flip map, is an error when the missing field is needed (evaluation, flipping).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from maskrcnn.config import Config, KeypointConfig, replace
from maskrcnn.data.dataset import dataset_keypoints
from maskrcnn.errors import UserError

__all__ = [
    "COCO_PERSON_KEYPOINT_NAMES",
    "COCO_PERSON_OKS_SIGMAS",
    "COCO_PERSON_SKELETON",
    "flip_map_from_names",
    "keypoint_flip_map",
    "keypoint_names",
    "keypoint_skeleton",
    "oks_sigmas",
    "with_dataset_keypoints",
]

COCO_PERSON_KEYPOINT_NAMES = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
# the `skeleton` of COCO's person category (person_keypoints_*.json), 1-based
COCO_PERSON_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip
# pycocotools.cocoeval.Params.setKpParams: np.array([.26, .25, ...]) / 10.0
COCO_PERSON_OKS_SIGMAS = tuple(
    v / 10.0 for v in (
        0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89,
    )
)  # fmt: skip

_SIDE = re.compile(r"(?<![^\W_])(left|right)(?![^\W_])", re.IGNORECASE)


def _is_coco_person(num_keypoints: int, names: Sequence[str]) -> bool:
    return num_keypoints == len(COCO_PERSON_KEYPOINT_NAMES) and (
        not names or tuple(names) == COCO_PERSON_KEYPOINT_NAMES
    )


def _check_names(num_keypoints: int, names: Sequence[str]) -> None:
    if names and len(names) != num_keypoints:
        raise UserError(
            f"model.keypoints.names has {len(names)} names for {num_keypoints} keypoints "
            "(model.roi_heads.num_keypoints)"
        )


def keypoint_names(keypoints: KeypointConfig, *, num_keypoints: int) -> tuple[str, ...]:
    """The J names: the configured ones, COCO's for 17 unnamed keypoints, else ()."""
    _check_names(num_keypoints, keypoints.names)
    if keypoints.names:
        return tuple(keypoints.names)
    return COCO_PERSON_KEYPOINT_NAMES if _is_coco_person(num_keypoints, ()) else ()


def keypoint_skeleton(keypoints: KeypointConfig, *, num_keypoints: int) -> tuple[tuple[int, int], ...]:
    """Pairs of 1-based keypoint indices to connect: the configured ones, COCO's for COCO's
    person keypoints, else () (no lines)."""
    _check_names(num_keypoints, keypoints.names)
    for a, b in keypoints.skeleton:
        if not (1 <= a <= num_keypoints and 1 <= b <= num_keypoints):
            raise UserError(
                f"model.keypoints.skeleton pair {[a, b]} is outside 1..{num_keypoints} (1-based indices)"
            )
    if keypoints.skeleton:
        return tuple((int(a), int(b)) for a, b in keypoints.skeleton)
    return COCO_PERSON_SKELETON if _is_coco_person(num_keypoints, keypoints.names) else ()


def oks_sigmas(keypoints: KeypointConfig, *, num_keypoints: int) -> tuple[float, ...]:
    """The per-keypoint OKS sigmas of keypoint AP: the configured ones, COCO's for COCO's person
    keypoints; a UserError for a custom set without them."""
    _check_names(num_keypoints, keypoints.names)
    sigmas = tuple(float(s) for s in keypoints.oks_sigmas)
    if sigmas:
        if len(sigmas) != num_keypoints:
            raise UserError(
                f"model.keypoints.oks_sigmas has {len(sigmas)} values for {num_keypoints} keypoints"
            )
        if min(sigmas) <= 0:
            raise UserError(f"model.keypoints.oks_sigmas must be positive, got {list(sigmas)}")
        return sigmas
    if _is_coco_person(num_keypoints, keypoints.names):
        return COCO_PERSON_OKS_SIGMAS
    named = f" ({', '.join(keypoints.names)})" if keypoints.names else ""
    raise UserError(
        f"keypoint AP needs OKS sigmas for this custom set of {num_keypoints} keypoints{named}: "
        f"COCO's are only for its 17 person keypoints. Set model.keypoints.oks_sigmas to {num_keypoints} "
        "values (the spread of each keypoint's annotations relative to the object's scale; COCO uses "
        "0.025 for the eyes up to 0.107 for the hips), or --oks-sigmas for evaluate-results"
    )


def flip_map_from_names(names: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """0-based (left, right) index pairs of the names that differ only in the word left/right
    (see the module docstring); a `left` or `right` name without its partner is a UserError."""
    index = {name.lower(): i for i, name in enumerate(names)}
    pairs = []
    for i, name in enumerate(names):
        if not _SIDE.search(name):
            continue
        mirrored = _SIDE.sub(lambda m: "right" if m.group(1).lower() == "left" else "left", name.lower())
        j = index.get(mirrored)
        if j is None:
            raise UserError(
                f"keypoint {name!r} has no mirror keypoint {mirrored!r} for horizontal flips; "
                "set model.keypoints.flip_map (0-based index pairs) or rename the keypoints"
            )
        if i < j:
            pairs.append((i, j))
    return tuple(pairs)


def keypoint_flip_map(keypoints: KeypointConfig, *, num_keypoints: int) -> tuple[tuple[int, int], ...]:
    """The 0-based index pairs a horizontal flip swaps: the configured ones, else the names' left /
    right pairs, else COCO's for 17 unnamed keypoints; a UserError when none of those exists."""
    _check_names(num_keypoints, keypoints.names)
    if keypoints.flip_map:
        seen: set[int] = set()
        for a, b in keypoints.flip_map:
            if not (0 <= a < num_keypoints and 0 <= b < num_keypoints) or a == b or {a, b} & seen:
                raise UserError(
                    f"model.keypoints.flip_map pair {[a, b]}: pairs must be distinct 0-based indices in "
                    f"0..{num_keypoints - 1}, each keypoint in at most one pair"
                )
            seen |= {a, b}
        return tuple((int(a), int(b)) for a, b in keypoints.flip_map)
    names = keypoint_names(keypoints, num_keypoints=num_keypoints)
    if not names:
        raise UserError(
            f"horizontal flips need to know which of the {num_keypoints} keypoints swap (left <-> right): "
            "name them (left_*/right_*: model.keypoints.names or the dataset's keypoint names), set "
            "model.keypoints.flip_map (0-based index pairs), or set data.hflip_prob=0"
        )
    return flip_map_from_names(names)


def with_dataset_keypoints(cfg: Config, dataset: Any) -> Config:
    """`cfg` with the training dataset's keypoints, as `maskrcnn train` takes its classes from it:
    J (`model.roi_heads.num_keypoints`) and the names and skeleton it has (`model.keypoints`; the
    configured ones stay where the dataset has none). A model with the keypoint branch needs a
    dataset with keypoints."""
    num, meta = dataset_keypoints(dataset)
    heads = cfg.model.roi_heads
    if not num:
        if heads.keypoint_on:
            raise UserError(
                "model.roi_heads.keypoint_on is true but the training dataset has no keypoints "
                "(a COCO file with keypoint annotations, e.g. person_keypoints_train2017.json)"
            )
        return cfg
    keypoints = replace(
        cfg.model.keypoints,
        names=meta.names or cfg.model.keypoints.names,
        skeleton=meta.skeleton or cfg.model.keypoints.skeleton,
    )
    _check_names(num, keypoints.names)
    model = replace(cfg.model, roi_heads=replace(heads, num_keypoints=num), keypoints=keypoints)
    return replace(cfg, model=model)
