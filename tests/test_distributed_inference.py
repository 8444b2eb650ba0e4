"""`torchrun -m maskrcnn predict|evaluate` with two CPU processes (gloo) on coco-mini val images:
the same predictions.json (byte for byte), overlays and metrics as one process with the same
threads, each process running only its share; a bad input on one process gives one `error:` line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import pytest
import torch

from tests.helpers import TINY

VAL = "coco-mini/val2017"
OUR_FRAME = re.compile(r'File "[^"]*/maskrcnn/')  # a traceback frame of our package


def _env() -> dict[str, str]:
    # float results depend on the number of threads: one per process in both kinds of run
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _maskrcnn(*runs: tuple[int, list]) -> list[subprocess.CompletedProcess]:
    """`python -m maskrcnn ARGS` for each (processes, ARGS), under torchrun with that many local
    processes when more than 1; the runs go side by side (most of their time is importing torch)."""
    started = []
    for processes, args in runs:
        launch = [sys.executable]
        if processes > 1:
            launch += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        command = [*launch, "-m", "maskrcnn", *map(str, args)]
        started.append((command, subprocess.Popen(command, stdout=PIPE, stderr=PIPE, text=True, env=_env())))
    done = []
    for command, process in started:
        out, err = process.communicate(timeout=240)
        done.append(subprocess.CompletedProcess(command, process.returncode, out, err))
    return done


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """The tiny random 2-class model (it detects 5 things per image), saved as a checkpoint."""
    from maskrcnn.config import apply_overrides, get_preset
    from maskrcnn.engine.checkpoint import save_model
    from maskrcnn.model import build_model

    torch.manual_seed(0)
    model = build_model(apply_overrides(get_preset("default"), TINY), class_names=["cat", "dog"])
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_model(model, path)
    return path


def _coco_subset(shared_data: Path, path: Path, count: int, *, missing: int | None = None) -> str:
    """A COCO file of the first `count` coco-mini val images (the `missing`-th renamed to a file
    that does not exist) and their annotations -> the dataset spec."""
    data = json.loads((shared_data / "coco-mini/annotations/instances_val2017.json").read_text())
    images = sorted(data["images"], key=lambda i: i["id"])[:count]
    if missing is not None:
        images[missing] = {**images[missing], "file_name": "missing.jpg"}
    ids = {i["id"] for i in images}
    subset = {
        **data,
        "images": images,
        "annotations": [a for a in data["annotations"] if a["image_id"] in ids],
    }
    path.write_text(json.dumps(subset))
    return f"coco:{path}:{shared_data / VAL}"


def test_predict_under_torchrun_equals_one_process(weights, shared_data, tmp_path):
    images = sorted((shared_data / VAL).iterdir())[:6]
    cut = tmp_path / "cut.jpg"  # unreadable: in batch 1 (inputs 2, 3), which is rank 1's
    data = images[0].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    inputs = [*images[:3], cut, *images[3:]]
    common = ["predict", "--weights", weights, "--batch-size", "2", *inputs]
    one, two = _maskrcnn(
        (1, [*common, "--out", tmp_path / "one", "--no-progress"]),
        (2, [*common, "--out", tmp_path / "two"]),  # with the progress bar
    )

    errors = []
    for result in (one, two):  # the unreadable input is skipped and reported, once, by rank 0
        assert result.returncode == 1, result.stderr[-3000:]
        assert not OUR_FRAME.search(result.stderr), result.stderr[-3000:]
        errors.append([line for line in result.stderr.splitlines() if line.startswith("error: ")])
    assert len(errors[0]) == 1 and errors[0][0].startswith(f"error: {cut}: truncated image data")
    assert errors[1] == errors[0]
    wrote = f"wrote {tmp_path / 'one' / 'predictions.json'}: 30 detections on 6 images"
    assert wrote in one.stdout
    assert wrote.replace("/one/", "/two/") in two.stdout
    # one bar for the whole job (drawn by rank 0 from the counts of both processes)
    assert re.search(r"predict: 100%\S* 7/7 ", two.stderr), two.stderr[-3000:]
    assert not re.search(r"predict:.* \d/[34] ", two.stderr)

    a, b = (tmp_path / run / "predictions.json" for run in ("one", "two"))
    assert b.read_bytes() == a.read_bytes()
    records = json.loads(a.read_text())
    assert [r["image_id"] for r in records[::5]] == [int(p.stem) for p in images]
    overlays = sorted(p.name for p in (tmp_path / "one/overlays").iterdir())
    assert overlays == sorted(p.stem + ".jpg" for p in images)
    assert sorted(p.name for p in (tmp_path / "two/overlays").iterdir()) == overlays
    for name in overlays:  # each drawn by the process that predicted the image
        one_overlay, two_overlay = (tmp_path / run / "overlays" / name for run in ("one", "two"))
        assert two_overlay.read_bytes() == one_overlay.read_bytes(), name

    # batch k of 2 inputs ran on rank k mod 2: disjoint shares that cover every input
    names = [p.name for p in inputs]
    shares = json.loads((tmp_path / "two/shards.json").read_text())
    assert [s["rank"] for s in shares] == [0, 1] and {s["device"] for s in shares} == {"cpu"}
    assert shares[0]["inputs"] == [names[i] for i in (0, 1, 4, 5)]
    assert shares[1]["inputs"] == [names[i] for i in (2, 3, 6)]
    assert "2 processes: rank 0 ran 4 inputs on cpu" in two.stdout and "rank 1 ran 3 inputs" in two.stdout
    assert not (tmp_path / "one/shards.json").exists()


def test_evaluate_under_torchrun_equals_one_process(weights, shared_data, tmp_path):
    spec = _coco_subset(shared_data, tmp_path / "val6.json", 6)
    common = ["evaluate", "--weights", weights, "--data", spec, "--no-progress"]
    one, two = _maskrcnn((1, [*common, "--out", tmp_path / "one"]), (2, [*common, "--out", tmp_path / "two"]))
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    for name in ("detections.json", "metrics.json", "per_class_ap.txt"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    metrics = json.loads((tmp_path / "one/metrics.json").read_text())
    assert metrics["num_images"] == 6 and metrics["num_detections"] == 30
    assert isinstance(metrics["bbox"]["AP50"], float) and isinstance(metrics["segm"]["AP"], float)
    assert two.stdout.count("IoU type") == 1  # the table is printed once, by rank 0

    files = [info["file_name"] for info in json.loads((tmp_path / "val6.json").read_text())["images"]]
    shares = json.loads((tmp_path / "two/shards.json").read_text())
    assert [s["inputs"] for s in shares] == [files[0::2], files[1::2]]


def test_a_bad_input_on_one_process_ends_the_launch_with_one_error_line(weights, shared_data, tmp_path):
    """Image 1 of 2 (rank 1's) is missing: rank 1 holds the error until the results meet on rank
    0, which reports it as a single process would; nobody waits for a process that has gone."""
    spec = _coco_subset(shared_data, tmp_path / "val2.json", 2, missing=1)
    (result,) = _maskrcnn((2, ["evaluate", "--weights", weights, "--data", spec, "--out", tmp_path]))
    assert result.returncode == 1
    assert not OUR_FRAME.search(result.stderr), result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    missing = shared_data / VAL / "missing.jpg"
    assert errors == [f"error: image file not found: {missing} (image id 802)"], result.stderr[-3000:]
    assert not (tmp_path / "metrics.json").exists()
