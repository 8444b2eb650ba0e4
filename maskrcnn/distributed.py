"""Several processes of one torchrun launch: the process group, each process's device, its share
of the work, the gathering of the results on rank 0, and one progress bar for the whole job.

`torchrun --nproc_per_node N [--nnodes M ...] -m maskrcnn COMMAND ...` starts N×M processes and
gives each RANK (0 .. WORLD_SIZE-1, over all nodes), WORLD_SIZE and LOCAL_RANK (its index on its
node). `init_distributed(device)` joins them in PyTorch's process group: NCCL when the device is a
GPU (each process on `cuda:LOCAL_RANK`, `process_device`), gloo on the CPU.

Training (`maskrcnn.engine.train`) splits every batch over the processes (DistributedDataParallel).
Inference (`maskrcnn predict`, `maskrcnn evaluate`) splits the batches of its inputs: batch k goes
to rank k mod WORLD_SIZE (`my_positions`), so every batch a process runs is one that a single
process would run, with the same images and so the same detections. Each process sends its
results to rank 0 (`gather_in_order`), which puts them back into input order and writes the one
results file. `JobProgress` shows one bar, on rank 0, counting the whole job's finished inputs.

Restarts (`torchrun --max-restarts K`): when one worker dies, torchrun stops the others and starts
them all again (training continues from the run's last checkpoint). The restarted workers would
meet through the launcher's TCPStore (TORCHELASTIC_USE_AGENT_STORE), which lives as long as the
launcher and still holds the keys the previous workers wrote, under the same names the new ones
use: a restarted worker can read a dead peer's address there and try to connect to it instead of
its new peer (PyTorch issue 135712 reports the same race under NCCL;
`TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1` in torchrun's environment avoids it too). So when torchrun
may restart the workers, `init_distributed` has rank 0 open a store of its own for this attempt on
a free port and publish the port and a random token in the launcher's store; the other ranks retry
until they reach a live store that holds that token. torchrun stops every worker of an attempt
before it starts the next ones, so a live store holding the published token is this attempt's.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .errors import UserError, is_user_error, one_line

__all__ = [
    "DistInfo",
    "HeldError",
    "JobProgress",
    "Share",
    "all_finite",
    "barrier",
    "cleanup",
    "gather_in_order",
    "init_distributed",
    "my_positions",
    "process_device",
    "restartable",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> DistInfo:
    """Join the processes of a torchrun launch (NCCL for a CUDA device, else gloo); one process
    when WORLD_SIZE is unset or 1. Workers that torchrun may start again meet through a store of
    their own attempt (see the module docstring)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(
        rank=int(os.environ["RANK"]), world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", 0))
    )
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        if restartable():
            store = _attempt_store(info.rank, world)
            dist.init_process_group(backend=backend, store=store, rank=info.rank, world_size=world)
        else:
            dist.init_process_group(backend=backend)
    return info


# ---- workers that torchrun may start again: a store of this attempt ----------------------------

_ATTEMPT_KEY = "maskrcnn/attempt_store"  # in the launcher's store: "PORT TOKEN" of rank 0's store
_STORE_TIMEOUT = timedelta(minutes=10)


def restartable() -> bool:
    """Whether this process is a torchrun worker that torchrun may start again."""
    return (
        os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0
        and int(os.environ.get("WORLD_SIZE", "1")) > 1
    )


def _attempt_store(rank: int, world_size: int) -> dist.Store:
    """Rank 0: a new store, published in the launcher's; the others: the published store once it
    answers with its token (module docstring)."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    launcher = dist.TCPStore(host, port, world_size, is_master=False, timeout=_STORE_TIMEOUT)
    if rank == 0:
        store = dist.TCPStore(
            host, 0, world_size, is_master=True, timeout=_STORE_TIMEOUT, wait_for_workers=False
        )
        token = uuid.uuid4().hex
        store.set("token", token)
        launcher.set(_ATTEMPT_KEY, f"{store.port} {token}")
        return store
    deadline = time.monotonic() + _STORE_TIMEOUT.total_seconds()
    while True:
        published, token = launcher.get(_ATTEMPT_KEY).decode().split()  # waits until rank 0 publishes
        try:
            store = dist.TCPStore(
                host, int(published), world_size, is_master=False, timeout=timedelta(seconds=5)
            )
            if store.get("token").decode() == token:
                return store
        except RuntimeError:  # a store of a previous attempt: its rank 0 is gone
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"rank {rank}: rank 0's store of this attempt did not answer in {_STORE_TIMEOUT}"
            )
        time.sleep(0.2)


def process_device(device: str, info: DistInfo) -> str:
    """The device this process runs on: `cuda:LOCAL_RANK` for any CUDA device under torchrun
    (one GPU per process), else `device` as given."""
    if info.enabled and device.startswith("cuda"):
        return f"cuda:{info.local_rank}"
    return device


def all_finite(value: torch.Tensor, info: DistInfo) -> bool:
    """True when `value` is finite on every rank (so all ranks skip a bad step together)."""
    flag = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
    if info.enabled:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


# ---- inference: shares of the work, results back in order --------------------------------------


def my_positions(count: int, info: DistInfo) -> range:
    """This process's share of `count` work units (batches, videos): every WORLD_SIZE-th, from its
    rank on (all of them in a single process)."""
    return range(info.rank, count, info.world_size)


@dataclass
class Share:
    """What one process did: the inputs it ran (their names, in order), where, in how long."""

    rank: int
    device: str
    inputs: list[str]
    seconds: float
    host: str = ""

    def as_dict(self) -> dict:
        return {
            "rank": self.rank,
            "host": self.host,
            "device": self.device,
            "inputs": self.inputs,
            "seconds": round(self.seconds, 3),
        }


class HeldError:
    """Context manager for a process's share of the work. Under torchrun a user error (bad input:
    `maskrcnn.errors.is_user_error`) raised in it is held, not raised, so that this process still
    meets the others in `gather_in_order`, where rank 0 raises it: the launch ends with one
    `error:` line and no process waits for one that has gone. A single process raises at once, and
    other exceptions (bugs) always propagate."""

    def __init__(self, info: DistInfo) -> None:
        self.info = info
        self.message: str | None = None

    def __enter__(self) -> HeldError:
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if error is not None and self.info.enabled and is_user_error(error):
            self.message = one_line(error)
            return True
        return False


def gather_in_order(
    parts: dict[int, Any], share: Share, info: DistInfo, *, held: HeldError | None = None
) -> tuple[list[Any], list[Share]] | None:
    """Every process's {position: part} -> on rank 0: (all parts sorted by position, the processes'
    shares by rank); None on the other ranks. A single process gets its own parts back in order.

    The parts travel as pickled objects (`torch.distributed.gather_object`), through the GPU under
    NCCL. When processes held errors (`held`), rank 0 raises the one met first in input order (a
    process stops at the part that failed, its last one) as a UserError instead."""
    share.host = share.host or socket.gethostname()
    if not info.enabled:
        return [parts[k] for k in sorted(parts)], [share]
    failed = None if held is None or held.message is None else (max(parts, default=-1), held.message)
    gathered: list | None = [None] * info.world_size if info.is_main else None
    dist.gather_object((parts, share, failed), gathered, dst=0)
    if gathered is None:
        return None
    errors = sorted(error for _, _, error in gathered if error is not None)
    if errors:
        raise UserError(errors[0][1])
    merged: dict[int, Any] = {}
    for process_parts, _, _ in gathered:
        merged.update(process_parts)
    return [merged[k] for k in sorted(merged)], [s for _, s, _ in gathered]


class JobProgress:
    """One tqdm bar counting the whole job's finished units, drawn by rank 0 only (when `show`).

    In a single process it is a plain bar. Under torchrun every process adds what it finished to a
    counter in the process group's c10d store (`update`), and a thread of rank 0 redraws the bar
    from that counter a few times a second until `close()`. Nothing ever waits for the counter to
    reach the total, so uneven shares (or a process that failed) cannot hold anyone up."""

    _jobs = itertools.count()  # every process creates its bars in the same order: the same keys

    def __init__(self, *, total: int, desc: str, unit: str, show: bool, info: DistInfo):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not (show and info.is_main))
        self.store = dist.distributed_c10d._get_default_store() if info.enabled else None
        self.key = f"maskrcnn/progress/{next(JobProgress._jobs)}"
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        if self.store is not None and not self.bar.disable:
            self.thread = threading.Thread(target=self._poll, name="maskrcnn-progress", daemon=True)
            self.thread.start()

    def update(self, n: int) -> None:
        if self.store is None:
            self.bar.update(n)
        else:  # the store serializes its clients' operations: safe beside the polling thread
            self.store.add(self.key, n)

    def _refresh(self) -> None:
        done = self.store.add(self.key, 0)  # type: ignore[union-attr]
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def _poll(self) -> None:
        while not self.stop.wait(0.25):
            self._refresh()

    def close(self) -> None:
        if self.thread is not None:
            self.stop.set()
            self.thread.join()
            self.thread = None
            self._refresh()
        self.bar.close()

    def __enter__(self) -> JobProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
