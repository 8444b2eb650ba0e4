"""The dataset interface (`InstanceDataset`) on every built-in dataset, with real data, and the one
spec table that builds them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maskrcnn.data import (
    DATASET_SPECS,
    CocoDataset,
    DatasetSpec,
    InstanceDataset,
    MaskFolderDataset,
    ShapesDataset,
    ViaDataset,
    aspect_ratios,
    build_dataset,
    check_dataset,
)
from maskrcnn.data.specs import DATASET_KINDS, spec_usage

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _datasets(shared_data: Path) -> dict[str, tuple[InstanceDataset, int]]:
    """One dataset of every built-in kind, each with the index of an item that has instances."""
    mini = shared_data / "coco-mini"
    coco = CocoDataset(mini / "annotations/instances_train2017.json", mini / "train2017")
    return {
        "coco": (coco, coco.image_ids.index(174375)),  # an image with crowd regions
        "via": (ViaDataset(shared_data / "balloon/val"), 2),
        "masks": (MaskFolderDataset(shared_data / "nuclei/test"), 0),  # an RGBA PNG
        "shapes": (ShapesDataset(5, seed=2), 3),
    }


def test_every_built_in_dataset_is_an_instance_dataset(shared_data: Path) -> None:
    for kind, (dataset, index) in _datasets(shared_data).items():
        assert isinstance(dataset, InstanceDataset), kind
        assert check_dataset(dataset) is dataset
        assert dataset.num_classes == len(dataset.class_names) == len(dataset.category_ids) >= 1, kind
        assert len(dataset.image_ids) == len(dataset) > index, kind
        sample = dataset[index]
        # the cheap paths agree with the full item, which decodes the image
        assert dataset.image_size(index) == tuple(sample.image.shape[-2:]), kind
        targets, crowd = dataset.load_targets(index)
        assert len(targets) > 0, kind
        for field in ("boxes", "labels", "masks"):
            assert torch.equal(getattr(targets, field), getattr(sample.targets, field)), (kind, field)
        assert torch.equal(crowd.reshape(-1, 4), sample.crowd_boxes.reshape(-1, 4)), kind
        assert int(dataset.image_ids[index]) == int(sample.image_id), kind
        assert dataset.file_name(index) == sample.file_name, kind
        assert int(targets.labels.min()) >= 1 and int(targets.labels.max()) <= dataset.num_classes, kind
    coco, index = _datasets(shared_data)["coco"]
    assert len(coco.load_targets(index)[1]) == 2  # the crowd boxes are there, not just empty on both sides


def test_aspect_ratios_come_from_image_size_without_decoding(shared_data: Path) -> None:
    via = ViaDataset(shared_data / "balloon/val")
    ratios = aspect_ratios(via)
    assert len(ratios) == 13
    h, w = via[5].image.shape[-2:]
    assert ratios[5] == w / h


def test_an_object_missing_members_is_named_precisely() -> None:
    class Folder:  # a torch-style dataset without the metadata training and evaluation rely on
        class_names = ["cell"]

        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int):
            return ShapesDataset(1)[index]

    assert not isinstance(Folder(), InstanceDataset)
    missing = "category_ids, image_ids, num_classes, image_size, load_targets, file_name"
    with pytest.raises(
        TypeError, match=f"the training dataset Folder is not an InstanceDataset: it has no {missing}"
    ):
        check_dataset(Folder(), what="the training dataset")


def test_kinds_and_usage_come_from_the_one_table() -> None:
    kinds = ("coco", "via", "masks", "labelme", "yolo", "cvat", "shapes")
    assert DATASET_KINDS == kinds == tuple(DATASET_SPECS)
    assert spec_usage() == (
        "coco:ANNOTATIONS.json:IMAGE_DIR, via:DIR, masks:DIR, labelme:DIR, yolo:DIR, yolo:DIR:SPLIT, "
        "cvat:DIR, cvat:ANNOTATIONS.xml:IMAGE_DIR, shapes, shapes:N or shapes:N:SEED"
    )
    with pytest.raises(
        ValueError, match=r"unknown dataset kind 'voc' in spec 'voc:x'; expected one of coco:"
    ):
        build_dataset("voc:x")


def test_a_new_format_is_one_table_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Registering a kind makes build_dataset build it and every message list it."""

    def squares(spec: str, rest: str) -> ShapesDataset:
        return ShapesDataset(int(rest or 3), seed=9)

    monkeypatch.setitem(DATASET_SPECS, "squares", DatasetSpec(("squares", "squares:N"), squares))
    built = build_dataset("squares:4")
    assert isinstance(built, ShapesDataset) and len(built) == 4 and built.seed == 9
    assert spec_usage().endswith("shapes:N:SEED, squares or squares:N")
    with pytest.raises(ValueError, match=r"expected one of .*, squares or squares:N$"):
        build_dataset("circles")
    # the existing kinds still name the spec and the missing path
    with pytest.raises(FileNotFoundError, match=rf"dataset spec 'masks:{tmp_path}/gone': directory .*gone"):
        build_dataset(f"masks:{tmp_path}/gone")
