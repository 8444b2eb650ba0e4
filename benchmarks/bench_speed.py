"""Speed of our Mask R-CNN against torchvision's, in one process, on identical weights and images.

The benchmark lives in the package (`maskrcnn.benchmark.speed`, also `maskrcnn benchmark`); this
script runs it from a checkout and keeps the results beside this folder by default
(benchmarks/results/bench_speed.json). What it measures and the latest numbers: benchmarks/README.md.

    python benchmarks/bench_speed.py                     # CPU (4 min at 1 thread on a busy 2-core box)
    python benchmarks/bench_speed.py --device cuda       # GPU, 20 runs per measurement
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from maskrcnn.benchmark.speed import main as speed_main

RESULTS = Path(__file__).resolve().parent / "results" / "bench_speed.json"


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", str(RESULTS)]
    return speed_main(argv)


if __name__ == "__main__":
    sys.exit(main())
