"""What the numbers were measured on: the code, the CPU, the BLAS numpy calls, its matmul peak,
the load, memory.

A time or a memory figure means little without the machine it came from: the benchmarks print
these lines above their tables, and ``minift compare`` writes ``describe()`` beside its results
(machine.json, and a line of results.md).
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits


def blas_info() -> dict:
    """numpy's BLAS (the one ``@`` calls): internal_api, version, architecture (the kernel that
    runs), num_threads, filepath; ``others`` lists any other BLAS loaded, such as scipy's own
    OpenBLAS, which threadpoolctl may list first.
    """
    keys = ("internal_api", "version", "architecture", "num_threads", "filepath")
    pools = [{k: p.get(k) for k in keys} for p in threadpool_info() if p.get("user_api") == "blas"]
    if not pools:
        return {"internal_api": "unknown", "others": []}
    numpy_dir = Path(np.__file__).resolve().parent  # .../site-packages/numpy
    ours = [
        p
        for p in pools
        if Path(p["filepath"]).parent.name == "numpy.libs"  # a wheel's bundled library
        or Path(p["filepath"]).resolve().is_relative_to(numpy_dir)
    ]
    main = (ours or pools)[0]
    return {**main, "others": [p for p in pools if p is not main]}


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a container may grant fewer than the
    machine has); where the platform cannot say (macOS, Windows), the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_line() -> str:
    """The CPU by its model name (/proc/cpuinfo; the platform's processor string elsewhere) and
    how many cores this process may use."""
    import platform

    name = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name")), name)  # fmt: skip
    except OSError:
        pass
    return f"CPU: {name}, {usable_cores()} cores"


def blas_line(info: dict) -> str:
    threads = info.get("num_threads")
    line = (
        f"BLAS (numpy's): {info.get('internal_api')} {info.get('version')}, "
        f"kernel {info.get('architecture')}, {threads} thread{'' if threads == 1 else 's'}"
    )
    for other in info.get("others", []):
        line += (
            f"; also loaded: {Path(other['filepath']).name} {other['version']} "
            f"(kernel {other['architecture']})"
        )
    return line


def matmul_peak(sizes=(1024, 2048), repeats=5) -> dict[int, float]:
    """Best GFLOP/s of a float32 [n, n]·[n, n] matmul (2n³ FLOPs) for each n."""
    rng = np.random.default_rng(0)
    result = {}
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        a @ b  # warm-up: thread pool start, page faults
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        result[n] = 2 * n**3 / best / 1e9
    return result


def rss_mb(field: str = "VmHWM") -> float:
    """This process's resident memory from /proc/self/status, in MiB (VmHWM: its peak so far;
    VmRSS: now).

    Linux's VmHWM starts anew in a freshly started process, so in one of compare's child
    processes it is that run's peak. Without /proc (macOS), the peak is getrusage's ru_maxrss
    (not used on Linux, where a spawned child inherits its parent's) and the present is NaN.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        pass
    if field != "VmHWM":
        return math.nan
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)  # bytes on macOS, else kB


def loadavg() -> float:
    """The 1-minute load average: other work on the machine inflates every timing."""
    return os.getloadavg()[0]


def busy_share(seconds: float = 1.0, stat: str = "/proc/stat", sleep=time.sleep) -> float:
    """The share of the CPUs' time spent busy over the next ``seconds`` while this process sleeps
    (``stat``'s first line: user nice system idle iowait irq softirq steal ticks): another process
    at work now. The load average lags by minutes, so a machine that went quiet a minute ago still
    shows a high one. NaN where ``stat`` is missing or unreadable."""

    def ticks():
        with open(stat) as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
        idle = fields[3] + fields[4]  # waiting for a disk is not work
        return sum(fields) - idle, sum(fields)

    try:
        busy0, total0 = ticks()
        sleep(seconds)
        busy1, total1 = ticks()
    except (OSError, ValueError, IndexError):
        return math.nan
    return (busy1 - busy0) / max(total1 - total0, 1)


def source_line(root: Path | None = None) -> str:
    """The commit the numbers belong to, and whether the work tree differed from it: a result
    measured before a change on the timed path says so. ``root`` is the folder that holds
    minift/ (this one's by default); "unknown" unless it is a git checkout's top: an installed
    copy in a venv inside some checkout is not that checkout's code."""
    root = Path(root or Path(__file__).resolve().parent.parent).resolve()

    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        top = Path(git("rev-parse", "--show-toplevel")).resolve()
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "minift", "benchmarks")
    except (OSError, subprocess.CalledProcessError):
        return "code: unknown (not a git checkout)"
    if top != root:
        return f"code: unknown (minift is installed in {root}, not a checkout's top)"
    state = "with uncommitted changes to minift/ or benchmarks/" if dirty else "clean"
    return f"code: commit {commit}, {state}"


def describe(busy_seconds: float = 1.0) -> dict:
    """The machine as ``minift compare`` records it before its runs start: CPU, numpy's BLAS and
    its float32 matmul peak on ONE thread (compare's runs each call BLAS from one thread), the
    share of the CPUs another process kept busy over ``busy_seconds``, and the code."""
    with threadpool_limits(1, user_api="blas"):
        info = blas_info()
        peak = matmul_peak(sizes=(1024,))[1024]
    busy = busy_share(busy_seconds)
    return {
        "cpu": cpu_line(),
        "blas": blas_line(info),
        "matmul_peak_gflops_one_thread": round(peak, 1),
        "busy_before": None if math.isnan(busy) else round(busy, 3),  # JSON has no NaN
        "code": source_line(),
    }


@contextlib.contextmanager
def measured_run(busy_seconds: float = 1.0):
    """``describe()`` as the work inside begins, and its minutes (``wall_minutes``) once it ends:
    ``with measured_run() as machine: ...``."""
    machine = describe(busy_seconds)
    started = time.perf_counter()
    yield machine
    machine["wall_minutes"] = round((time.perf_counter() - started) / 60, 1)


def describe_markdown(machine: dict) -> str:
    """``describe()``'s record as one sentence; a record that lacks a field says so."""
    if not machine:
        return "Machine: not recorded."
    busy = machine.get("busy_before")
    busy = (
        "how busy other work kept the CPUs is unknown"  # no /proc/stat
        if busy is None
        else f"other work kept the CPUs {100 * busy:.0f} % busy as the runs began"
    )
    text = (
        f"Machine: {machine.get('cpu', 'CPU: unknown')}; {machine.get('blas', 'BLAS: unknown')}; "
        f"float32 matmul peak on one thread {machine.get('matmul_peak_gflops_one_thread', '?')} "
        f"GFLOP/s; {busy}; {machine.get('code', 'code: unknown')}."
    )
    minutes = machine.get("wall_minutes")
    return text if minutes is None else text + f" The whole run took {minutes:.0f} minutes."
