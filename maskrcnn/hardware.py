"""What this machine offers: the devices a user may name (`resolve_device` turns `--device` /
`train.device`, "auto", "cpu", "cuda", "cuda:1", ..., into one this machine has, for every command),
the CPU's instruction-set flags (from /proc/cpuinfo on Linux) and whether a device computes
bfloat16 natively, which decides if `--precision bf16` pays.

bf16 runs natively on CPUs with AVX-512 BF16 (`avx512_bf16`: Cooper Lake, Zen 4 and later) or AMX
(`amx_bf16`: Sapphire Rapids and later), and on CUDA GPUs that report bf16 support (Ampere and
later). Elsewhere PyTorch emulates it with fp32 arithmetic plus conversions: slower than fp32, so
`resolve_precision` falls back to fp32 with a one-line note.

    cpu_isa_flags()                       # {"avx2", "avx512_vnni", ...} of the flags we report
    has_native_bf16("cpu")                # True on an AVX-512 BF16 / AMX CPU
    resolve_precision("bf16", "cpu")      # ("bf16", None) or ("fp32", "note: ...")
    resolve_device("auto")                # "cuda" when a GPU is there, else "cpu"

`MASKRCNN_ASSUME_NO_BF16=1` in the environment makes every device count as lacking native bf16
(to see and test the fallback on a machine that has it).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Optional

import torch

from .errors import UserError

__all__ = [
    "ASSUME_NO_BF16_ENV",
    "PRECISIONS",
    "REPORTED_FLAGS",
    "cpu_isa_flags",
    "resolve_device",
    "cpu_model",
    "has_native_bf16",
    "resolve_precision",
]

PRECISIONS = ("fp32", "bf16")
ASSUME_NO_BF16_ENV = "MASKRCNN_ASSUME_NO_BF16"
# the flags that matter for inference speed here: fp32 SIMD width, int8 dot products, bf16
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def cpu_isa_flags(cpuinfo: Optional[str] = None) -> set[str]:
    """The REPORTED_FLAGS this CPU has (the first processor's `flags` line in /proc/cpuinfo; empty
    where there is none, e.g. macOS or Windows). `cpuinfo`: that file's text, for tests."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split()) & set(REPORTED_FLAGS)
    return set()


def cpu_model(cpuinfo: Optional[str] = None) -> str:
    """The CPU's model name ("Intel(R) Xeon(R) ..."), or platform.processor() without /proc/cpuinfo."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or "cpu"


def _assume_no_bf16() -> bool:
    return os.environ.get(ASSUME_NO_BF16_ENV, "").strip() not in ("", "0")


def has_native_bf16(device: str | torch.device, *, flags: Optional[set[str]] = None) -> bool:
    """Whether `device` computes bf16 natively: a CPU with avx512_bf16 or amx_bf16 (`flags`: the
    CPU's flags, default `cpu_isa_flags()`), a CUDA GPU with bf16 support. False for other device
    types and when MASKRCNN_ASSUME_NO_BF16 is set."""
    device = torch.device(device)
    if _assume_no_bf16():
        return False
    if device.type == "cpu":
        return bool((cpu_isa_flags() if flags is None else flags) & set(BF16_FLAGS))
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return False


def resolve_precision(
    precision: str, device: str | torch.device, *, flags: Optional[set[str]] = None
) -> tuple[str, Optional[str]]:
    """The precision to compute in for a requested one -> (precision, note or None). bf16 where the
    device lacks native bf16 becomes fp32, with a one-line note saying why. ValueError for a name
    other than fp32 / bf16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32" or has_native_bf16(device, flags=flags):
        return precision, None
    device = torch.device(device)
    if _assume_no_bf16():
        why = f"{ASSUME_NO_BF16_ENV} is set"
    elif device.type == "cpu":
        why = "this CPU has no avx512_bf16 / amx_bf16"
    else:
        why = f"{device} has no native bf16"
    return "fp32", f"bf16 would be slower here ({why}): running fp32"


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
