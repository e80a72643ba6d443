"""The instruction-set pin: torch's kernels and x264 take their AVX2 paths on a CPU that has more,
so an AVX-512 machine makes an AVX2 machine's bytes (README, "Reproducible to the byte")."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from clipmemcap.core import numerics
from clipmemcap.sources import synthetic
from clipmemcap.sources.synthetic import encode_mp4

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


def _torch_capability(env: dict[str, str]) -> str:
    code = "import clipmemcap, torch; print(torch.backends.cpu.get_cpu_capability())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


@needs_avx2
def test_importing_the_package_pins_torch_and_a_users_setting_wins():
    env = {k: v for k, v in os.environ.items() if k not in tuple(numerics._TORCH_VARIABLES)}
    assert _torch_capability(env) == "AVX2"
    assert _torch_capability({**env, "ATEN_CPU_CAPABILITY": "default"}) == "DEFAULT"


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
