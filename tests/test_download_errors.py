"""Download failures are classed by the exceptions' types, not by their messages."""

import errno
import http.cookiejar
import io
import time
import urllib.error

import pytest
from yt_dlp.utils import DownloadError, ExtractorError

from clipmemcap.sources.http import PermanentDownloadError, RunStoppingError, TransientDownloadError, classify


def http_error(code, headers=None):
    return urllib.error.HTTPError("http://127.0.0.1/x", code, "status", headers or {}, io.BytesIO())


@pytest.mark.parametrize("err,cls", [
    (http_error(404), PermanentDownloadError),
    (http_error(403), RunStoppingError),
    (http_error(401), RunStoppingError),
    (http_error(500), TransientDownloadError),
    (urllib.error.URLError(TimeoutError("timed out")), TransientDownloadError),
    (OSError(errno.ENOSPC, "No space left on device"), RunStoppingError),
    (http.cookiejar.LoadError("invalid Netscape format cookies file"), RunStoppingError),
    (DownloadError("ERROR: x", exc_info=(ExtractorError, ExtractorError(
        "Sign in to confirm you\u2019re not a bot", expected=True), None)), RunStoppingError),
    (DownloadError("ERROR: private", exc_info=(ExtractorError, ExtractorError("Private video", expected=True), None)),
     PermanentDownloadError),
    # a message that merely says "timed out" is not a time-out: the regex classed it transient
    (ValueError("the video timed out of its licence"), PermanentDownloadError),
])
def test_errors_are_classed_by_type(err, cls):
    assert classify(err) is cls


def test_a_429_waits_out_its_retry_after():
    started = time.monotonic()
    assert classify(http_error(429, {"Retry-After": "1"})) is TransientDownloadError
    assert time.monotonic() - started >= 1.0
