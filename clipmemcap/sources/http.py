"""Plain HTTP downloads (annotation archives, images) and the error classes all downloads share.

Errors are classed by their type (:func:`classify`), not by their message:
:class:`TransientDownloadError` is worth a retry (HTTP 5xx and 429, after waiting as long as the
server's ``Retry-After`` asks; time-outs, dropped connections); :class:`RunStoppingError` would
meet every download (a full disk, HTTP 401/403, a bot check, an unusable cookies file), so the run
stops and says why instead of replacing video after video; :class:`PermanentDownloadError` is
about this one file (404 and every other answer that will not change). Retrying is the caller's
policy; the flows retry transient errors with jittered back-off.
"""

from __future__ import annotations

import errno
import http.cookiejar
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from clipmemcap.core.atomic import atomic_path
from clipmemcap.core.redact import redact

MAX_RETRY_AFTER_S = 300.0  # a longer wait asked by a server is cut to this
BOT_CHECK = "confirm you’re not a bot", "confirm you're not a bot"  # YouTube's only sign of one


class DownloadError(RuntimeError):
    """Its message never holds a URL's secrets: it reaches logs, failure records and Prefect."""

    def __init__(self, message: str):
        super().__init__(redact(message))


class TransientDownloadError(DownloadError):
    pass


class PermanentDownloadError(DownloadError):
    pass


class RunStoppingError(DownloadError):
    """Every other download would fail the same way: stop the run (and say why)."""


def _status_class(status: int) -> type[DownloadError]:
    if status in (401, 403):
        return RunStoppingError
    if status == 429 or status >= 500:
        return TransientDownloadError
    return PermanentDownloadError


def _retry_after(headers) -> float:
    try:
        return min(max(float(headers.get("Retry-After", 0)), 0.0), MAX_RETRY_AFTER_S)
    except (TypeError, ValueError):  # an HTTP date, or garbage: the caller's back-off decides
        return 0.0


def classify(err: BaseException) -> type[DownloadError]:
    """The class of a download's failure, from the exceptions' types (yt-dlp's wrappers are
    followed to their cause); a 429 or 503 first waits out its ``Retry-After``."""
    from yt_dlp.networking.exceptions import HTTPError as YtHTTPError, TransportError
    from yt_dlp.utils import DownloadError as YtDownloadError, ExtractorError

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, YtHTTPError):
            if err.status in (429, 503):
                time.sleep(_retry_after(err.response.headers))
            return _status_class(err.status)
        if isinstance(err, urllib.error.HTTPError):
            if err.code in (429, 503):
                time.sleep(_retry_after(err.headers or {}))
            return _status_class(err.code)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            return RunStoppingError
        if isinstance(err, http.cookiejar.LoadError):
            return RunStoppingError
        if isinstance(err, (TransportError, TimeoutError, socket.timeout, ConnectionError)):
            return TransientDownloadError
        if isinstance(err, urllib.error.URLError) and isinstance(err.reason, BaseException):
            err = err.reason
            continue
        if isinstance(err, ExtractorError) and any(text in str(err).lower() for text in BOT_CHECK):
            return RunStoppingError
        if isinstance(err, YtDownloadError) and err.exc_info:
            err = err.exc_info[1]
            continue
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    return PermanentDownloadError


def is_local(url: str) -> bool:
    """A plain path (the synthetic benchmark's sources) rather than a URL."""
    return "://" not in url


def fetch_file(url: str, dest: Path, timeout_s: float) -> Path:
    """Download ``url`` to ``dest``; the file appears under its name only once complete."""
    try:
        with atomic_path(dest) as tmp:
            with urllib.request.urlopen(url, timeout=timeout_s) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out)
    except urllib.error.HTTPError as err:
        raise classify(err)(f"{url}: HTTP Error {err.code}: {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise classify(err)(f"{url}: {getattr(err, 'reason', err)}") from None
    return dest
