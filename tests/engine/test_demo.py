"""`maskrcnn demo` end to end on a tiny schedule: trains, evaluates on held-out shapes, writes the
summary, the ground-truth | prediction overlay pictures and the training-curves figure."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from maskrcnn.cli import main
from tests.helpers import TINY_NET


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    schedule = ["solver.max_iter=2", "solver.ims_per_batch=2", "solver.warmup_iters=1", "solver.steps=[1]"]
    args = ["demo", "--out", str(out), "--train-images", "4", "--val-images", "3", "--no-progress"]
    tiny = [*TINY_NET, "train.log_period=1"]
    assert main(args + tiny + schedule + ["data.num_workers=0"]) == 0
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["iterations"] == 2
    assert 0.0 <= summary["mask_AP"] <= 1.0 and 0.0 <= summary["box_AP"] <= 1.0
    printed = capsys.readouterr().out
    assert "segm" in printed and f"mask AP {summary['mask_AP']:.3f}" in printed
    pictures = sorted((out / "overlays").glob("*.png"))
    assert len(pictures) == 3  # one per held-out image
    picture = np.asarray(Image.open(pictures[0]))
    # two panels of the 128-pixel image enlarged 3 times, side by side under their titles
    assert picture.shape[1] == 2 * 384 + 10 and picture.shape[0] > 384
    left, right = picture[-384:, :384], picture[-384:, 394:]
    assert left.std() > 0 and right.std() > 0
    assert (out / "model_final.pt").is_file() and (out / "eval" / "metrics.json").is_file()
    # the training-curves figure of the run: losses, lr and (the final evaluation) AP panels
    curves = out / "training_curves.png"
    assert summary["training_curves"] == str(curves) and f"training curves: {curves}" in printed
    with Image.open(curves) as im:
        assert im.format == "PNG" and im.width >= 3 * 300 and im.height >= 300
