"""The numerics pins: torch's kernels and x264 take their AVX2 paths on a CPU that has more, and MKL
its branch for Intel and compatible CPUs, so an AVX-512 machine makes an AVX2 machine's bytes and an
AMD machine an Intel one's (README, "Reproducible to the byte")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from clipmemcap.core import numerics
from clipmemcap.sources import synthetic
from clipmemcap.sources.synthetic import encode_mp4
from conftest import ROOT

AVX2_FLAGS = "fpu sse2 ssse3 sse4_1 sse4_2 avx fma bmi1 bmi2 abm avx2"
PINNED = numerics.has_avx2()
needs_avx2 = pytest.mark.skipif(not PINNED, reason="this CPU has no AVX2: the pin leaves its own paths, by design")


@pytest.mark.parametrize("flags,expected", [
    (AVX2_FLAGS, True),
    (AVX2_FLAGS + " avx512f avx512bw", True),
    (AVX2_FLAGS.replace(" avx2", ""), False),
    (AVX2_FLAGS.replace(" bmi2", ""), False),
    ("", False),
])
def test_avx2_is_read_from_cpuinfo(monkeypatch, flags, expected):
    monkeypatch.setattr(numerics.platform, "machine", lambda: "x86_64")
    assert numerics.has_avx2(f"processor\t: 0\nflags\t\t: {flags}\n") is expected


def test_no_pin_off_x86(monkeypatch):
    monkeypatch.setattr(numerics.platform, "machine", lambda: "aarch64")
    assert not numerics.has_avx2(f"flags\t: {AVX2_FLAGS}\n")


UNPINNED = {k: v for k, v in os.environ.items() if k not in numerics.TORCH_VARIABLES}


def _after_import(code: str, env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", f"import clipmemcap, os, torch; print({code})"], env=env,
                          capture_output=True, text=True, check=True).stdout.strip()


@needs_avx2
def test_importing_the_package_sets_the_pins_and_a_users_setting_wins():
    variables = "[os.environ.get(k) for k in ('ATEN_CPU_CAPABILITY', 'MKL_ENABLE_INSTRUCTIONS', 'MKL_CBWR', 'ONEDNN_MAX_CPU_ISA')]"
    assert _after_import(variables, UNPINNED) == "['avx2', 'AVX2', 'COMPATIBLE', 'AVX2']"
    assert _after_import("torch.backends.cpu.get_cpu_capability()", UNPINNED) == "AVX2"
    assert _after_import("torch.backends.cpu.get_cpu_capability()", {**UNPINNED, "ATEN_CPU_CAPABILITY": "default"}) == "DEFAULT"
    assert _after_import("os.environ['MKL_CBWR']", {**UNPINNED, "MKL_CBWR": "AUTO"}) == "AUTO"


@needs_avx2
def test_torch_makes_the_intel_machines_bytes():
    """The numerics fingerprint under the pins equals the one measured on an Intel Xeon under the
    same settings (reports/numerics/): on this project's AMD machines it differed before MKL_CBWR
    was pinned (MKL chose other AVX2 kernels by vendor)."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "numerics_fingerprint.py")], capture_output=True,
                          text=True, check=True, env={**UNPINNED, "FINGERPRINT_THREADS": "2"})
    ours = json.loads(done.stdout)
    intel = json.loads((ROOT / "reports" / "numerics" / "intel-xeon-avx512.json").read_text())["runs"]
    same_settings = [run for run in intel if all(run["settings"][k] == ours["settings"][k]
                                                for k in ("MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "mkldnn"))]
    assert ours["settings"]["MKL_CBWR"] == "COMPATIBLE" and len(same_settings) == 1
    assert (ours["clip"], ours["train"]) == (same_settings[0]["clip"], same_settings[0]["train"])


@needs_avx2
def test_videos_are_encoded_by_x264s_avx2_paths(tmp_path, monkeypatch):
    """encode_mp4's bytes are those of x264 told the AVX2 machine's capabilities; on this CPU's own
    paths they may differ (they do on AVX-512: x264's paths there round otherwise)."""
    # 20 s of ffmpeg's moving test pattern: on it x264's AVX-512 and AVX2 paths give other files
    raw = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                          "testsrc2=size=112x112:rate=5:duration=20", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"],
                         capture_output=True, check=True).stdout
    frames = list(np.frombuffer(raw, np.uint8).reshape(-1, 112, 112, 3))
    encode_mp4(tmp_path / "pinned.mp4", frames, 112, 112, 5, crf=23)
    monkeypatch.setattr(synthetic, "x264_options", lambda: ())  # the pin off, the mask passed by hand
    encode_mp4(tmp_path / "told.mp4", frames, 112, 112, 5, crf=23,
               options=("-x264-params", f"asm={numerics.X264_AVX2_FLAGS}"))
    assert (tmp_path / "pinned.mp4").read_bytes() == (tmp_path / "told.mp4").read_bytes()
