"""Load on `maskrcnn serve`: N concurrent clients for a fixed time against a real uvicorn process.

Starts `python -m maskrcnn serve` on a free port of 127.0.0.1 (the model: `--weights W`, or a small
random 2-class network, seeded, which detects ~5 things per image as a trained one would), then runs
`--clients` (64) clients for `--seconds` (30). Each client sends one request per connection, of a
kind drawn by weight (`--mix`, default good=70,bad=10,oversized=10,stalled=5,gone=5):

    good       a coco-mini val image                                    -> 200
    bad        a text body                                              -> 415
    oversized  a body of --max-upload-mb + 1 MB, sent whole             -> 413
    stalled    declares 1 MB, sends 64 KB, then waits                   -> 408 after --request-timeout
    gone       declares an image, sends half of it, closes the socket   -> (no answer; one log line)

At the end: counts per status, p50/p95/p99 latency per kind (connect to last byte), the server's
peak RSS (VmHWM) and RSS before, during and after the load, the tracebacks in its log, and how it
ended on SIGTERM. Prints a table (the one in benchmarks/README.md) and writes JSON (`--out`, default
benchmarks/results/serve_load.json). The clients share the machine with the server.

    python benchmarks/serve_load.py
    python benchmarks/serve_load.py --clients 16 --seconds 10     # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskrcnn.files import atomic_write_json  # noqa: E402
from maskrcnn.hardware import REPORTED_FLAGS, cpu_isa_flags, cpu_model  # noqa: E402

MIB = 1 << 20
# the tests' tiny network (tests/helpers.py TINY): fast on the CPU, ~5 detections per image
TINY = [
    "model.backbone.depth=18",
    "model.backbone.width=16",
    "model.backbone.fpn_channels=32",
    "model.roi_heads.fc_dim=64",
    "model.roi_heads.mask_head_dim=32",
    "model.roi_heads.mask_head_convs=2",
    "model.num_classes=2",
    "model.input.min_size=[128]",
    "model.input.max_size=192",
]
IMAGES = ["000000000139.jpg", "000000022192.jpg", "000000000802.jpg", "000000011813.jpg"]
EXPECTED = {"good": 200, "bad": 415, "oversized": 413, "stalled": 408}


def _tiny_weights(folder: Path) -> Path:
    import torch

    from maskrcnn.config import apply_overrides, get_preset
    from maskrcnn.engine.checkpoint import save_model
    from maskrcnn.model import build_model

    torch.manual_seed(0)
    model = build_model(apply_overrides(get_preset("default"), TINY), class_names=["cat", "dog"])
    save_model(model, folder / "tiny.pt")
    return folder / "tiny.pt"


def _memory_kb(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {
            k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in f) if k in ("VmRSS", "VmHWM")
        }


def _start(weights: Path, options: list[str], log: Path) -> tuple[subprocess.Popen, str, int]:
    command = [sys.executable, "-m", "maskrcnn", "serve", "--weights", str(weights), "--port", "0", *options]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        found = re.search(r" on http://(127\.0\.0\.1):(\d+)$", log.read_text(errors="replace"), re.MULTILINE)
        if found:
            return process, found.group(1), int(found.group(2))
        time.sleep(0.2)
    process.kill()
    sys.exit(f"the server did not start; its log:\n{log.read_text(errors='replace')}")


async def _request(host: str, port: int, kind: str, payloads: dict) -> tuple[str, float]:
    """One request of `kind` on its own connection -> (status or "gone"/"reset", seconds)."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = "POST /v1/predict HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n"
        if kind == "stalled":
            writer.write(head.format(host, MIB).encode() + b"\0" * 65536)
        elif kind == "gone":
            image = random.choice(payloads["good"])
            writer.write(head.format(host, len(image)).encode() + image[: len(image) // 2])
            await writer.drain()
            return "gone", time.perf_counter() - started
        else:
            body = random.choice(payloads[kind]) if kind == "good" else payloads[kind]
            writer.write(head.format(host, len(body)).encode() + body)
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()  # to the server's close
        status = status_line.split()[1].decode() if status_line else "closed"
    except (ConnectionError, OSError):
        status = "reset"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    return status, time.perf_counter() - started


async def _client(host: str, port: int, until: float, mix: dict[str, int], payloads: dict, out: list) -> None:
    kinds, weights = list(mix), list(mix.values())
    while time.monotonic() < until:
        kind = random.choices(kinds, weights)[0]
        status, seconds = await _request(host, port, kind, payloads)
        out.append((kind, status, seconds))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _summary(results: list[tuple[str, str, float]]) -> dict:
    by_kind: dict[str, list] = defaultdict(list)
    for kind, status, seconds in results:
        by_kind[kind].append((status, seconds))
    rows = {}
    for kind, items in sorted(by_kind.items()):
        times = [s for _, s in items]
        rows[kind] = {
            "requests": len(items),
            "statuses": dict(Counter(status for status, _ in items)),
            "p50_s": round(_percentile(times, 50), 4),
            "p95_s": round(_percentile(times, 95), 4),
            "p99_s": round(_percentile(times, 99), 4),
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", type=Path, help="a checkpoint (default: the tiny random network)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--mix", default="good=70,bad=10,oversized=10,stalled=5,gone=5")
    p.add_argument("--coco", type=Path, default=ROOT.parent / "shared" / "data" / "coco-mini")
    p.add_argument("--max-upload-mb", type=float, default=2.0)
    p.add_argument("--request-timeout", type=float, default=5.0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.json")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    mix = {k: int(v) for k, v in (item.split("=") for item in args.mix.split(","))}
    random.seed(args.seed)
    payloads = {
        "good": [(args.coco / "val2017" / name).read_bytes() for name in IMAGES],
        "bad": b"shopping list: eggs, milk\n" * 40,
        "oversized": os.urandom(int((args.max_upload_mb + 1) * MIB)),
    }
    options = ["--max-upload-mb", str(args.max_upload_mb), "--request-timeout", str(args.request_timeout)]
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or _tiny_weights(Path(tmp))
        log = Path(tmp) / "server.log"
        process, host, port = _start(weights, options, log)
        try:
            idle = _memory_kb(process.pid)["VmRSS"]
            results: list = []
            samples: list[int] = []

            async def run() -> None:
                until = time.monotonic() + args.seconds
                clients = [_client(host, port, until, mix, payloads, results) for _ in range(args.clients)]
                tasks = [asyncio.ensure_future(c) for c in clients]
                while not all(t.done() for t in tasks):
                    samples.append(_memory_kb(process.pid)["VmRSS"])
                    await asyncio.sleep(0.5)
                await asyncio.gather(*tasks)

            started = time.monotonic()
            asyncio.run(run())
            wall = time.monotonic() - started
            time.sleep(2.0)
            memory = _memory_kb(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                code = "killed"
        text = log.read_text(errors="replace")
    rows = _summary(results)
    statuses = Counter(status for _, status, _ in results)
    unexpected = sum(
        n
        for kind, row in rows.items()
        for s, n in row["statuses"].items()
        if s != str(EXPECTED.get(kind, "gone"))
    )
    report = {
        "cpu": cpu_model(),
        "isa_flags": sorted(cpu_isa_flags()),
        "reported_flags": list(REPORTED_FLAGS),
        "cpu_count": os.cpu_count(),
        "load_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)],  # at the start and the end
        "clients": args.clients,
        "seconds": round(wall, 2),
        "mix": mix,
        "server_options": options,
        "weights": str(args.weights) if args.weights else "tiny random 2-class network",
        "requests": len(results),
        "statuses": dict(statuses),
        "server_errors_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
        "unexpected": unexpected,
        "kinds": rows,
        "rss_mb": {
            "idle": round(idle / 1024, 1),
            "peak_sampled": round(max(samples, default=idle) / 1024, 1),
            "after": round(memory["VmRSS"] / 1024, 1),
            "peak_vmhwm": round(memory["VmHWM"] / 1024, 1),
        },
        "log_tracebacks": text.count("Traceback"),
        "log_client_gone_lines": text.count(" went away during "),
        "exit_on_sigterm": code,
    }
    atomic_write_json(args.out, report, indent=2)
    print(_table(report))
    print(f"wrote {args.out}")
    return 0 if report["server_errors_5xx"] == 0 and report["log_tracebacks"] == 0 else 1


def _table(r: dict) -> str:
    flags = " ".join(r["isa_flags"]) or "none of " + " ".join(r["reported_flags"])
    lines = [
        f"{r['cpu']} ({r['cpu_count']} CPUs; flags: {flags}; 1-min load {r['load_1min'][0]} -> "
        f"{r['load_1min'][1]}); {r['clients']} clients for {r['seconds']} s, "
        f"{r['requests']} requests, {r['server_errors_5xx']} 5xx, {r['unexpected']} unexpected",
        "",
        "| kind | requests | statuses | p50 s | p95 s | p99 s |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for kind, row in r["kinds"].items():
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(row["statuses"].items()))
        lines.append(
            f"| {kind} | {row['requests']} | {statuses} "
            f"| {row['p50_s']:.3f} | {row['p95_s']:.3f} | {row['p99_s']:.3f} |"
        )
    m = r["rss_mb"]
    lines += [
        "",
        f"server RSS: idle {m['idle']} MB, peak {m['peak_vmhwm']} MB (VmHWM), "
        f"{m['after']} MB 2 s after the load; "
        f"{r['log_tracebacks']} tracebacks and {r['log_client_gone_lines']} 'went away' lines in its log; "
        f"exit status on SIGTERM: {r['exit_on_sigterm']}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
