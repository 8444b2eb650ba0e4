"""Training across machines and through a worker's death, with torchrun itself: two launchers of one
process each, joined by a c10d rendezvous as two machines would be, train the same weights as one
launcher of two processes; and a job under `--max-restarts 1` whose rank-0 worker is killed (SIGKILL)
mid-run starts its workers again, they continue from the last checkpoint by themselves, and the job
ends with the weights of the uninterrupted run. All on the CPU (gloo), the tiny model, 6 iterations.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from maskrcnn.checkpoints import read_checkpoint
from tests.helpers import single_thread_env, train_args

SCHEDULE = [
    "solver.max_iter=6",
    "solver.ims_per_batch=4",
    "solver.warmup_iters=2",
    "solver.steps=[4]",
    "train.checkpoint_period=2",
    "data.num_workers=0",
]


def torchrun(*launcher: str, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *launcher,
        "-m",
        "maskrcnn",
        *train_args(out, *SCHEDULE),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(run: Path) -> dict:
    return read_checkpoint(run / "model_final.pt")["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


def logged_iterations(run: Path) -> list[int]:
    return [json.loads(line)["iteration"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_machine(tmp_path_factory) -> Path:
    """The uninterrupted run: one launcher, two processes."""
    out = tmp_path_factory.mktemp("one-machine") / "run"
    cmd = torchrun("--standalone", "--nproc_per_node", "2", out=out)
    result = subprocess.run(cmd, env=single_thread_env(), timeout=300, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert logged_iterations(out) == [1, 2, 3, 4, 5, 6]
    return out


def test_two_machines_train_the_weights_of_one_machine_with_two_processes(tmp_path, one_machine):
    out = tmp_path / "run"  # both launchers are given it; only global rank 0 writes there
    endpoint = f"127.0.0.1:{free_port()}"
    common = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint]
    logs = [tmp_path / f"node{n}.log" for n in (0, 1)]
    launchers = []
    for node, log in enumerate(logs):
        with open(log, "w") as f:
            cmd = torchrun(*common, "--rdzv-id", "two-machines", "--node-rank", str(node), out=out)
            launchers.append(
                subprocess.Popen(cmd, env=single_thread_env(), stdout=f, stderr=subprocess.STDOUT)
            )
    try:
        codes = [p.wait(timeout=300) for p in launchers]
    finally:
        for p in launchers:
            if p.poll() is None:
                p.kill()
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n".join(o[-2000:] for o in outputs)
    # one job of two processes over the two launchers: one of them holds rank 0 and says so
    holders = [o for o in outputs if re.search(r"^2 processes; rank 0 on host \S+ writes ", o, re.M)]
    assert len(holders) == 1, outputs
    assert logged_iterations(out) == [1, 2, 3, 4, 5, 6]
    assert_same_weights(weights(out), weights(one_machine))


def worker_pids(launcher: int) -> dict[int, int]:
    """{RANK: pid} of the worker processes a torchrun launcher started (its children, from /proc)."""
    workers = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # after "pid (name) state": the parent pid
        rank = [v[5:] for v in environ if v.startswith(b"RANK=")]
        if parent == launcher and rank:
            workers[int(rank[0])] = int(entry.name)
    return workers


def test_a_killed_worker_restarts_and_the_job_ends_with_the_uninterrupted_weights(tmp_path, one_machine):
    out = tmp_path / "run"
    log = tmp_path / "torchrun.log"
    cmd = torchrun("--standalone", "--nproc_per_node", "2", "--max-restarts", "1", out=out)
    with open(log, "w") as f:
        job = subprocess.Popen(cmd, env=single_thread_env(), stdout=f, stderr=subprocess.STDOUT)
    try:
        checkpoint = out / "checkpoint.pt"
        deadline = time.time() + 240
        while not checkpoint.exists() and job.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        workers = worker_pids(job.pid)
        assert sorted(workers) == [0, 1], log.read_text()[-3000:]
        at = read_checkpoint(checkpoint)["train_state"]["iteration"]
        assert at in (2, 4)  # the job is mid-run: 6 iterations
        os.kill(workers[0], signal.SIGKILL)  # rank 0, the one writing the run directory
        code = job.wait(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
    output = log.read_text()
    assert code == 0, output[-3000:]
    assert "exitcode: -9" in output  # torchrun saw the worker die by the signal...
    resumed = re.findall(rf"^resumed from {re.escape(str(checkpoint))} at iteration (\d+)$", output, re.M)
    assert len(resumed) == 1 and int(resumed[0]) >= at, output[-3000:]  # ...and the restarted job resumed
    assert logged_iterations(out) == [1, 2, 3, 4, 5, 6]  # each iteration logged once
    assert_same_weights(weights(out), weights(one_machine))
