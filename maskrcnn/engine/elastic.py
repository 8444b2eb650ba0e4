"""The process group of workers that torchrun may start again (`torchrun --max-restarts K`).

When one worker dies, torchrun stops the others and starts them all again; with the default
`--resume auto` they continue from the run's last checkpoint. The restarted workers meet through
the launcher's TCPStore (TORCHELASTIC_USE_AGENT_STORE), which lives as long as the launcher and
still holds the keys the previous workers wrote, under the same names the new ones use: a
restarted worker can read a dead peer's address there and try to connect to it instead of its new
peer (PyTorch issue 135712 reports the same race under NCCL; `TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`
in torchrun's environment avoids it too).

So when torchrun may restart the workers, rank 0 opens a store of its own for this attempt on a free
port and publishes the port and a random token in the launcher's store; the other ranks retry
until they reach a live store that holds that token. torchrun stops every worker of an attempt
before it starts the next ones, so a live store holding the published token is this attempt's.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta

import torch
import torch.distributed as dist

_KEY = "maskrcnn/attempt_store"  # in the launcher's store: "PORT TOKEN" of rank 0's store
_TIMEOUT = timedelta(minutes=10)


def restartable() -> bool:
    """Whether this process is a torchrun worker that torchrun may start again."""
    return (
        os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0
        and int(os.environ.get("WORLD_SIZE", "1")) > 1
    )


def _attempt_store(rank: int, world_size: int) -> dist.Store:
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    launcher = dist.TCPStore(host, port, world_size, is_master=False, timeout=_TIMEOUT)
    if rank == 0:
        store = dist.TCPStore(host, 0, world_size, is_master=True, timeout=_TIMEOUT, wait_for_workers=False)
        token = uuid.uuid4().hex
        store.set("token", token)
        launcher.set(_KEY, f"{store.port} {token}")
        return store
    deadline = time.monotonic() + _TIMEOUT.total_seconds()
    while True:
        published, token = launcher.get(_KEY).decode().split()  # waits until rank 0 publishes
        try:
            store = dist.TCPStore(
                host, int(published), world_size, is_master=False, timeout=timedelta(seconds=5)
            )
            if store.get("token").decode() == token:
                return store
        except RuntimeError:  # a store of a previous attempt: its rank 0 is gone
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank {rank}: rank 0's store of this attempt did not answer in {_TIMEOUT}")
        time.sleep(0.2)


def join_restartable_group(device: str) -> None:
    """Initialize the default process group through a store of this attempt (see the module) when
    torchrun may restart the workers; nothing otherwise (then `init_distributed` joins as usual)."""
    if not restartable() or dist.is_initialized():
        return
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    store = _attempt_store(rank, world_size)
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size)
