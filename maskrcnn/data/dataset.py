"""The dataset interface: what `maskrcnn train`, `evaluate`, `show-data`, `convert-dataset` and
`inspect --annotations` rely on.

A dataset of instance masks is any object with the members of `InstanceDataset` (no base class
needed); the built-in ones (`CocoDataset`, `ViaDataset`, `MaskFolderDataset`, `ShapesDataset`) all
satisfy it. Who uses what:

- `__len__` / `__getitem__(i) -> Sample`: training (through the loader), evaluation, show-data;
- `class_names` / `num_classes`: the model's number of classes and its class names (train), the
  COCO categories written for ground truth (evaluate, convert-dataset), the drawn labels (show-data);
- `category_ids`: label i+1 <-> `category_ids[i]`, the category ids of COCO records (evaluate,
  predictions of a trained model, convert-dataset);
- `image_ids`: the image id of item i (ground truth and detections are matched by it);
- `image_size(i) -> (height, width)`: without decoding the image (aspect-ratio grouping of the
  training batches reads it for every item);
- `load_targets(i) -> (Targets, crowd boxes (C, 4))`: the item's annotations without decoding the
  image; equal to `__getitem__(i).targets` / `.crowd_boxes` (ground truth files, inspect);
- `file_name(i)`: the item's image file, relative to the dataset's image folder (ground-truth
  records, finding an image's annotations in inspect).

Optional keypoint metadata (`KeypointMetadata`; a dataset without these members has no keypoints):
- `num_keypoints`: J, the keypoints of every instance (`Targets.keypoints` is (G, J, 3)); 0: none;
  without this member, J is the number of `keypoint_names`;
- `keypoint_names`: their J names (or [] when unnamed): the model's `model.keypoints.names`, and the
  left/right pairs a horizontal flip swaps (`maskrcnn.data.keypoint_meta`);
- `skeleton`: pairs of 1-based keypoint indices to connect when drawing (COCO's convention).
`dataset_keypoints(dataset)` reads them with those defaults.

Optional data checks (`maskrcnn check-data`, and `train` before its first step; see
`maskrcnn.data.check`): `problems`, the `ProblemLog` of what reading the annotation files found,
and `check_item(i, log)`, which records the item's file problems (missing, unreadable, another size).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from maskrcnn.config import KeypointConfig
from maskrcnn.structures import Sample, Targets

__all__ = ["InstanceDataset", "KeypointMetadata", "check_dataset", "dataset_keypoints"]


@runtime_checkable
class InstanceDataset(Protocol):
    """Images with instance masks (see the module docstring for who relies on which member)."""

    class_names: list[str]
    category_ids: list[int]
    image_ids: list[int]

    @property
    def num_classes(self) -> int: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...

    def image_size(self, index: int) -> tuple[int, int]: ...

    def load_targets(self, index: int) -> tuple[Targets, Tensor]: ...

    def file_name(self, index: int) -> str: ...


@runtime_checkable
class KeypointMetadata(Protocol):
    """The optional members of a dataset with keypoints (see the module docstring)."""

    num_keypoints: int
    keypoint_names: list[str]
    skeleton: list[tuple[int, int]]


def dataset_keypoints(dataset: Any) -> tuple[int, KeypointConfig]:
    """(J, the names and skeleton as a `model.keypoints` config section) of a dataset; (0, empty)
    for a dataset without keypoints."""
    names = tuple(str(n) for n in getattr(dataset, "keypoint_names", None) or ())
    num = int(getattr(dataset, "num_keypoints", len(names)) or 0)
    if not num:
        return 0, KeypointConfig()
    skeleton = tuple((int(a), int(b)) for a, b in getattr(dataset, "skeleton", None) or ())
    return num, KeypointConfig(names=names, skeleton=skeleton)


_MEMBERS = (
    "class_names",
    "category_ids",
    "image_ids",
    "num_classes",
    "__len__",
    "__getitem__",
    "image_size",
    "load_targets",
    "file_name",
)


def check_dataset(dataset: Any, *, what: str = "dataset") -> InstanceDataset:
    """Return `dataset` if it satisfies `InstanceDataset`, else raise a TypeError naming the
    members it lacks (`what` names the dataset in the message, e.g. "the training dataset")."""
    missing = [m for m in _MEMBERS if not hasattr(dataset, m)]
    if missing:
        raise TypeError(
            f"{what} {type(dataset).__name__} is not an InstanceDataset: it has no {', '.join(missing)} "
            "(see maskrcnn.data.dataset)"
        )
    if len(dataset.category_ids) != len(dataset.class_names):
        raise TypeError(
            f"{what} {type(dataset).__name__} has {len(dataset.class_names)} class names but "
            f"{len(dataset.category_ids)} category ids"
        )
    return dataset
