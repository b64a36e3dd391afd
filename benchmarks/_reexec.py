"""Restart a benchmark without the OpenBLAS pins, BEFORE numpy is imported (no numpy here).

These machines export OPENBLAS_CORETYPE=Haswell and OPENBLAS_L2_SIZE=512, which older OpenBLAS
builds need on this CPU, but which make the current numpy's OpenBLAS use an older kernel at about
half the speed. OpenBLAS reads them once, when it loads, so a benchmark that wants the kernel
OpenBLAS would pick for this CPU re-executes itself as

    sys.executable -m benchmarks.<name> [the same arguments]

with both removed from ITS environment (and its children's) only: tests and CI keep them. It says
so on one line, and then prints the kernel that actually ran (``minift.machine.blas_line``).
"""

import os
import sys

OPENBLAS_PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def reexec_without_openblas_pins(module: str) -> None:
    """Re-execute ``python -m module`` without the pins; returns at once when none is set."""
    pinned = [name for name in OPENBLAS_PINS if name in os.environ]
    if not pinned:
        return
    if "numpy" in sys.modules:
        raise RuntimeError("reexec_without_openblas_pins: call it before numpy is imported")
    env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_PINS}
    print(
        f"re-executing without {', '.join(f'{k}={os.environ[k]}' for k in pinned)} "
        "so OpenBLAS picks its own kernel for this CPU",
        flush=True,
    )
    os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)


def pins_in_env() -> list[str]:
    return [k for k in OPENBLAS_PINS if k in os.environ]
