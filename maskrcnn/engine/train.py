"""Training loop: iteration-based SGD/AdamW with warmup and decay, optional bf16 autocast,
gradient clipping, non-finite-loss detection, periodic evaluation and atomic checkpoints that
resume exactly (model, optimizer, scheduler, data position and RNG state).

Run directory layout:
    config.yaml        the full config used
    checkpoint.pt      latest training checkpoint (atomic), what --resume reads
    metrics.jsonl      one JSON object per logged iteration / evaluation
    training_curves.png  losses, learning rate and AP from metrics.jsonl (matplotlib), at the end
    tensorboard/       the same scalars as TensorBoard events, when tensorboard is installed
    model_final.pt     the trained model, loadable with `maskrcnn.load`
    eval/              the final evaluation report (when validation data is given)
"""

from __future__ import annotations

import json
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import Config, replace, save_config
from ..data.dataset import check_dataset, dataset_keypoints
from ..data.keypoint_meta import keypoint_flip_map, oks_sigmas, with_dataset_keypoints
from ..data.loader import build_train_loader
from ..data.specs import build_dataset
from ..data.transforms import Compose, HorizontalFlip, LargeScaleJitter
from ..distributed import DistInfo, all_finite, barrier, cleanup, init_distributed
from ..errors import UserError
from ..files import atomic_write_text
from ..model import build_model
from .checkpoint import atomic_save, model_state, read_checkpoint
from .data_check import check_training_data
from .optim import build_optimizer, build_scheduler


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class TrainState:
    iteration: int = 0  # optimizer steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    nonfinite_total: int = 0
    nonfinite_in_a_row: int = 0


def resolve_device(name: str) -> str:
    """`auto` -> cuda when a GPU is there, else cpu; a device this machine lacks is a UserError."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"device {name!r} is not a device name ({e})") from None
    if device.type == "cuda" and not (device.index or 0) < torch.cuda.device_count():
        found = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA"
        raise UserError(f"device {name!r} is not available: this machine has {found}")
    return name


def build_transforms(cfg: Config, *, num_keypoints: int = 0):
    """LSJ and flips as `cfg.data` says; with keypoints (J > 0) flips swap `cfg.model.keypoints`' pairs."""
    steps = []
    if cfg.data.lsj:
        steps.append(LargeScaleJitter(cfg.data.lsj_size, tuple(cfg.data.lsj_scale)))
    if cfg.data.hflip_prob > 0:
        flips = keypoint_flip_map(cfg.model.keypoints, num_keypoints=num_keypoints) if num_keypoints else None
        steps.append(HorizontalFlip(cfg.data.hflip_prob, keypoint_flip_map=flips))
    return Compose(steps) if steps else None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tensorboard_writer(log_dir: Path):
    """(a SummaryWriter or None, the one line telling whether the run logs to TensorBoard)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the optional extra is not installed
        return None, (
            f"TensorBoard: off (to also log scalars to {log_dir}: pip install 'maskrcnn[tensorboard]')"
        )
    try:
        writer = SummaryWriter(str(log_dir))
    except Exception as e:  # e.g. an unwritable folder: the JSON log still works
        return None, f"TensorBoard: off (cannot write to {log_dir}: {e})"
    return writer, f"TensorBoard: logging scalars to {log_dir} (tensorboard --logdir {log_dir})"


class MetricsWriter:
    """JSON lines (always) and TensorBoard (when installed), on the main process only."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tb, self.tensorboard_note = None, ""
        if enabled:
            self.tb, self.tensorboard_note = _tensorboard_writer(out_dir / "tensorboard")

    def keep_until(self, iteration: int) -> None:
        """Drop records logged after `iteration`: a fresh run (0) starts an empty log; a resumed run
        drops what was logged after its checkpoint, since those iterations run again."""
        if not self.enabled or not self.path.is_file():
            return
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("iteration", 0) <= iteration]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "iteration":
                    self.tb.add_scalar(key, value, record.get("iteration", 0))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class Trainer:
    def __init__(self, cfg: Config, *, train_data, out_dir: str | Path, val_data=None, progress: bool = True):
        self.dist: DistInfo = init_distributed(resolve_device(cfg.train.device))
        device = resolve_device(cfg.train.device)
        if device.startswith("cuda") and self.dist.enabled:
            device = f"cuda:{self.dist.local_rank}"
        self.device = torch.device(device)
        self.out_dir = Path(out_dir)
        self.progress = progress and self.dist.is_main
        dataset = build_dataset(train_data, checked=False) if isinstance(train_data, str) else train_data
        self.dataset = check_dataset(dataset, what="the training dataset")
        # data checked, not trusted: fatal problems stop here (report + one error line); fixes are counted
        self.data_problems = check_training_data(self.dataset, dist=self.dist, progress=self.progress)
        if isinstance(val_data, str) and self.dist.is_main:  # a bad spec fails now, not after training
            val_data = build_dataset(val_data)
        self.val_data = val_data
        names = list(self.dataset.class_names)
        if not names:
            raise UserError("the training dataset has no class_names")
        cfg = replace(cfg, model=replace(cfg.model, num_classes=len(names)))
        cfg = with_dataset_keypoints(cfg, self.dataset)
        if cfg.model.roi_heads.keypoint_on and dataset_keypoints(val_data)[0]:  # keypoint AP at the end
            oks_sigmas(cfg.model.keypoints, num_keypoints=cfg.model.roi_heads.num_keypoints)
        self.cfg = cfg
        world = self.dist.world_size
        if cfg.solver.ims_per_batch % world:
            raise UserError(
                f"solver.ims_per_batch={cfg.solver.ims_per_batch} is not divisible by {world} processes"
            )
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model = build_model(cfg, class_names=names, category_ids=list(self.dataset.category_ids))
        if cfg.model.backbone.weights:  # fetched by the main process first, then read from the cache
            from ..weights import load_backbone

            if not self.dist.is_main:
                barrier(self.dist)
            load_backbone(model, cfg.model.backbone.weights, progress=self.progress)
            if self.dist.is_main:
                barrier(self.dist)
        self.model = model.to(self.device)
        self.ddp_model: nn.Module = self.model
        if self.dist.enabled:
            if cfg.model.backbone.norm == "bn" and self.device.type == "cuda":
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = build_optimizer(self.model, cfg.solver)
        self.scheduler = build_scheduler(self.optimizer, cfg.solver)
        self.loader = build_train_loader(
            self.dataset,
            batch_size=cfg.solver.ims_per_batch // world,
            transforms=build_transforms(cfg, num_keypoints=dataset_keypoints(self.dataset)[0]),
            num_workers=cfg.data.num_workers,
            seed=cfg.train.seed,
            shard=(self.dist.rank, world),
            aspect_ratio_grouping=cfg.data.aspect_ratio_grouping,
        )
        if self.loader.batches_per_epoch(0) == 0:
            raise UserError(
                f"the training data has {len(self.dataset)} images, fewer than one batch of "
                f"{cfg.solver.ims_per_batch // world} per process"
            )
        self.state = TrainState()
        torch.manual_seed(cfg.train.seed + 1000 * self.dist.rank)  # per-rank sampling randomness
        self.writer = MetricsWriter(self.out_dir, self.dist.is_main)

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        if self.dist.is_main:
            atomic_save(
                {
                    **model_state(self.model),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "train_state": vars(self.state).copy(),
                    "rng": rng_state(),
                },
                self.checkpoint_path,
            )
        barrier(self.dist)

    def resume(self) -> bool:
        """Continue from checkpoint.pt if it exists; returns whether it did."""
        if not self.checkpoint_path.is_file():
            return False
        ckpt = read_checkpoint(self.checkpoint_path, map_location="cpu")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.state = TrainState(**ckpt["train_state"])
        if self.dist.world_size == 1:
            set_rng_state(ckpt["rng"])
        else:  # each rank continues its own stream, derived from the saved one
            torch.manual_seed(self.cfg.train.seed + 1000 * self.dist.rank + self.state.iteration)
        return True

    # ------------------------------------------------------------------ the loop
    def batches(self):
        """Endless (images, targets) stream continuing from state.epoch / state.batch_in_epoch."""
        while True:
            per_epoch = self.loader.batches_per_epoch(self.state.epoch)
            if self.state.batch_in_epoch >= per_epoch:
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                continue
            self.loader.set_epoch(self.state.epoch, skip_batches=self.state.batch_in_epoch)
            for images, targets, _ in self.loader:
                self.state.batch_in_epoch += 1
                yield images, targets

    def step(self, images, targets) -> dict[str, float] | None:
        images = [im.to(self.device, non_blocking=True) for im in images]
        targets = [t.to(self.device) for t in targets]
        amp = self.cfg.solver.amp and self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext():
            losses = self.ddp_model(images, targets)
        total = sum(losses.values())
        if not all_finite(total, self.dist):
            self.optimizer.zero_grad(set_to_none=True)
            self.state.nonfinite_total += 1
            self.state.nonfinite_in_a_row += 1
            if self.state.nonfinite_in_a_row >= self.cfg.solver.max_nonfinite_steps:
                values = {k: float(v) for k, v in losses.items()}
                raise NonFiniteLossError(
                    f"loss was not finite in {self.state.nonfinite_in_a_row} consecutive iterations "
                    f"(at iteration {self.state.iteration}: {values}); lower solver.base_lr, "
                    "add warmup or enable solver.clip_grad_norm"
                )
            return None
        self.state.nonfinite_in_a_row = 0
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.cfg.solver.clip_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.solver.clip_grad_norm)
        self.optimizer.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    def train(self) -> dict:
        cfg = self.cfg
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out_dir / "config.yaml")
            self.writer.keep_until(self.state.iteration)
            print(self.writer.tensorboard_note, flush=True)
            if self.data_problems:  # what check_training_data fixed or noted, by kind
                self.writer.write({"iteration": self.state.iteration, "data_problems": self.data_problems})
        self.ddp_model.train()
        from tqdm import tqdm

        bar = tqdm(
            total=cfg.solver.max_iter,
            initial=self.state.iteration,
            disable=not self.progress,
            desc="train",
            unit="it",
            dynamic_ncols=True,
        )
        stream = self.batches()
        window_start, window_images = time.perf_counter(), 0
        try:
            while self.state.iteration < cfg.solver.max_iter:
                images, targets = next(stream)
                losses = self.step(images, targets)
                window_images += len(images) * self.dist.world_size
                if losses is None:
                    continue
                self.scheduler.step()
                self.state.iteration += 1
                it = self.state.iteration
                bar.update(1)
                if it % cfg.train.log_period == 0 or it == cfg.solver.max_iter:
                    elapsed = time.perf_counter() - window_start
                    record = {
                        "iteration": it,
                        "loss": sum(losses.values()),
                        **losses,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "images_per_s": window_images / elapsed,
                        "nonfinite_steps": self.state.nonfinite_total,
                    }
                    self.writer.write(record)
                    bar.set_postfix(
                        loss=f"{record['loss']:.3f}",
                        lr=f"{record['lr']:.2e}",
                        img_s=f"{record['images_per_s']:.1f}",
                    )
                    window_start, window_images = time.perf_counter(), 0
                if cfg.train.checkpoint_period and it % cfg.train.checkpoint_period == 0:
                    self.save_checkpoint()
                if cfg.train.eval_period and it % cfg.train.eval_period == 0 and it < cfg.solver.max_iter:
                    self.evaluate(f"eval_{it:07d}")
                    self.ddp_model.train()
        finally:
            bar.close()
        self.save_checkpoint()
        results: dict = {"iterations": self.state.iteration, "nonfinite_steps": self.state.nonfinite_total}
        if self.dist.is_main:
            from .checkpoint import save_model

            save_model(self.model, self.out_dir / "model_final.pt")
        if self.val_data is not None:
            results["metrics"] = self.evaluate("eval")
        barrier(self.dist)
        self.writer.close()
        if self.dist.is_main:
            from ..plots import write_training_curves

            try:
                write_training_curves(self.out_dir)
            except Exception as e:  # the run itself succeeded: its model and log are written
                warnings.warn(f"could not draw {self.out_dir / 'training_curves.png'}: {e}", stacklevel=1)
        return results

    def evaluate(self, name: str) -> dict | None:
        """Evaluate on the validation data (main process only; the others wait)."""
        metrics = None
        if self.dist.is_main and self.val_data is not None:
            from ..evaluation.coco_eval import evaluate_model, format_table, write_report

            dataset = build_dataset(self.val_data) if isinstance(self.val_data, str) else self.val_data
            metrics, results = evaluate_model(
                self.model, dataset, device=str(self.device), progress=self.progress
            )
            write_report(metrics, results, self.out_dir / name)
            self.writer.write(
                {
                    "iteration": self.state.iteration,
                    "eval": name,
                    **{
                        f"{t}/{k}": v
                        for t in ("bbox", "segm", "keypoints")
                        if t in metrics
                        for k, v in metrics[t].items()
                        if isinstance(v, float)
                    },
                }
            )
            if self.progress:
                print(format_table(metrics))
        barrier(self.dist)
        return metrics

    def close(self) -> None:
        cleanup(self.dist)


def train(
    cfg: Config,
    *,
    train_data,
    out_dir: str | Path,
    val_data=None,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train a model; returns {"iterations", "nonfinite_steps", "metrics" (if val_data)}."""
    trainer = Trainer(cfg, train_data=train_data, out_dir=out_dir, val_data=val_data, progress=progress)
    try:
        if resume and trainer.resume() and trainer.progress:
            print(f"resumed from {trainer.checkpoint_path} at iteration {trainer.state.iteration}")
        return trainer.train()
    finally:
        trainer.close()
