"""Ctrl-C: SIGINT to a real `maskrcnn predict` / `maskrcnn train` process ends it with the one line
`interrupted` on stderr and exit status 130, no traceback; what was complete stays whole, nothing
partial is left, and the same command run again (in this process) then succeeds."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from maskrcnn.cli import main
from tests.helpers import single_thread_env, train_args


def interrupt_when(command: list[str], ready, *, timeout: float = 240) -> tuple[int, str]:
    """Start `python -m maskrcnn COMMAND`, send SIGINT once `ready()` holds -> (status, stderr)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "maskrcnn", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=single_thread_env(),
        # as from a terminal: Python turns SIGINT into KeyboardInterrupt only if it starts with the
        # default disposition, and a test runner's workers (pytest-xdist) ignore SIGINT, which
        # their children would inherit
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"it ended before the interrupt: {process.stderr.read()}"
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


def no_partial_files(folder: Path) -> None:
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.startswith(".") and p.suffix in (".tmp", ".partial")]
    for path in files:
        if path.suffix in (".png", ".jpg"):
            with Image.open(path) as im:
                im.load()


def test_ctrl_c_during_predict(tiny_weights, shared_data, tmp_path):
    images = sorted((shared_data / "coco-mini" / "val2017").glob("*.jpg"))[:40]
    out = tmp_path / "out"
    command = ["predict", "--weights", str(tiny_weights), "--out", str(out), "--no-progress", "--save-masks"]
    overlays = out / "overlays"

    def two_overlays() -> bool:
        return overlays.is_dir() and len([p for p in overlays.iterdir() if not p.name.startswith(".")]) >= 2

    rc, stderr = interrupt_when([*command, *map(str, images)], two_overlays)
    assert (rc, stderr) == (130, "interrupted\n")
    assert not (out / "predictions.json").exists()
    no_partial_files(out)
    # the same command again completes (over what the first run left)
    assert main([*command, str(images[0])]) == 0  # in this process: no second torch import
    records = json.loads((out / "predictions.json").read_text())
    assert records and {r["file_name"] for r in records} == {images[0].name}


def test_ctrl_c_during_train_then_the_run_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    command = train_args(
        out,
        "solver.max_iter=3",
        "solver.ims_per_batch=2",
        "data.num_workers=0",
        "train.checkpoint_period=1",
    )
    rc, stderr = interrupt_when(command, (out / "checkpoint.pt").is_file)
    assert (rc, stderr) == (130, "interrupted\n")
    no_partial_files(out)
    assert main(command) == 0  # the same command, in this process, continues the run
    assert re.search(r"resumed from .*checkpoint.pt at iteration [1-3]", capsys.readouterr().out)
    assert (out / "model_final.pt").is_file()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    iterations = [json.loads(line).get("iteration") for line in lines]
    assert iterations[-1] == 3 and len(set(iterations)) == len(iterations)
