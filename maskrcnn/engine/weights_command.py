"""`maskrcnn weights [--fetch NAME ...] [--clear [NAME|URL]]`: the published weights usable by
name, their AP and cache state (`maskrcnn.weights`); fetching them for offline use; clearing the
cache."""

from __future__ import annotations

import argparse

__all__ = ["add_weights_arguments", "cmd_weights"]


def add_weights_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fetch", nargs="+", metavar="NAME", help="download (and convert) these now, for offline use later"
    )
    p.add_argument(
        "--clear",
        nargs="?",
        const="",
        metavar="NAME|URL",
        help="remove cached files: a name's download and conversion, a URL's download, or (alone) all",
    )


def cmd_weights(args: argparse.Namespace) -> int:
    from .. import weights
    from ..checkpoints import cache_dir

    if args.clear is not None:
        removed = weights.clear(args.clear or None)
        print(f"removed {len(removed)} cached file{'' if len(removed) == 1 else 's'} from {cache_dir()}")
        for path in removed:
            print(f"  {path}")
        return 0
    for name in args.fetch or []:
        entry = weights.get(name)
        path = weights.converted(name) if entry.kind == "model" else weights.fetch(entry)
        print(f"{entry.name}: {path}")
    rows = [
        (row["name"], ", ".join(row["aliases"]), weights.format_metrics(row["metrics"]), row["cached"])
        for row in weights.listing()
    ]
    header = ("name", "aliases", "published", "cached")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    mirror = f"; mirror ({weights.MIRROR_ENV}): {weights.mirror_base()}" if weights.mirror_base() else ""
    print(f"\ncache: {cache_dir()}{mirror}")
    return 0
