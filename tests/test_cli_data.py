"""Dataset commands of the CLI: `maskrcnn show-data` and `maskrcnn convert-dataset`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from maskrcnn.cli import main as cli_main
from maskrcnn.data import ShapesDataset
from maskrcnn.visualize import draw_targets
from tests.helpers import REPO_ROOT


def test_show_data_shapes(tmp_path: Path) -> None:
    """A real `maskrcnn` process: the entry point, the spec parser and the drawing together."""
    out = tmp_path / "shown"
    cmd = [sys.executable, "-m", "maskrcnn", "show-data", "shapes:4", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [f"shapes_0_{i:06d}.png" for i in range(4)]
    dataset = ShapesDataset(4)
    for index, path in enumerate(files):
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size == (128, 128)
            sample = dataset[index]
            expected = draw_targets(sample.image, sample.targets, dataset.class_names)
            assert np.array_equal(np.array(im.convert("RGB")), np.array(expected))


def test_show_data_limit_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["show-data", "shapes:5", "--out", str(tmp_path / "a"), "--limit", "2"]) == 0
    assert len(list((tmp_path / "a").glob("*.png"))) == 2
    assert cli_main(["show-data", f"via:{tmp_path}/absent", "--out", str(tmp_path / "b")]) == 1
    assert "absent does not exist" in capsys.readouterr().err


def test_convert_dataset_balloon(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "balloon_val.json"
    assert cli_main(["convert-dataset", f"via:{shared_data}/balloon/val", str(out)]) == 0
    gt = COCO(str(out))
    assert len(gt.getImgIds()) == 13 and len(gt.getAnnIds()) == 50
    assert len(gt.getCatIds()) == 1  # one class (ViaDataset names it "object")
    assert all(a["iscrowd"] == 0 and a["area"] > 0 for a in gt.loadAnns(gt.getAnnIds()))
