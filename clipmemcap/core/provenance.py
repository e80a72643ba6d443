"""What a dataset was made with: the versions of the tools that fetched, decoded and embedded it,
recorded in its manifest so that a reader can tell which videos and which software made a number."""

from __future__ import annotations

import subprocess
from importlib.metadata import PackageNotFoundError, version


def _package(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def ffmpeg_version() -> str | None:
    """``ffmpeg -version``'s first line, e.g. ``ffmpeg version 5.1.9-0+deb12u1 ...``, shortened to
    the version itself."""
    try:
        first = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError):
        return None
    words = first.split()
    return words[2] if len(words) > 2 and words[:2] == ["ffmpeg", "version"] else first or None


def javascript_runtime() -> str | None:
    """The JavaScript runtime yt-dlp would use to solve YouTube's challenges (``deno 2.x``), or
    None when it finds none: YouTube then serves fewer formats, and some videos fail."""
    import yt_dlp

    with yt_dlp.YoutubeDL({"quiet": True}) as ydl:
        # yt-dlp has no public call for this; its runtimes carry `info` when found on this machine
        for name, runtime in getattr(ydl, "_js_runtimes", {}).items():
            info = getattr(runtime, "info", None)
            if info is not None:
                return f"{name} {getattr(info, 'version', '')}".strip()
    return None


def tool_versions() -> dict[str, str | None]:
    import torch

    return {"yt-dlp": _package("yt-dlp"), "javascript_runtime": javascript_runtime(), "ffmpeg": ffmpeg_version(),
            "open_clip": _package("open_clip_torch"), "torch": torch.__version__}
