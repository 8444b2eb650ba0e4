"""Training loop: iteration-based SGD/AdamW with warmup and decay, optional bf16 autocast,
gradient clipping, non-finite-loss detection, periodic evaluation and atomic checkpoints that
resume exactly (model, optimizer, scheduler, and every rank's data position and RNG state: see
`maskrcnn.engine.resume`, which also says when a run directory's checkpoint is continued).

Several processes (torchrun, on one machine or several): every process holds the whole model
(DistributedDataParallel averages the gradients), reads its shard of every epoch (by global rank)
and runs on `cuda:LOCAL_RANK` or the CPU; global rank 0 alone writes the run directory.

Run directory layout:
    config.yaml        the full config used
    checkpoint.pt      latest training checkpoint (atomic), what a resumed run continues from
    metrics.jsonl      one JSON object per logged iteration / evaluation
    training_curves.png  losses, learning rate and AP from metrics.jsonl (matplotlib), at the end
    tensorboard/       the same scalars as TensorBoard events, when tensorboard is installed
    model_final.pt     the trained model, loadable with `maskrcnn.load`
    init_report.json   with train.init (`--init W`): what became of every tensor (`maskrcnn.engine.init`)
    eval/              the final evaluation report (when validation data is given)
"""

from __future__ import annotations

import socket
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from ..config import Config, config_yaml, replace
from ..data.dataset import check_dataset, dataset_keypoints
from ..data.keypoint_meta import keypoint_flip_map, oks_sigmas, with_dataset_keypoints
from ..data.loader import build_train_loader
from ..data.specs import build_dataset
from ..data.transforms import Compose, HorizontalFlip, LargeScaleJitter
from ..distributed import DistInfo, all_finite, barrier, cleanup, init_distributed
from ..errors import UserError
from ..files import atomic_write_text, remove_partial_writes
from ..hardware import resolve_device
from ..model import build_model
from .data_check import check_training_data
from .freeze import freeze, set_train_mode
from .init import initialize
from .metrics_log import MetricsWriter
from .optim import build_optimizer, build_scheduler
from .resume import TrainState, resume_mode, resume_training, save_training_checkpoint

__all__ = ["MetricsWriter", "NonFiniteLossError", "Trainer", "TrainState", "train", "train_loader"]


class NonFiniteLossError(RuntimeError):
    pass


def build_transforms(cfg: Config, *, num_keypoints: int = 0):
    """LSJ and flips as `cfg.data` says; with keypoints (J > 0) flips swap `cfg.model.keypoints`' pairs."""
    steps = []
    if cfg.data.lsj:
        steps.append(LargeScaleJitter(cfg.data.lsj_size, tuple(cfg.data.lsj_scale)))
    if cfg.data.hflip_prob > 0:
        flips = keypoint_flip_map(cfg.model.keypoints, num_keypoints=num_keypoints) if num_keypoints else None
        steps.append(HorizontalFlip(cfg.data.hflip_prob, keypoint_flip_map=flips))
    return Compose(steps) if steps else None


def train_loader(cfg: Config, dataset, *, rank: int, world_size: int):
    """The training loader of process `rank` of `world_size`: its shard of every epoch, in batches of
    `solver.ims_per_batch / world_size` images."""
    return build_train_loader(
        dataset,
        batch_size=cfg.solver.ims_per_batch // world_size,
        transforms=build_transforms(cfg, num_keypoints=dataset_keypoints(dataset)[0]),
        num_workers=cfg.data.num_workers,
        seed=cfg.train.seed,
        shard=(rank, world_size),
        aspect_ratio_grouping=cfg.data.aspect_ratio_grouping,
    )


class Trainer:
    def __init__(self, cfg: Config, *, train_data, out_dir: str | Path, val_data=None, progress: bool = True):
        device = resolve_device(cfg.train.device)
        self.dist: DistInfo = init_distributed(device)
        if device.startswith("cuda") and self.dist.enabled:
            device = f"cuda:{self.dist.local_rank}"
        self.device = torch.device(device)
        self.out_dir = Path(out_dir)
        self.progress = progress and self.dist.is_main
        self.train_spec = train_data if isinstance(train_data, str) else None  # checked on resume
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
        self.frozen = freeze(model, cfg.train.freeze)  # before the optimizer, which leaves them out
        if self.frozen and self.dist.is_main:
            frozen = set(self.frozen)
            values = sum(p.numel() for name, p in model.named_parameters() if name in frozen)
            print(f"freeze: {cfg.train.freeze}: {len(self.frozen)} parameters ({values:,} values) frozen")
        self.model = model.to(self.device)
        self.ddp_model: nn.Module = self.model
        if self.dist.enabled:
            if cfg.model.backbone.norm == "bn" and self.device.type == "cuda":
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = build_optimizer(self.model, cfg.solver)
        self.scheduler = build_scheduler(self.optimizer, cfg.solver)
        self.loader = train_loader(cfg, self.dataset, rank=self.dist.rank, world_size=world)
        if self.loader.batches_per_epoch(0) == 0:
            raise UserError(
                f"the training data has {len(self.dataset)} images, fewer than one batch of "
                f"{cfg.solver.ims_per_batch // world} per process"
            )
        self.state = TrainState()
        self.resumed_at: int | None = None  # the checkpoint's iteration when the run was resumed
        torch.manual_seed(cfg.train.seed + 1000 * self.dist.rank)  # per-rank sampling randomness
        self.writer = MetricsWriter(self.out_dir, False)  # the run's log is opened by train()

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        """Write checkpoint.pt (`maskrcnn.engine.resume.save_training_checkpoint`)."""
        save_training_checkpoint(
            self.checkpoint_path,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            state=self.state,
            train_data=self.train_spec,
            device=self.device,
            info=self.dist,
        )

    def resume(self, mode: str | bool = "always") -> bool:
        """Continue from checkpoint.pt as `mode` says (`maskrcnn.engine.resume`); returns whether it
        did. Rank 0 decides and sends the checkpoint to the others; a refusal raises on every rank."""
        state = resume_training(
            resume_mode(mode),
            self.checkpoint_path,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            cfg=self.cfg,
            train_data=self.train_spec,
            device=self.device,
            info=self.dist,
        )
        if state is None:
            return False
        self.state, self.resumed_at = state, state.iteration
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
            written = ("checkpoint.pt", "model_final.pt", "metrics.jsonl", "config.yaml", "init_report.json")
            for name in written:
                remove_partial_writes(self.out_dir / name)  # left by a process killed mid-write
            atomic_write_text(self.out_dir / "config.yaml", config_yaml(cfg))
            if self.dist.enabled:  # on machines without a shared filesystem: where the run is written
                host = socket.gethostname()
                print(
                    f"{self.dist.world_size} processes; rank 0 on host {host} writes {self.out_dir.resolve()}"
                )
            self.writer = MetricsWriter(self.out_dir, True, start_iteration=self.state.iteration)
            self.writer.keep_until(self.state.iteration)
            print(self.writer.tensorboard_note, flush=True)
            # what check_training_data fixed or noted, by kind: a record of iteration 0 (a resumed
            # run's log holds it already)
            if self.data_problems and self.state.iteration == 0:
                self.writer.write({"iteration": 0, "data_problems": self.data_problems})
        set_train_mode(self.ddp_model, cfg.train.freeze)
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
                    set_train_mode(self.ddp_model, cfg.train.freeze)
        finally:
            bar.close()
        self.save_checkpoint()
        results: dict = {
            "iterations": self.state.iteration,
            "nonfinite_steps": self.state.nonfinite_total,
            "resumed_at": self.resumed_at,
        }
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
            from ..evaluation.coco_eval import evaluate_model
            from ..evaluation.report import format_table, write_report

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

    def initialize(self) -> dict | None:
        """Start from the weights of `train.init` (`maskrcnn.engine.init`); the report, or None."""
        return initialize(self.model, self.cfg, out_dir=self.out_dir, info=self.dist, progress=self.progress)

    def close(self) -> None:
        cleanup(self.dist)


def train(
    cfg: Config,
    *,
    train_data,
    out_dir: str | Path,
    val_data=None,
    resume: str | bool = "auto",
    progress: bool = True,
) -> dict:
    """Train a model; returns {"iterations", "nonfinite_steps", "resumed_at" (the checkpoint's
    iteration, or None for a run from iteration 0), "metrics" (if val_data)}.
    `resume`: auto | always | never, as `maskrcnn.engine.resume` describes (True: always). A run that
    does not resume starts from `train.init` when it is set (`maskrcnn.engine.init`); one that resumes
    ignores it (its checkpoint holds the weights). `solver.max_iter=0` writes the initial model."""
    mode = resume_mode(resume)
    trainer = Trainer(cfg, train_data=train_data, out_dir=out_dir, val_data=val_data, progress=progress)
    try:
        if not trainer.resume(mode):  # a run continued from its checkpoint is past its init
            trainer.initialize()
        return trainer.train()
    finally:
        trainer.close()
