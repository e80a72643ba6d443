"""Annotation files in JSON: errors that name the file and the position of the fault."""

from __future__ import annotations

import json


class AnnotationError(ValueError):
    """The annotation source itself is unusable (bad zip, malformed JSON, missing file)."""


def parse_json(name: str, payload: bytes | str) -> dict:
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as err:
        raise AnnotationError(
            f"{name}: malformed JSON at line {err.lineno} column {err.colno} "
            f"(char {err.pos}): {err.msg}"
        ) from err
    except (ValueError, RecursionError) as err:  # a number of thousands of digits; nesting too deep
        raise AnnotationError(f"{name}: unreadable JSON ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{name}: expected a JSON object, got {type(data).__name__}")
    return data
