"""Reading files handed to us (annotations, settings, submissions, a shared captioner's configs):
errors that name the file and the position of the fault, and bounds on what a file may make us read.

A path may name anything: a device such as ``/dev/zero`` (endless), a fifo (blocks forever), a
folder, a file of gigabytes. :func:`read_bounded` reads regular files of a bounded size only.
"""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path

MAX_DIGITS = 30  # of a JSON integer in a configuration: more is no size or count anyone means


class AnnotationError(ValueError):
    """The annotation source itself is unusable (bad zip, malformed JSON, missing file)."""


def read_bounded(path: str | Path, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of ``path``, a regular file (links followed) of at most ``max_bytes``."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except OSError as err:
        raise ValueError(f"{what} {path}: {err.strerror or err}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{what} {path} is not a regular file")
    with open(path, "rb") as file:
        data = file.read(max_bytes + 1)  # the size can change between stat and read
    if len(data) > max_bytes:
        raise ValueError(f"{what} {path} is larger than {max_bytes:,} bytes")
    return data


def _not_json(constant: str):
    raise ValueError(f"{constant} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is not a finite number")
    return value


def _short_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits ({text[:20]}...)")
    return int(text)


def parse_json(name: str, payload: bytes | str, finite: bool = False, kind: type = dict):
    """``payload`` parsed; ``finite``: NaN, Infinity, 1e999 and integers of more than
    :data:`MAX_DIGITS` digits are errors too (a configuration's numbers become sizes)."""
    strict = {"parse_constant": _not_json, "parse_float": _finite_float, "parse_int": _short_int} if finite else {}
    try:
        data = json.loads(payload, **strict)
    except json.JSONDecodeError as err:
        raise AnnotationError(
            f"{name}: malformed JSON at line {err.lineno} column {err.colno} "
            f"(char {err.pos}): {err.msg}"
        ) from err
    except (ValueError, RecursionError) as err:  # a number of thousands of digits; nesting too deep
        raise AnnotationError(f"{name}: unreadable JSON ({type(err).__name__}: {err})") from None
    if not isinstance(data, kind):
        raise AnnotationError(f"{name}: expected a JSON {kind.__name__ if kind is not dict else 'object'}, "
                              f"got {type(data).__name__}")
    return data


def read_json(path: str | Path, max_bytes: int, what: str = "file", kind: type = dict):
    """A bounded JSON file with finite numbers (see :func:`read_bounded`, :func:`parse_json`)."""
    return parse_json(f"{what} {path}", read_bounded(path, max_bytes, what), finite=True, kind=kind)
