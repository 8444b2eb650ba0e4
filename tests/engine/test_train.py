"""Training engine: exact resume after SIGKILL (the resumed process starts at the checkpoint), the
--resume modes, multi-process DDP (disjoint shards, averaged gradients), learning-rate schedule."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import maskrcnn
from maskrcnn.checkpoints import read_checkpoint
from maskrcnn.cli import build_parser, main
from maskrcnn.config import SCHEMA_VERSION, SolverConfig, resolve
from maskrcnn.data.shapes import ShapesDataset
from maskrcnn.engine.optim import lr_factor
from maskrcnn.engine.train import Trainer, train_loader
from tests.helpers import TINY_NET, single_thread_env, train_args


def train_cmd(out, *extra):
    return [sys.executable, "-m", "maskrcnn", *train_args(out, *extra)]


def iterations(lines: list[str]) -> list[int]:
    return [json.loads(line)["iteration"] for line in lines]


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
    subprocess.run(train_cmd(straight, *schedule), check=True, env=single_thread_env(), timeout=300)

    proc = subprocess.Popen(
        train_cmd(interrupted, *schedule), env=single_thread_env(), start_new_session=True
    )
    checkpoint = interrupted / "checkpoint.pt"
    deadline = time.time() + 240
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its data worker, with no chance to clean up
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (interrupted / "model_final.pt").exists()
    assert read_checkpoint(checkpoint)["train_state"]["iteration"] == 4
    # what the killed process logged up to its checkpoint (it may have logged iteration 5 too, or
    # half a line of it: a resumed run drops those)
    logged = (interrupted / "metrics.jsonl").read_text().splitlines()
    before_checkpoint = logged[:4]
    assert iterations(before_checkpoint) == [1, 2, 3, 4]

    # the default --resume auto: the same config, so it continues
    resumed = subprocess.run(
        train_cmd(interrupted, *schedule),
        env=single_thread_env(),
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {checkpoint} at iteration 4" in resumed.stdout.splitlines()
    assert "trained 10 iterations (resumed at iteration 4)" in resumed.stdout
    # the lines logged before the kill are kept as they were, byte for byte (they hold the measured
    # images/s, so a process that ran iterations 1-4 again would have rewritten them): the resumed
    # process logged iterations 5 to 10 only
    log = (interrupted / "metrics.jsonl").read_text().splitlines()
    assert log[:4] == before_checkpoint
    assert iterations(log[4:]) == list(range(5, 11))

    a = read_checkpoint(straight / "model_final.pt")["model"]
    b = read_checkpoint(interrupted / "model_final.pt")["model"]
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"
    # the same losses as the uninterrupted run, at every iteration
    straight_log = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [json.loads(line)["loss"] for line in log] == [r["loss"] for r in straight_log]
    start = read_checkpoint(straight / "checkpoint.pt")
    assert start["train_state"]["iteration"] == 10
    # the weights did change during training (the comparison is not vacuous)
    fresh = maskrcnn.build_model(maskrcnn.config.from_dict(start["config"]))
    assert not torch.equal(
        fresh.state_dict()["roi_heads.box.predictor.cls_score.weight"],
        a["roi_heads.box.predictor.cls_score.weight"],
    )
    assert not list(interrupted.glob(".*.tmp"))  # no temporary file of an interrupted write is left


def test_resume_modes_continue_the_same_run_and_refuse_another(tmp_path, capsys):
    def run(*argv: str) -> SimpleNamespace:  # the command line in this process (4 short runs)
        code = main(list(argv))
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    out = tmp_path / "run"
    one = ["solver.max_iter=1", "solver.ims_per_batch=2", "data.num_workers=0"]
    assert run(*train_args(out, *one)).returncode == 0
    checkpoint = out / "checkpoint.pt"
    # torch's own weights-only mode reads the whole training checkpoint (optimizer, schedule, every
    # rank's RNG state): nothing in it needs a global that could run code
    plain = torch.load(checkpoint, weights_only=True)
    assert plain["schema"] == SCHEMA_VERSION and {"optimizer", "scheduler", "ranks"} <= plain.keys()
    assert isinstance(plain["ranks"][0]["rng"]["numpy"]["keys"], torch.Tensor)
    saved = {name: (out / name).read_bytes() for name in ("checkpoint.pt", "config.yaml", "metrics.jsonl")}

    # auto (the default), another learning rate: refused, and nothing in the run directory changes
    other = run(*train_args(out, *one, "solver.base_lr=0.01"))
    assert other.returncode == 1
    assert other.stderr.splitlines() == [
        f"error: {checkpoint} is the checkpoint of another run (solver.base_lr: 0.001 -> 0.01); not "
        "overwriting it: use another --out, or --resume never to start this directory over, or "
        "--resume always to continue that run with this config"
    ]
    assert {name: (out / name).read_bytes() for name in saved} == saved

    # auto, the same run with another logging period (which does not change training): continued
    same = run(*train_args(out, *one, "train.log_period=5"))
    assert same.returncode == 0, same.stderr
    assert f"resumed from {checkpoint} at iteration 1" in same.stdout.splitlines()
    assert "trained 1 iterations (resumed at iteration 1)" in same.stdout

    # a bare --resume (the former flag) is `always`, also when an override follows it
    always = run(*train_args(out, *one, "--resume", "solver.base_lr=0.01"))
    assert always.returncode == 0, always.stderr
    assert (
        f"--resume always: continuing {checkpoint} although the config differs "
        "(solver.base_lr: 0.001 -> 0.01)" in always.stdout.splitlines()
    )
    assert read_checkpoint(checkpoint)["config"]["solver"]["base_lr"] == 0.01

    # never: starts again at iteration 0 with the new config
    never = run(*train_args(out, *one, "solver.base_lr=0.005", "--resume", "never"))
    assert never.returncode == 0, never.stderr
    assert "resumed" not in never.stdout and "trained 1 iterations;" in never.stdout
    assert iterations((out / "metrics.jsonl").read_text().splitlines()) == [1]
    assert read_checkpoint(checkpoint)["config"]["solver"]["base_lr"] == 0.005


def test_resume_option_values(capsys):
    parser = build_parser()
    args = ["train", "--train-data", "shapes:4", "--out", "run", "solver.max_iter=3"]
    assert parser.parse_args(args).resume == "auto"
    assert parser.parse_args([*args, "--resume"]).resume == "always"
    assert parser.parse_args([*args, "--resume", "never"]).resume == "never"
    # an override after a bare --resume is an override (argparse hands it to --resume first)
    late = parser.parse_args([*args[:-1], "--resume", "solver.max_iter=3"])
    assert late.resume == "always" and late.overrides_after_resume == ["solver.max_iter=3"]
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([*args, "--resume", "sometimes"])
    assert exit_.value.code == 2
    assert (
        "argument --resume: invalid choice 'sometimes' (choose from auto, always, never)"
        in capsys.readouterr().err
    )


# one SGD step of 4 images over 2 processes: no warmup (the full learning rate), no flips, clipping
# at a norm the gradients do not reach (clipped, the mean and the sum would give the same step)
ONE_DDP_STEP = [
    "solver.max_iter=1",
    "solver.ims_per_batch=4",
    "solver.optimizer=sgd",
    "solver.base_lr=0.02",
    "solver.warmup_iters=0",
    "solver.clip_grad_norm=1000",
    "data.hflip_prob=0",
    "data.num_workers=0",
]


def test_torchrun_two_processes_average_gradients_over_disjoint_shards(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        *train_cmd(out, *ONE_DDP_STEP)[1:],  # the same `-m maskrcnn train ...` arguments, run by torchrun
    ]
    result = subprocess.run(cmd, env=single_thread_env(), timeout=300, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert iterations((out / "metrics.jsonl").read_text().splitlines()) == [1]  # rank 0 logs, once
    trained = read_checkpoint(out / "model_final.pt")["model"]

    # What DDP promises, computed in this one process: each rank's gradient on its own batch (its
    # shard, its sampling seed), their mean, one SGD step of the trainer's optimizer with its
    # clipping, from the same initial weights.
    cfg = resolve("shapes_demo", [*TINY_NET, *ONE_DDP_STEP])  # as the command line resolves it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    trainer = Trainer(cfg, train_data="shapes:16", out_dir=tmp_path / "unused", progress=False)
    try:
        loaders = [train_loader(trainer.cfg, trainer.dataset, rank=r, world_size=2) for r in (0, 1)]
        shards = [{i for batch in loader.batch_sampler.batches(0) for i in batch} for loader in loaders]
        assert len(shards[0]) == len(shards[1]) == 8 and not shards[0] & shards[1]  # disjoint halves
        model = trainer.model.train()
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        grads, rank0_buffers = [], {}
        for rank, loader in enumerate(loaders):
            loader.set_epoch(0)
            images, targets, samples = next(iter(loader))
            assert len(images) == 2
            torch.manual_seed(cfg.train.seed + 1000 * rank)  # the rank's sampling seed, as the trainer's
            model.zero_grad(set_to_none=True)
            sum(model(images, targets).values()).backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            if rank == 0:  # BatchNorm statistics: rank 0's model (the one saved) saw rank 0's batch
                rank0_buffers = {n: b.clone() for n, b in model.named_buffers()}
        assert grads[0].keys() == grads[1].keys()
        for name, p in model.named_parameters():
            p.grad = (grads[0][name] + grads[1][name]) / 2 if name in grads[0] else None
        norm = nn.utils.clip_grad_norm_(model.parameters(), trainer.cfg.solver.clip_grad_norm)
        trainer.optimizer.step()
        for name, b in model.named_buffers():
            b.copy_(rank0_buffers[name])
        expected = model.state_dict()
    finally:
        trainer.close()
        torch.set_num_threads(threads)

    assert trained.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(trained[key], expected[key], rtol=1e-5, atol=1e-7, msg=key)
    # not vacuous: the step moved the weights far beyond that tolerance, the two ranks' gradients
    # differ (one rank's alone would give other weights), and clipping did not bind (a sum instead
    # of the mean would give other weights too)
    moved = max((expected[k] - initial[k]).abs().max().item() for k in grads[0])
    assert moved > 1e-3
    g0, g1 = (torch.cat([g[n].flatten() for n in sorted(g)]) for g in grads)
    assert (g0 - g1).norm() > 0.2 * (g0 + g1).norm() / 2
    assert 2 * norm < trainer.cfg.solver.clip_grad_norm, norm
    # and the model of several processes loads and predicts in one
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
