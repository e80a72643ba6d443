"""Secrets out of every URL the project writes down (manifests, failure records, errors, logs).

Signed and token-bearing URLs are how private mirrors and object stores hand out files, and a URL
in a settings file or an annotation file ends up in messages. What is removed: the user-info part
(``user:password@``) and the value of every query or fragment parameter whose name looks like a
credential (``token``, ``key``, ``sig``, ``X-Amz-Signature``, ...). What stays is enough to say
which file it was: scheme, host, path and the other parameters (YouTube's ``v=``).
"""

from __future__ import annotations

import re

REDACTED = "REDACTED"

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@]*@")
_SECRET_NAME = re.compile(r"token|key|secret|sig|pass|pwd|auth|cred|session|jwt|code", re.IGNORECASE)
_PARAM = re.compile(r"([?&#;])([^=&#;]*)=([^&#;]*)")


def redact_url(url: str) -> str:
    """``url`` without its user-info and with secret-looking parameter values replaced."""
    url = _USERINFO.sub(rf"\g<1>{REDACTED}@", url)
    return _PARAM.sub(lambda m: f"{m[1]}{m[2]}={REDACTED}" if _SECRET_NAME.search(m[2]) else m[0], url)


def redact(text: str) -> str:
    """``text`` with every URL in it redacted."""
    return _URL.sub(lambda m: redact_url(m[0]), text)
