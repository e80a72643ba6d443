"""How a command reports bad input: one line that names it, exit status 1, never a traceback.

Input errors are those about what a user or the world handed us (a settings file, a preset, a
submission, a shared captioner folder, a URL, a video), not bugs: :class:`InputError` and its
kinds (download and decode errors), ``ValueError`` (bad values, unreadable JSON, settings that fail
validation) and ``OSError`` (a missing, unreadable or unwritable file). Every entry point (the
``clipmemcap`` command, each DVC stage, the flows' command lines, the official-protocol evaluator)
runs its work inside :func:`reported`; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import ValidationError

MAX_MESSAGE = 600  # characters: a hostile value (a 10 MB sentence) must not become a 10 MB line


class InputError(Exception):
    """Input that cannot be used; the message names it."""


INPUT_ERRORS = (InputError, ValueError, OSError)


def one_line(err: BaseException) -> str:
    """``err`` as one line: pydantic's multi-line report becomes ``setting: problem; ...``."""
    if isinstance(err, ValidationError):
        text = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in err.errors())
    elif isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


@contextmanager
def reported(prog: str) -> Iterator[None]:
    """Run the block; an input error ends the process with ``prog: message`` and status 1."""
    try:
        yield
    except INPUT_ERRORS as err:
        sys.stderr.flush()
        sys.exit(f"{prog}: {one_line(err)}")
