"""Training engine: exact resume after SIGKILL, multi-process DDP, learning-rate schedule."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

import maskrcnn
from maskrcnn.config import SolverConfig
from maskrcnn.data.shapes import ShapesDataset
from maskrcnn.engine.checkpoint import read_checkpoint
from maskrcnn.engine.optim import lr_factor
from tests.helpers import TINY_NET

TINY = [*TINY_NET, "train.log_period=1"]  # the tiny network on the shapes_demo preset


def train_cmd(out, *extra):
    return [
        sys.executable,
        "-m",
        "maskrcnn",
        "train",
        "--config",
        "shapes_demo",
        "--train-data",
        "shapes:16",
        "--out",
        str(out),
        "--no-progress",
        *TINY,
        *extra,
    ]


def env():
    e = dict(os.environ)
    e["OMP_NUM_THREADS"] = "1"  # the same thread count in every run: bitwise-reproducible CPU math
    return e


def test_resume_after_sigkill_gives_identical_weights(tmp_path):
    schedule = [
        "solver.max_iter=10",
        "solver.ims_per_batch=2",
        "solver.warmup_iters=3",
        "solver.steps=[6]",
        "train.checkpoint_period=4",
        "data.num_workers=1",
    ]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    subprocess.run(train_cmd(straight, *schedule), check=True, env=env(), timeout=300)

    proc = subprocess.Popen(train_cmd(interrupted, *schedule), env=env(), start_new_session=True)
    checkpoint = interrupted / "checkpoint.pt"
    deadline = time.time() + 240
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its data worker, with no chance to clean up
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (interrupted / "model_final.pt").exists()
    assert read_checkpoint(checkpoint)["train_state"]["iteration"] == 4

    subprocess.run(train_cmd(interrupted, *schedule, "--resume"), check=True, env=env(), timeout=300)
    a = read_checkpoint(straight / "model_final.pt")["model"]
    b = read_checkpoint(interrupted / "model_final.pt")["model"]
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"
    # the resumed log holds each iteration once (lines logged after the checkpoint were dropped) and
    # the same losses as the uninterrupted run
    logs = [
        [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (straight, interrupted)
    ]
    assert [r["iteration"] for r in logs[1] if "loss" in r] == list(range(1, 11))
    assert [r["loss"] for r in logs[1] if "loss" in r] == [r["loss"] for r in logs[0] if "loss" in r]
    start = read_checkpoint(straight / "checkpoint.pt")
    assert start["train_state"]["iteration"] == 10
    # the weights did change during training (the comparison is not vacuous)
    fresh = maskrcnn.build_model(maskrcnn.config.from_dict(start["config"]))
    assert not torch.equal(
        fresh.state_dict()["roi_heads.box.predictor.cls_score.weight"],
        a["roi_heads.box.predictor.cls_score.weight"],
    )


def test_torchrun_two_processes_trains_and_loads_in_one(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        *train_cmd(out)[1:],  # the same `-m maskrcnn train ...` arguments, run by torchrun
        "solver.max_iter=3",
        "solver.ims_per_batch=4",
        "data.num_workers=0",
    ]
    result = subprocess.run(cmd, env=env(), timeout=300, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # logged by rank 0 only, once per iteration
    model = maskrcnn.load(str(out / "model_final.pt"))
    assert model.class_names == ["square", "circle", "triangle"]
    sample = ShapesDataset(1, seed=5)[0]
    (det,) = model.predict([sample.image])
    assert det.masks.shape[1:] == sample.image.shape[1:]
    assert det.boxes.shape == (len(det), 4)


def test_lr_schedule_warmup_and_steps():
    solver = SolverConfig(base_lr=0.02, warmup_iters=100, warmup_factor=0.001, steps=(1000, 2000), gamma=0.1)
    assert lr_factor(0, solver) == 0.001
    assert abs(lr_factor(50, solver) - (0.001 * 0.5 + 0.5)) < 1e-12
    assert lr_factor(100, solver) == 1.0
    assert lr_factor(999, solver) == 1.0
    assert abs(lr_factor(1000, solver) - 0.1) < 1e-12
    assert abs(lr_factor(2500, solver) - 0.01) < 1e-12
    cosine = SolverConfig(schedule="cosine", warmup_iters=0, max_iter=100)
    assert lr_factor(0, cosine) == 1.0
    assert abs(lr_factor(50, cosine) - 0.5) < 1e-12
    assert lr_factor(100, cosine) < 1e-12
