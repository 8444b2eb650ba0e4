"""Datasets, transforms and loaders producing `maskrcnn.structures.Sample`s."""

from maskrcnn.data.coco import CocoDataset
from maskrcnn.data.dataset import InstanceDataset, check_dataset
from maskrcnn.data.loader import (
    AspectRatioGroupedBatchSampler,
    Batch,
    TrainLoader,
    aspect_ratios,
    build_train_loader,
    collate,
)
from maskrcnn.data.mask_folder import MaskFolderDataset
from maskrcnn.data.shapes import ShapesDataset
from maskrcnn.data.specs import DATASET_SPECS, DatasetSpec, build_dataset, write_coco_json
from maskrcnn.data.transforms import (
    Compose,
    HorizontalFlip,
    LargeScaleJitter,
    ResizeShortestEdge,
    Transform,
    load_image,
)
from maskrcnn.data.via import ViaDataset
from maskrcnn.ops.boxes import masks_to_boxes

__all__ = [
    "DATASET_SPECS",
    "AspectRatioGroupedBatchSampler",
    "Batch",
    "CocoDataset",
    "Compose",
    "DatasetSpec",
    "HorizontalFlip",
    "InstanceDataset",
    "LargeScaleJitter",
    "MaskFolderDataset",
    "ResizeShortestEdge",
    "ShapesDataset",
    "TrainLoader",
    "Transform",
    "ViaDataset",
    "aspect_ratios",
    "build_dataset",
    "build_train_loader",
    "check_dataset",
    "collate",
    "load_image",
    "masks_to_boxes",
    "write_coco_json",
]
