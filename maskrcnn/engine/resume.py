"""Resuming a run where it stopped: which checkpoint to continue from (`--resume auto|always|never`)
and the state a training checkpoint holds so that the resumed run ends with the same weights as an
uninterrupted one: `save_training_checkpoint` writes it, `resume_training` continues from it
(model, optimizer, scheduler, this rank's RNG state and data position).

A run directory belongs to one run: one config and one training-data spec. `auto` (the default of
`maskrcnn train`) continues from RUN/checkpoint.pt when that checkpoint is of the same run, starts
from iteration 0 when there is none, and refuses a checkpoint of another run instead of
overwriting it (a UserError naming what differs: use another --out, `--resume never` to start this
directory over, or `--resume always` to continue that run with the changed config). Only settings
that do not change the trained weights may differ (`NOT_TRAINING`: the logging, checkpoint and
evaluation periods, the number of data-loading workers, the device name). With `auto`, the workers
that `torchrun --max-restarts K` starts again after one of them died continue from the last
checkpoint by themselves.

Exactness with several processes: every rank draws its own random numbers (the RPN and RoI-head
sampling) and reads its own shard of the data, so a checkpoint holds every rank's RNG state and data
position (`rank_states`, gathered to rank 0 when saving) and each rank restores its own. Rank 0
alone reads the checkpoint and sends it to the others (`agreed_checkpoint`), so they need no access
to the run directory: without a shared filesystem, the run directory lives on rank 0's machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..checkpoints import read_checkpoint
from ..config import Config, from_dict, to_dict
from ..distributed import DistInfo, barrier
from ..errors import UserError
from .checkpoint import atomic_save, model_state

RESUME_MODES = ("auto", "always", "never")

# what a training checkpoint holds besides the model (`save_training_checkpoint`)
TRAINING_ENTRIES = ("optimizer", "scheduler", "train_state")

# config keys that do not change the trained weights: a checkpoint with other values is the same run
NOT_TRAINING = frozenset(
    {"train.log_period", "train.checkpoint_period", "train.eval_period", "train.device", "data.num_workers"}
)


@dataclass
class TrainState:
    iteration: int = 0  # optimizer steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already consumed (the same count on every rank)
    nonfinite_total: int = 0
    nonfinite_in_a_row: int = 0


def resume_mode(value: str | bool) -> str:
    """`auto`, `always` or `never`; True (the former `resume=True`) is `always`, False `never`."""
    if value is True or value is False:
        return "always" if value else "never"
    if value not in RESUME_MODES:
        raise UserError(f"resume must be one of {', '.join(RESUME_MODES)}, got {value!r}")
    return value


# ---------------------------------------------------------------- the random state of one process


def rng_state(device: torch.device) -> dict:
    """The generators this process draws from: torch (CPU and `device`'s CUDA one), numpy, python;
    as tensors, numbers and lists, so that a checkpoint holding it loads with weights_only=True."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore `rng_state`'s generators; the tuples of older checkpoints are read too."""
    torch.set_rng_state(state["torch"])
    saved = state["numpy"]
    if isinstance(saved, dict):
        keys = saved["keys"].numpy().astype(np.uint32)
        saved = (saved["name"], keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"])
    np.random.set_state(saved)
    python_state = state["python"]
    if isinstance(python_state, dict):
        python_state = (python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"])
    random.setstate(tuple(python_state))
    cuda = state.get("cuda")
    if isinstance(cuda, list):  # older checkpoints held every device's state (get_rng_state_all)
        cuda = cuda[device.index or 0] if device.type == "cuda" and (device.index or 0) < len(cuda) else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


# ---------------------------------------------------------------- saving: every rank's state


def rank_states(state: TrainState, *, device: torch.device, info: DistInfo) -> list[dict] | None:
    """Every rank's {rng, epoch, batch_in_epoch}, in rank order, on rank 0 (None on the others).
    A collective: every rank calls it (`torch.distributed.gather_object`)."""
    mine = {"rng": rng_state(device), "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch}
    if not info.enabled:
        return [mine]
    gathered: list | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(mine, gathered, dst=0)
    return gathered


# ---------------------------------------------------------------- resuming: which checkpoint


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_differences(ckpt: dict, cfg: Config, *, train_data: str | None) -> list[str]:
    """What makes the run of `ckpt` another run than (cfg, train_data): 'key: saved -> current' for
    every config value that changes training, and the training-data spec when both are known."""
    saved = _flat(to_dict(from_dict(ckpt["config"], Config)))  # defaults for keys it predates
    current = _flat(to_dict(cfg))
    diffs = [
        f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
        for key in sorted(saved.keys() | current.keys())
        if key not in NOT_TRAINING and saved.get(key) != current.get(key)
    ]
    was = ckpt.get("train_data")
    if isinstance(was, str) and isinstance(train_data, str) and was != train_data:
        diffs.append(f"--train-data: {was!r} -> {train_data!r}")
    return diffs


def choose_checkpoint(
    mode: str, path: Path, *, cfg: Config, train_data: str | None
) -> tuple[dict | None, list[str]]:
    """(the checkpoint to continue from, or None to start at iteration 0; lines to print) for
    `mode`, read on rank 0. `auto` refuses a checkpoint of another run with a UserError."""
    if not path.is_file():
        return None, []
    if mode == "never":
        return None, [f"--resume never: starting at iteration 0; {path} will be replaced"]
    ckpt = read_checkpoint(path, map_location="cpu")
    lacking = [key for key in TRAINING_ENTRIES if not isinstance(ckpt.get(key), dict)]
    if lacking:
        raise UserError(
            f"{path}: holds no training state (no {lacking[0]!r} entry), so no run continues from it: "
            "use another --out, or --resume never to start this directory over"
        )
    try:
        diffs = run_differences(ckpt, cfg, train_data=train_data)
    except UserError as e:  # a config this package cannot read
        raise UserError(f"{path}: {e}") from None
    if not diffs:
        return ckpt, []
    shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
    if mode == "auto":
        raise UserError(
            f"{path} is the checkpoint of another run ({shown}); not overwriting it: use another "
            "--out, or --resume never to start this directory over, or --resume always to continue "
            "that run with this config"
        )
    return ckpt, [f"--resume always: continuing {path} although the config differs ({shown})"]


def agreed_checkpoint(
    mode: str, path: Path, *, cfg: Config, train_data: str | None, info: DistInfo
) -> dict | None:
    """`choose_checkpoint` on rank 0, its answer (or its error) sent to every rank
    (`torch.distributed.broadcast_object_list`): the other ranks never read the run directory, and
    a refusal stops every rank instead of leaving the others waiting. Rank 0 prints the notes."""
    found, notes, error = None, [], None
    if info.is_main:
        try:
            found, notes = choose_checkpoint(mode, path, cfg=cfg, train_data=train_data)
        except Exception as e:  # sent to the other ranks before it is raised here
            error = e
    if info.enabled:
        box = [(found, None if error is None else str(error))]
        dist.broadcast_object_list(box, src=0)
        found, error_text = box[0]
        if error is None and error_text is not None:
            raise UserError(f"rank 0 could not resume: {error_text}")
    if error is not None:
        raise error
    for line in notes:
        print(line, flush=True)
    return found


def restore_rank_state(
    ckpt: dict, state: TrainState, *, rank: int, world_size: int, device: torch.device, seed: int
) -> str | None:
    """Give this rank its saved RNG state and data position; returns a note when the checkpoint was
    written by another number of processes (the run then continues, but not bit-identically)."""
    ranks = ckpt.get("ranks") or [  # checkpoints before `ranks`: rank 0's state only
        {"rng": ckpt["rng"], "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch}
    ]
    if len(ranks) == world_size:
        mine = ranks[rank]
        set_rng_state(mine["rng"], device)
        state.epoch, state.batch_in_epoch = mine["epoch"], mine["batch_in_epoch"]
        return None
    torch.manual_seed(seed + 1000 * rank + state.iteration)  # a new stream per rank
    return (
        f"the checkpoint holds the random state of {len(ranks)} process(es), this run has "
        f"{world_size}: it continues at iteration {state.iteration}, but not bit-identically to a "
        f"run with {len(ranks)}"
    )


# ---------------------------------------------------------------- writing and reading a run's checkpoint


def save_training_checkpoint(
    path: Path,
    *,
    model,
    optimizer,
    scheduler,
    state: TrainState,
    train_data: str | None,
    device: torch.device,
    info: DistInfo,
) -> None:
    """Write a training checkpoint (atomically, on rank 0): the model's checkpoint dict, optimizer,
    scheduler, `state`, every rank's RNG state and data position (`rank_states`), the data spec."""
    ranks = rank_states(state, device=device, info=info)
    if info.is_main:
        atomic_save(
            {
                **model_state(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "train_state": vars(state).copy(),
                "rng": ranks[0]["rng"],  # what single-process checkpoints held before `ranks`
                "ranks": ranks,
                "train_data": train_data,
            },
            path,
        )
    barrier(info)


def resume_training(
    mode: str,
    path: Path,
    *,
    model,
    optimizer,
    scheduler,
    cfg: Config,
    train_data: str | None,
    device: torch.device,
    info: DistInfo,
) -> TrainState | None:
    """Continue from the checkpoint at `path` as `mode` says (`agreed_checkpoint`): model, optimizer,
    scheduler and this rank's RNG state and data position restored; -> the run's TrainState, or None
    when it starts over. A checkpoint that does not fit this model or optimizer -> UserError."""
    found = agreed_checkpoint(mode, path, cfg=cfg, train_data=train_data, info=info)
    if found is None:
        return None
    try:
        model.load_state_dict(found["model"])
    except RuntimeError as e:  # --resume always with another architecture
        first = str(e).strip().splitlines()[0]
        raise UserError(
            f"{path}: its model does not fit this config ({first}); use another --out or --resume never"
        ) from None
    try:
        optimizer.load_state_dict(found["optimizer"])
        scheduler.load_state_dict(found["scheduler"])
        state = TrainState(**found["train_state"])
    except (ValueError, KeyError, TypeError) as e:  # another optimizer, or a damaged state
        raise UserError(
            f"{path}: its optimizer or schedule state does not fit this run "
            f"({type(e).__name__}: {e}); use another --out or --resume never"
        ) from None
    note = restore_rank_state(
        found, state, rank=info.rank, world_size=info.world_size, device=device, seed=cfg.train.seed
    )
    if info.is_main:
        print(f"resumed from {path} at iteration {state.iteration}", flush=True)
        if note:
            print(f"note: {note}", flush=True)
    return state
