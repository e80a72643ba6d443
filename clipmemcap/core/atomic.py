"""Atomic file publication: a file is visible under its final name only once complete.

Writers write to a hidden temporary name in the same folder and ``os.replace`` it into place, so
a run killed at any moment leaves either the old file, the new file, or a stray ``.*.tmp`` that
:func:`remove_stale_temporaries` sweeps away on the next run.

A final path in an object store (a non-local ``UPath`` such as ``s3://bucket/key``) is written
to a local temporary file and uploaded in one PUT, which stores objects whole or not at all; the
object gets exactly the bytes the local file would have had.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from upath import UPath

TMP_SUFFIX = ".tmp"


def temporary_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def on_local_disk(path: Path | UPath) -> bool:
    return isinstance(path, Path)  # a local UPath is a pathlib.Path; an object-store one is not


@contextmanager
def atomic_path(final: Path | UPath | str) -> Iterator[Path]:
    """Yield a local temporary path; on success it replaces ``final``, on error it is deleted."""
    if isinstance(final, UPath) and not on_local_disk(final):
        with tempfile.TemporaryDirectory(prefix="clipmemcap-upload-") as folder:
            tmp = Path(folder) / final.name
            yield tmp
            final.fs.put_file(str(tmp), final.path)
        return
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(final)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(final: Path | str, payload) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def remove_stale_temporaries(folder: Path | UPath) -> int:
    """Delete leftovers of killed writers. Call only while holding the storage lock."""
    if not on_local_disk(folder) or not folder.exists():  # an object store never holds partial writes
        return 0
    stale = [p for p in folder.rglob(f".*{TMP_SUFFIX}") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)
