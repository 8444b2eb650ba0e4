"""`maskrcnn benchmark`: speed of our Mask R-CNN against torchvision's, same weights and images.

- `speed`: the benchmark (settings, models and data, measurements, the command's parser and `main`);
- `timing`: warm-up and timed calls, rows of medians, detection comparison, a RoIAlign profile;
- `report`: the plain-text tables;
- `demo_counterpart`: torchvision's Mask R-CNN sized like our `shapes_demo` model.

It lives in the package so that `maskrcnn benchmark` works from an installed wheel;
`benchmarks/bench_speed.py` in a checkout is a thin script around `speed.main`.
"""
