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

import contextlib
import errno
import http.client
import http.cookiejar
import math
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from clipmemcap.core.atomic import atomic_path
from clipmemcap.core.errors import InputError
from clipmemcap.core.redact import redact

MAX_RETRY_AFTER_S = 300.0  # a longer wait asked by a server is cut to this
MAX_DEADLINE_S = 7 * 24 * 3600.0  # what "no deadline" means: threading.Timer takes no infinity
BOT_CHECK = "confirm you’re not a bot", "confirm you're not a bot"  # YouTube's only sign of one


class DownloadError(InputError, RuntimeError):
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


class _Deadline:
    """One download's deadline: when it passes, the socket of every connection the download
    opened is shut, wherever its reader waits. A server that sends a byte a second, headers or
    body, never trips the socket time-out, which only bounds each wait for the next byte."""

    def __init__(self, seconds: float):
        seconds = min(seconds, MAX_DEADLINE_S)
        self.at, self.sockets = time.monotonic() + seconds, []
        self.timer = threading.Timer(seconds, self._shut)
        self.timer.daemon = True
        self.timer.start()

    @property
    def passed(self) -> bool:
        return time.monotonic() >= self.at

    def _shut(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):  # closed already
                sock.shutdown(socket.SHUT_RDWR)

    def opener(self) -> urllib.request.OpenerDirector:
        deadline = self

        def watched(base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
            class Connection(base):
                def connect(self):
                    super().connect()
                    deadline.sockets.append(self.sock)  # urllib drops its own reference to it
                    if deadline.passed:
                        deadline._shut()

            return Connection

        class Http(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(watched(http.client.HTTPConnection), req)

        class Https(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(watched(http.client.HTTPSConnection), req, context=self._context)

        return urllib.request.build_opener(Http, Https)


@contextlib.contextmanager
def _bounded(url: str, seconds: float, late: str) -> Iterator[_Deadline]:
    """A download's deadline, and its errors classed: ``late`` once the deadline has passed."""
    deadline = _Deadline(seconds)
    try:
        yield deadline
    except urllib.error.HTTPError as err:
        raise classify(err)(f"{url}: HTTP Error {err.code}: {err.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        if deadline.passed:
            raise TransientDownloadError(late) from None
        raise classify(err)(f"{url}: {getattr(err, 'reason', err)}") from None
    finally:
        deadline.timer.cancel()


def probe(url: str, timeout_s: float) -> dict:
    """What the server says of ``url`` without sending it: ETag, size and date from a HEAD
    request (a GET whose body is never read, where HEAD is refused), all within ``timeout_s``."""
    with _bounded(url, timeout_s, f"{url}: no answer within {timeout_s:g} s") as deadline:
        opener = deadline.opener()
        try:
            response = opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout_s)
        except urllib.error.HTTPError as err:
            if err.code not in (403, 405, 501):
                raise
            response = opener.open(url, timeout=timeout_s)
        with response:
            headers = response.headers
        return {"etag": headers.get("ETag"), "size": headers.get("Content-Length"),
                "last_modified": headers.get("Last-Modified")}


def fetch_file(url: str, dest: Path, timeout_s: float, deadline_s: float = math.inf) -> Path:
    """Download ``url`` to ``dest``; the file appears under its name only once complete.
    ``timeout_s`` bounds each wait for data, ``deadline_s`` the whole download."""
    late = f"{url}: not complete within its deadline of {deadline_s:g} s"
    with _bounded(url, deadline_s, late) as deadline:
        with atomic_path(dest) as tmp:
            with deadline.opener().open(url, timeout=timeout_s) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out)
            if deadline.passed:  # a shut socket can read as a clean end of the file: never publish it
                raise TransientDownloadError(late)
    return dest
