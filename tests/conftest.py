"""Shared fixtures: where the real data lives, and small helpers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest
import torch

from tests.helpers import SHARED_DATA, TINY

# under pytest-xdist (pyproject's addopts run two workers) each worker computes with one thread:
# the two workers fill the two cores, where one process with two threads leaves one idle whenever a
# test waits for a subprocess, a server or single-threaded Python
# (and so do the processes the tests start: results compared across a process boundary are then
# computed with the same thread count, hence the same float reductions)
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
else:
    torch.set_num_threads(max(1, torch.get_num_threads()))


def in_ci() -> bool:
    """Whether the CI environment variable is set (as CI services and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail_in_ci(reason: str) -> NoReturn:
    """Skip a test whose optional tool or feature (Chromium, a PyAV feature, an extra) is missing
    here; under CI, which installs all of them, fail it instead: a missing one there is a defect."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set: this fails instead of skipping)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA} (expected ../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """The small random 2-class model (`TINY`, classes cat and dog, seed 0) saved as a checkpoint:
    it detects ~5 things per image; shared by the predict, serve and CLI-error tests."""
    from maskrcnn.config import apply_overrides, get_preset
    from maskrcnn.engine.checkpoint import save_model
    from maskrcnn.model import build_model

    torch.manual_seed(0)
    model = build_model(apply_overrides(get_preset("default"), TINY), class_names=["cat", "dog"])
    path = tmp_path_factory.mktemp("tiny-weights") / "tiny.pt"
    save_model(model, path)
    return path


@pytest.fixture(scope="session")
def keypoints_json(shared_data: Path) -> Path:
    """coco-mini's val person-keypoint annotations."""
    return shared_data / "coco-mini" / "annotations" / "person_keypoints_val2017.json"
