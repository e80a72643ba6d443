"""Plain HTTP downloads (annotation archives, images) and the error classes all downloads share.

Errors are split into :class:`TransientDownloadError` (worth a retry: HTTP 5xx and 429,
time-outs, dropped connections) and :class:`PermanentDownloadError` (404 and every other
answer that will not change). Retrying is the caller's policy; the flows retry transient errors
with back-off.
"""

from __future__ import annotations

import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from clipmemcap.core.atomic import atomic_path

TRANSIENT = re.compile(
    r"HTTP Error 5\d\d|HTTP Error 429|timed out|timeout|Connection (reset|refused|aborted)"
    r"|Remote end closed|IncompleteRead|temporarily|Errno 104|Errno 111",
    re.IGNORECASE,
)


class DownloadError(RuntimeError):
    pass


class TransientDownloadError(DownloadError):
    pass


class PermanentDownloadError(DownloadError):
    pass


def classify(message: str) -> type[DownloadError]:
    return TransientDownloadError if TRANSIENT.search(message) else PermanentDownloadError


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
        raise classify(f"HTTP Error {err.code}")(f"{url}: HTTP Error {err.code}: {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise classify(str(reason))(f"{url}: {reason}") from None
    return dest
