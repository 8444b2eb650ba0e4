"""A full disk: `train`, `predict` and `evaluate` writing into a 2 MB tmpfs each end with one
`error:` line naming the file they could not write, and leave nothing partial (no temporary file,
no cut-short file: what is there parses or decodes whole).

The tmpfs is mounted in a user and mount namespace of its own (`unshare -rm`), so the test needs
no privileges; where the kernel or a container forbids that, the tests are skipped with the
reason (only when the mount itself fails, under CI too). The three commands run inside the
namespace, one after the other in one Python process (`maskrcnn.cli.main`, as the command line
runs it: one torch import for the three), then the tmpfs's content is copied out (the mount ends
with the namespace) and checked here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import TINY_NET, train_args

SIZE = "2m"
COMMANDS = ("train", "predict", "evaluate")
# inside the namespace: a tmpfs per command, partly filled (KiB), then one Python process runs the
# three commands (`maskrcnn.cli.main`, one torch import for all), then everything is copied out
SCRIPT = f"""
root=$1 python=$2 driver=$3
for name in {" ".join(COMMANDS)}; do
    mount -t tmpfs -o size={SIZE} tmpfs "$root/disk/$name" || exit 97
done
fallocate -l 1800k "$root/disk/predict/filler" && fallocate -l 2000k "$root/disk/evaluate/filler" || exit 98
"$python" "$driver" "$root" || exit 99
rm -f "$root"/disk/*/filler
cp -a "$root/disk/." "$root/after/"
"""
# runs each command's argv (root/NAME.argv.json) in this process: root/NAME.rc and root/NAME.err
DRIVER = """
import contextlib, io, json, sys, traceback
from pathlib import Path
from maskrcnn.cli import main
root = Path(sys.argv[1])
for name in ("train", "predict", "evaluate"):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(json.loads((root / f"{name}.argv.json").read_text()))
        except BaseException:
            traceback.print_exc()
            rc = -1
    (root / f"{name}.rc").write_text(str(rc))
    (root / f"{name}.err").write_text(err.getvalue())
"""


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory, tiny_weights, shared_data) -> dict[str, tuple[int, str, Path, Path]]:
    """{command: (exit status, stderr, its tmpfs as the command saw it, the tmpfs's copy)} of
    train, predict and evaluate each writing into a full 2 MB tmpfs."""
    import torch

    from maskrcnn.config import apply_overrides, shapes_demo
    from maskrcnn.engine.checkpoint import save_model
    from maskrcnn.model import build_model

    root = tmp_path_factory.mktemp("full-disk")
    probe = root / "probe"
    probe.mkdir()
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no `unshare` here: cannot mount a small tmpfs without privileges")
    mount = [unshare, "-rm", "sh", "-c", f'mount -t tmpfs -o size={SIZE} tmpfs "{probe}"']
    tried = subprocess.run(mount, capture_output=True, text=True)
    if tried.returncode != 0:  # the mount really fails here (no user namespaces, seccomp, ...)
        pytest.skip(f"cannot mount a tmpfs in a user namespace: {tried.stderr.strip() or tried.returncode}")

    torch.manual_seed(0)
    names = ["square", "circle", "triangle"]
    save_model(build_model(apply_overrides(shapes_demo(), TINY_NET), class_names=names), root / "shapes.pt")
    disk = {name: root / "disk" / name for name in COMMANDS}
    for name in COMMANDS:
        disk[name].mkdir(parents=True)
    (root / "after").mkdir()
    train = train_args(
        disk["train"] / "run", "solver.max_iter=1", "solver.ims_per_batch=2", "data.num_workers=0"
    )
    train[train.index("shapes:16")] = "shapes:2"
    images = sorted((shared_data / "coco-mini" / "val2017").glob("*.jpg"))[:4]
    predict = [
        "predict",
        "--weights",
        str(tiny_weights),
        "--out",
        str(disk["predict"] / "out"),
        "--no-progress",
    ]
    predict += ["--save-masks", *map(str, images)]
    evaluate = ["evaluate", "--weights", str(root / "shapes.pt"), "--data", "shapes:2"]
    evaluate += ["--out", str(disk["evaluate"] / "eval"), "--no-progress"]
    for name, argv in zip(COMMANDS, (train, predict, evaluate)):
        (root / f"{name}.argv.json").write_text(json.dumps(argv))
    (root / "driver.py").write_text(DRIVER)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    command = [unshare, "-rm", "sh", "-c", SCRIPT, "sh", str(root), sys.executable, str(root / "driver.py")]
    done = subprocess.run(command, env=env, timeout=600)
    assert done.returncode == 0, f"the namespace script failed ({done.returncode})"
    return {
        name: (
            int((root / f"{name}.rc").read_text()),
            (root / f"{name}.err").read_text(),
            disk[name],
            root / "after" / name,
        )
        for name in COMMANDS
    }


def assert_one_error_and_nothing_partial(rc: int, stderr: str, disk: Path, after: Path) -> Path:
    """One `error: could not write FILE: No space left on device; ...` line, exit 1; FILE is not
    there; no temporary file; every JSON file parses, every picture decodes. -> FILE."""
    assert rc == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    pattern = rf"error: could not write ({re.escape(str(disk))}/\S+): No space left on device; "
    match = re.match(pattern, lines[0])
    assert match, lines[0]
    failed = after / Path(match.group(1)).relative_to(disk)
    assert not failed.exists()
    files = [p for p in after.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.startswith(".") or p.suffix in (".tmp", ".partial")]
    for path in files:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix in (".png", ".jpg"):
            with Image.open(path) as im:
                im.load()
    return failed


def test_train_on_a_full_disk(full_disk):
    rc, stderr, disk, after = full_disk["train"]
    failed = assert_one_error_and_nothing_partial(rc, stderr, disk, after)
    assert failed.name == "checkpoint.pt"  # ~7 MB with the optimizer state: it cannot fit in 2 MB
    assert stderr.strip().endswith("no part of it was left")
    assert (after / "run" / "config.yaml").is_file()  # the small files before it are whole
    assert all(json.loads(line) for line in (after / "run" / "metrics.jsonl").read_text().splitlines())


def test_predict_on_a_full_disk(full_disk):
    rc, stderr, disk, after = full_disk["predict"]
    failed = assert_one_error_and_nothing_partial(rc, stderr, disk, after)
    assert failed.parent.name in ("overlays", "masks")
    left = f"{disk}/out/predictions.json was not written; the files written before are complete"
    assert stderr.strip().endswith(left)
    assert not (after / "out" / "predictions.json").exists()
    assert list((after / "out" / "overlays").iterdir())  # the complete ones are there, and whole


def test_evaluate_on_a_full_disk(full_disk):
    rc, stderr, disk, after = full_disk["evaluate"]
    failed = assert_one_error_and_nothing_partial(rc, stderr, disk, after)
    assert failed.parent == after / "eval"


def test_a_video_is_renamed_into_place_only_when_complete(tmp_path):
    """Videos are written through a temporary file too: a failure half-way leaves no file."""
    import numpy as np

    from maskrcnn.video import VideoReader, VideoWriter

    frames = [np.full((48, 64, 3), 40 * k, dtype=np.uint8) for k in range(3)]
    path = tmp_path / "clip.mp4"
    with pytest.raises(RuntimeError, match="half-way"), VideoWriter(path, fps=10) as writer:
        for frame in frames[:2]:
            writer.write(frame)
        assert [p.name for p in tmp_path.iterdir()][0].startswith(".clip.mp4.")  # the temporary file
        raise RuntimeError("half-way")
    assert list(tmp_path.iterdir()) == []
    with VideoWriter(path, fps=10) as writer:
        for frame in frames:
            writer.write(frame)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    with VideoReader(path) as reader:
        assert len(list(reader)) == 3
