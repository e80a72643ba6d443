"""Download failures are classed by the exceptions' types, not by their messages."""

import contextlib
import errno
import http.cookiejar
import io
import socket
import threading
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


SECRET = "s3cr3t-Tok3n"


@pytest.mark.parametrize("url,kept", [
    (f"https://mirror.example/a/captions.zip?token={SECRET}&v=1", "https://mirror.example/a/captions.zip?token=REDACTED&v=1"),
    (f"https://user:{SECRET}@mirror.example/x.mp4", "https://REDACTED@mirror.example/x.mp4"),
    (f"https://b.s3.amazonaws.com/k.mp4?X-Amz-Credential={SECRET}&X-Amz-Signature={SECRET}&X-Amz-Expires=60",
     "https://b.s3.amazonaws.com/k.mp4?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED&X-Amz-Expires=60"),
    (f"https://host/v?sig={SECRET}#access_token={SECRET}", "https://host/v?sig=REDACTED#access_token=REDACTED"),
    ("https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=10", "https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=10"),
])
def test_secrets_in_urls_are_redacted_and_the_rest_kept(url, kept):
    from clipmemcap.core.redact import redact, redact_url

    assert redact_url(url) == kept
    assert redact(f"HTTP Error 404 for '{url}' (after 3 tries)") == f"HTTP Error 404 for '{kept}' (after 3 tries)"


def test_failure_records_and_download_errors_never_hold_a_urls_secret():
    from clipmemcap.core.failures import Failure

    message = f"unable to download https://mirror.example/v.mp4?api_key={SECRET}: HTTP Error 500"
    for text in (Failure("v_x", "download", message).reason, str(TransientDownloadError(message)),
                 str(classify(http_error(403))(message))):
        assert SECRET not in text and "api_key=REDACTED" in text


def _dripping_server(body: bool) -> str:
    """A server on 127.0.0.1 that answers one request a byte every 0.2 s: its headers (never
    ending), or a body far longer than what it sends. No socket time-out ever fires."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def answer():
        connection, _ = server.accept()
        connection.recv(4096)
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" if body else b"HTTP/1.1 200 OK\r\nX-Slow: "
        with contextlib.suppress(OSError):
            if body:
                connection.sendall(head)
            for _ in range(100):
                connection.send(b"x" if body else b"a")
                time.sleep(0.2)
        connection.close()
        server.close()

    threading.Thread(target=answer, daemon=True).start()
    return f"http://127.0.0.1:{server.getsockname()[1]}/captions.zip"


@pytest.mark.parametrize("body", [False, True])
def test_a_download_ends_at_its_deadline_however_slowly_the_server_sends(tmp_path, body):
    from clipmemcap.sources.http import fetch_file

    started = time.monotonic()
    with pytest.raises(TransientDownloadError, match="not complete within its deadline of 2 s"):
        fetch_file(_dripping_server(body), tmp_path / "captions.zip", timeout_s=1, deadline_s=2)
    assert time.monotonic() - started < 4
    assert not list(tmp_path.iterdir())  # nothing half-written is left


def test_the_coco_captions_and_the_sources_check_have_deadlines_too(tmp_path):
    from clipmemcap.core.config import load_config
    from clipmemcap.sources.remote import check_sources
    from flows.coco import fetch_captions

    started = time.monotonic()
    with pytest.raises(TransientDownloadError, match="cannot fetch the COCO captions: .* deadline of 2 s.*offline, set coco"):
        fetch_captions.fn(_dripping_server(True), tmp_path / "captions", 1, 2)
    cfg = load_config(None, [f"activitynet.annotations_url={_dripping_server(False)}",
                             "activitynet.download.socket_timeout_s=2"])
    with pytest.raises(TransientDownloadError, match="cannot reach activitynet.annotations_url: .* no answer within 2 s"):
        check_sources(cfg)
    assert time.monotonic() - started < 8
