"""Shared helpers for the benchmark scripts: machine description, alternating A/B timing with medians
of per-pair ratios, and peak resident memory of a fresh subprocess.

Design choices:
- Two sides are timed in alternation (A B, then B A, ...) rather than all of A then all of B, so that
  a slow drift of the machine (thermal state, another process starting) lands on both sides. The
  reported ratio is the median of the per-pair ratios, which also cancels drift slower than a pair.
- Peak memory on CPU comes from /proc/self/status (VmHWM, the resident high-water mark) in a fresh
  process per side: tracemalloc does not see torch's allocations, and one process cannot forget a
  peak it reached earlier. Writing "5" to /proc/self/clear_refs resets VmHWM (Linux >= 4.0), so the
  loading transients can be excluded; where that is refused the peak includes them and we say so.
- A child process reports one JSON line prefixed with `CHILD_RESULT_PREFIX`; everything else it
  prints (warnings, progress) is ignored by the parent.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

CHILD_RESULT_PREFIX = "@@benchmark-result@@ "
GIB = 1024**3


# ---------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """What a reader needs to judge the numbers: CPU, cores, threads, memory, library versions."""
    import torch
    import transformers

    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def describe_machine(info: dict) -> str:
    return (
        f"machine: {info['cpu']}, {info['cpu_count']} cores, {info['torch_threads']} torch threads, "
        f"{info['memory_gib']} GiB RAM, load average {info['load_average_1min']} at start\n"
        f"versions: python {info['python']}, torch {info['torch']}, transformers {info['transformers']}"
    )


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
Measurement = Callable[[], dict[str, float]]


def alternate(sides: dict[str, Measurement], repeats: int, warmup: int = 1) -> dict[str, dict[str, list]]:
    """Run each side's measurement `warmup` times (discarded), then `repeats` times, alternating the
    order every round (A B, B A, ...). A measurement returns named durations in seconds; the result
    is {side: {name: [seconds per repeat]}}."""
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    results: dict[str, dict[str, list]] = {name: {} for name in names}
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            for metric, seconds in sides[name]().items():
                results[name].setdefault(metric, []).append(seconds)
    return results


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(a: list[float], b: list[float]) -> dict:
    """Medians of both sides and the median of the per-repeat ratios a/b (with its range)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same non-zero number of repeats on both sides, got {len(a)} and {len(b)}")
    ratios = [x / y for x, y in zip(a, b)]
    return {
        "a_median": statistics.median(a),
        "b_median": statistics.median(b),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "repeats": len(a),
    }


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------
def proc_status_bytes(field: str) -> int:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"/proc/self/status has no field {field!r} (Linux only)")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel refuses (the peak then keeps history)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
        return True
    except OSError:
        return False


def emit_child_result(payload: dict) -> None:
    print(CHILD_RESULT_PREFIX + json.dumps(payload), flush=True)


def start_child(argv: list[str]) -> subprocess.Popen:
    """Start `python argv...` in a fresh interpreter without waiting: memory measurements may run side
    by side (each process has its own VmHWM), timings must not."""
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def wait_child(proc: subprocess.Popen, timeout: float = 3600) -> dict:
    """The JSON result a child emitted; RuntimeError with its stderr tail when there is none."""
    stdout, stderr = proc.communicate(timeout=timeout)
    for line in reversed(stdout.splitlines()):
        if line.startswith(CHILD_RESULT_PREFIX):
            return json.loads(line[len(CHILD_RESULT_PREFIX) :])
    raise RuntimeError(
        f"child {' '.join(proc.args[1:3])} exited {proc.returncode} without a result; stderr tail:\n"
        + stderr[-3000:]
    )


def run_child(argv: list[str], timeout: float = 3600) -> dict:
    return wait_child(start_child(argv), timeout)


def gib(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.2f}"
