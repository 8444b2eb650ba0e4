"""Data that is checked, not trusted: `maskrcnn check-data` and the check `maskrcnn train` runs
before its first step.

Both read the dataset the way training does and report from one `ProblemLog`
(`maskrcnn.data.check`, `maskrcnn.data.problems`):

- `maskrcnn check-data SPEC` prints every problem by kind (fatal first) with its count and the
  first examples (file, image id, annotation id), and a summary line; exit status 1 when a
  problem is fatal (training would stop), and with `--strict` also when something was fixed.
  `--json OUT` writes the counts and examples (atomically).
- `check_training_data` (the Trainer, before it builds the model and the loader): fatal problems
  stop training with the report on stderr and one `error:` line; the others are fixed the same
  way the check describes, printed as one `data: ...` line and returned as counts for
  `metrics.jsonl`. Under torchrun each process checks its share of the images and the logs are
  gathered, so every process takes the same decision.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the data package (and torch) load when a check runs, not with the parser
    from ..data.problems import ProblemLog

__all__ = ["add_check_data_arguments", "check_training_data", "cmd_check_data"]


def _counts(log: ProblemLog) -> str:
    """e.g. "1 fatal problem, 3 fixed, 2 notes"."""
    fatal, fixed, notes = (len(log.of(s)) for s in ("fatal", "fixed", "note"))
    plural = {1: ""}
    return (
        f"{fatal} fatal problem{plural.get(fatal, 's')}, {fixed} fixed, {notes} note{plural.get(notes, 's')}"
    )


def check_training_data(dataset, *, dist, progress: bool) -> dict[str, int]:
    """Check the training data (see the module docstring); returns the counts of the problems that
    were fixed or noted, by kind ({} for clean data). Raises DataProblemsError on fatal ones.
    `dist`: this process's place in the launch (`rank`, `world_size`, `enabled`, `is_main`)."""
    from ..data.check import check_items, dataset_problems

    n, world = len(dataset), dist.world_size
    share = range(dist.rank * n // world, (dist.rank + 1) * n // world)
    log = dataset_problems(dataset)  # found reading the annotation files: the same in every process
    mine = check_items(dataset, share, progress=progress)
    if dist.enabled:
        import torch.distributed

        parts: list = [None] * world
        torch.distributed.all_gather_object(parts, mine)
        for part in parts:
            log.extend(part)
    else:
        log.extend(mine)
    if log.fatal:
        if dist.is_main:
            print(f"the training data: {_counts(log)}\n{log.report()}", file=sys.stderr, flush=True)
        log.raise_if_fatal("the training data", hint="see the report above")
    if log and dist.is_main:
        print(f"data: {log.summary_line()}", flush=True)
    return log.summary()


def add_check_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="dataset spec, e.g. coco:ANN.json:IMAGE_DIR, via:DIR, masks:DIR")
    p.add_argument("--strict", action="store_true", help="exit status 1 also when something was fixed")
    p.add_argument("--json", metavar="OUT", help="also write the counts and examples to this JSON file")
    p.add_argument("--examples", type=int, default=3, help="examples shown per kind of problem (default 3)")
    p.add_argument("--no-progress", action="store_true")


def cmd_check_data(args: argparse.Namespace) -> int:
    from ..data.check import check_dataset_files
    from ..data.specs import build_dataset
    from ..errors import UserError
    from ..files import atomic_write_json

    if args.examples < 0:
        raise UserError(f"--examples must be >= 0, got {args.examples}")
    dataset = build_dataset(args.spec, checked=False)
    log = check_dataset_files(dataset, progress=not args.no_progress)
    print(log.report(examples=args.examples))
    print(f"{args.spec}: {len(dataset)} images; {_counts(log)}")
    if args.json:
        record = {"spec": args.spec, "images": len(dataset), **log.to_json(examples=max(args.examples, 10))}
        print(f"wrote {atomic_write_json(Path(args.json), record, indent=2)}")
    fixed = len(log.of("fixed"))
    if log.fatal:
        print("error: the data has fatal problems (listed above): training would stop", file=sys.stderr)
        return 1
    if args.strict and fixed:
        print(f"error: --strict: {fixed} problem(s) would be fixed (listed above)", file=sys.stderr)
        return 1
    return 0
