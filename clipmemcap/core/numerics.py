"""The same bytes on any x86-64 machine with AVX2, Intel or AMD: the numerical code's paths are pinned.

torch (ATen's kernels, MKL, oneDNN) and x264 pick code paths by the CPU they run on, and the paths
round differently: the benchmark's videos, the CLIP embeddings and so every weight trained on them
differed between an AVX2 and an AVX-512 machine, and between an Intel and an AMD one. With x264 and
ATen pinned to AVX2 and MKL to its conditional-numerical-reproducibility branch for Intel and
compatible CPUs, the machines make each other's artifacts byte for byte (README, "Reproducible to
the byte").

A CPU without these instructions (or not x86-64) keeps its own paths: its bytes then differ, as they
would anyway. A variable the user has set wins: ``ATEN_CPU_CAPABILITY=avx512`` runs the faster
kernels and makes other bytes. The package's ``__init__`` pins torch before torch is imported.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

# /proc/cpuinfo's names of what the pinned paths execute
_REQUIRED_FLAGS = frozenset({"avx", "avx2", "fma", "bmi1", "bmi2", "abm", "ssse3", "sse4_2"})

# MKL picks its kernels by CPU vendor as well as by instruction set: capped at AVX2 alone, an Intel
# and an AMD machine trained other weights. MKL_CBWR=COMPATIBLE is the one branch Intel documents as
# giving the same results on Intel and compatible CPUs (MKL_CBWR=AVX2 holds only across Intel CPUs);
# with it the numerics fingerprint (scripts/numerics_fingerprint.py) of an Intel Xeon and an AMD EPYC
# agree. oneDNN's convolutions (CLIP's patch embedding) agree under its AVX2 cap; turned off, ATen's
# own convolution did not.
TORCH_VARIABLES = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "MKL_CBWR": "COMPATIBLE",
                   "ONEDNN_MAX_CPU_ISA": "AVX2"}

# x264's CPU flags (x264.h, X264_CPU_*) that an AVX2 machine's detection sets: MMX, MMX2, SSE, SSE2,
# LZCNT, SSE3, SSSE3, SSE4, SSE4.2, AVX (bits 0-9), FMA3, BMI1, BMI2, AVX2 (12-15), SSE2_IS_FAST (20)
X264_AVX2_FLAGS = sum(1 << bit for bit in (*range(10), 12, 13, 14, 15, 20))


def has_avx2(cpuinfo: str | None = None) -> bool:
    """Whether this CPU runs the pinned paths; ``cpuinfo``: the text of /proc/cpuinfo (read if None)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return _REQUIRED_FLAGS <= set(line.partition(":")[2].split())
    return False


@functools.cache
def _pinned() -> bool:
    return has_avx2()


def pin_torch() -> None:
    """Set torch's instruction-set variables, unless set already; only takes effect before torch is imported."""
    if _pinned():
        for name, value in TORCH_VARIABLES.items():
            os.environ.setdefault(name, value)


def x264_options() -> tuple[str, ...]:
    """ffmpeg output options that make libx264 use the AVX2 paths whatever more the CPU has."""
    return ("-x264-params", f"asm={X264_AVX2_FLAGS}") if _pinned() else ()
