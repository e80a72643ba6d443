"""Fetch one video with yt-dlp into ``videos/<video_id>.<ext>``, atomically and only once.

yt-dlp writes into a private ``.partial/<video_id>/`` folder; the file is probed with ffprobe and
only a readable video is renamed into place, so a file under its final name is always complete.
Errors are the transient/permanent classes of :mod:`clipmemcap.sources.http` (a private video or a
file that is not a video is permanent).
"""

from __future__ import annotations

import http.cookiejar
import re
import shutil
from pathlib import Path

import ffmpeg
import yt_dlp

from clipmemcap.core.config import DownloadConfig
from clipmemcap.sources.http import PermanentDownloadError, RunStoppingError, classify, is_local

def probe_video(path: Path, cfg: DownloadConfig | None = None) -> float:
    """Duration in seconds of the first video stream; raises PermanentDownloadError when the file
    is empty, unreadable, has no video stream, or (with ``cfg``) is longer or has larger frames
    than its bounds allow: checked before anything is decoded."""
    if path.stat().st_size == 0:
        raise PermanentDownloadError("file is empty (0 bytes)")
    try:
        info = ffmpeg.probe(f"file:{path}")  # "file:": a name starting with "-" is a file, not an option
    except ffmpeg.Error as err:
        lines = err.stderr.decode(errors="replace").replace(f"file:{path}", path.name).replace(str(path), path.name)
        lines = lines.strip().splitlines()
        raise PermanentDownloadError(f"unreadable by ffprobe: {lines[-1] if lines else err}")
    streams = [s for s in info.get("streams", []) if s.get("codec_type") == "video"]
    if not streams:
        raise PermanentDownloadError("no video stream (audio-only or not a video)")
    duration = streams[0].get("duration") or info.get("format", {}).get("duration")
    if duration is None or float(duration) <= 0:
        raise PermanentDownloadError("video stream has no duration")
    width, height = int(streams[0].get("width") or 0), int(streams[0].get("height") or 0)
    if cfg is not None and width * height > cfg.max_pixels:
        raise PermanentDownloadError(f"frames of {width}x{height} are more than max_pixels ({cfg.max_pixels})")
    if cfg is not None and float(duration) > cfg.max_duration_s:
        raise PermanentDownloadError(f"{float(duration):.0f} s is longer than max_duration_s ({cfg.max_duration_s:g})")
    return float(duration)


def find_video(videos_dir: Path, video_id: str) -> Path | None:
    """The published file of ``video_id``, whatever container yt-dlp chose."""
    matches = sorted(videos_dir.glob(f"{video_id}.*"))
    return matches[0] if matches else None


def _ydl_options(cfg: DownloadConfig, out_dir: Path, video_id: str, cookies: Path | None = None) -> dict:
    options = {
        "format": cfg.format,
        "outtmpl": str(out_dir / f"{video_id}.%(ext)s"),
        "socket_timeout": cfg.socket_timeout_s,
        # Retries belong to the caller (see module docstring); yt-dlp's own would multiply them.
        "retries": 0,
        "fragment_retries": 0,
        "extractor_retries": 0,
        "noplaylist": True,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "logger": _SilentLogger(),
        "overwrites": True,
        "continuedl": False,
    }
    options["max_filesize"] = int(cfg.max_filesize_mb * 1e6)
    # Refused before downloading when the site says so (a plain file's duration is known only
    # after it arrives: probe_video checks it then).
    options["match_filter"] = yt_dlp.utils.match_filter_func(f"!is_live & duration <=? {cfg.max_duration_s}")
    if cfg.rate_limit:
        options["ratelimit"] = yt_dlp.utils.parse_bytes(cfg.rate_limit)
    if cookies:
        options["cookiefile"] = str(cookies)
    return options


class _SilentLogger:
    """yt-dlp prints errors itself before raising; we report them once, through the exception."""

    def debug(self, msg):
        pass

    info = warning = error = debug


def fetch_video(video_id: str, url: str, videos_dir: Path, cfg: DownloadConfig) -> Path:
    """Download ``url`` as ``videos_dir/<video_id>.<ext>`` unless a readable copy is there."""
    existing = find_video(videos_dir, video_id)
    if existing is not None:
        try:
            probe_video(existing, cfg)
            return existing
        except PermanentDownloadError:
            existing.unlink()
    partial = videos_dir / ".partial" / video_id
    # yt-dlp writes its cookie jar back when it closes: concurrent downloads sharing the user's
    # file lose cookies or leave it empty. Each download gets its own copy; the user's is only read.
    cookies = videos_dir / ".partial" / f"{video_id}.cookies.txt"
    options = _ydl_options(cfg, partial, video_id, cookies if cfg.cookies_file else None)
    if is_local(url):  # a local file goes through yt-dlp too, as a file:// URL
        if not Path(url).is_file():
            raise PermanentDownloadError(f"{url} does not exist")
        url, options["enable_file_urls"] = Path(url).resolve().as_uri(), True
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        if cfg.cookies_file:
            try:
                shutil.copyfile(cfg.cookies_file, cookies)
            except OSError as err:
                raise RunStoppingError(f"cookies file {cfg.cookies_file} is unreadable: {err}") from None
        try:
            with yt_dlp.YoutubeDL(options) as ydl:
                ydl.download([url])
        except (yt_dlp.utils.DownloadError, OSError, http.cookiejar.LoadError) as err:
            message = re.sub(r"^ERROR:\s*", "", str(err)).strip()
            if "Did not get any data blocks" in message:
                message = f"the server sent an empty file (0 bytes): {message}"
            raise classify(err)(message) from None
        files = [p for p in partial.iterdir() if p.is_file() and not p.name.endswith(".part")]
        if not files:  # yt-dlp skips a video its filters or max_filesize refuse, without an error
            raise PermanentDownloadError(f"nothing downloaded: live, longer than max_duration_s "
                                         f"({cfg.max_duration_s:g}) or larger than max_filesize_mb ({cfg.max_filesize_mb:g})")
        if len(files) != 1:
            raise PermanentDownloadError(f"expected one downloaded file, found {len(files)}")
        probe_video(files[0], cfg)
        final = videos_dir / files[0].name
        files[0].replace(final)
        return final
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        cookies.unlink(missing_ok=True)
