"""One ingest run at a time per storage root, also across machines.

The lock lives beside the outputs it protects, not in a run's local work folder: two machines
writing to one ``s3://`` root each have their own work folder, and would otherwise prune shards and
wipe stale encoders under each other.

- On local disk (or a shared file system): a file lock, ``<root>/.<dataset>.lock``.
- In an object store: an object created with a conditional write (``If-None-Match: *``), which
  the store lets exactly one writer create. The holder renews it (a conditional write on its own
  ETag) every third of the lease; an object left by a machine that died is taken over, again by a
  conditional write, once its last renewal is older than the lease. A holder whose object was
  taken over has lost the lock: leaving the block then raises, so the run does not report success.
  Stores without conditional writes cannot hold this lock safely; the error says so.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout
from upath import UPath

from clipmemcap.core.atomic import on_local_disk


class StorageLocked(TimeoutError):
    """Another run held the storage lock for longer than this run would wait."""


class StorageLockLost(RuntimeError):
    """This run's lock was taken over (its renewals stopped for longer than the lease)."""


@contextmanager
def storage_lock(lock: Path | UPath, timeout_s: float, lease_s: float) -> Iterator[None]:
    """Hold ``lock`` for the block; wait at most ``timeout_s`` for another run to let it go."""
    if on_local_disk(lock):
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(lock, timeout=timeout_s):
                yield
        except Timeout:
            raise StorageLocked(f"another run holds {lock}; waited {timeout_s:g} s "
                                "(storage.lock_timeout_s)") from None
        return
    held = _ObjectLock(lock, lease_s)
    held.acquire(timeout_s)
    try:
        yield
    finally:
        held.release()


class _ObjectLock:
    def __init__(self, lock: UPath, lease_s: float):
        self.lock, self.lease_s = lock, lease_s
        self.owner = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "run": uuid.uuid4().hex})
        self.etag: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name=f"lock {lock}", daemon=True)

    def acquire(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.etag = self._create() or self._take_over_expired()
            if self.etag:
                self._renewer.start()
                return
            if time.monotonic() >= deadline:
                raise StorageLocked(f"another run holds {self.lock} ({self._holder()}); waited "
                                    f"{timeout_s:g} s (storage.lock_timeout_s)")
            time.sleep(min(random.uniform(0.5, 2.0), max(0.0, deadline - time.monotonic())))

    def release(self) -> None:
        self._stop.set()
        if self._renewer.is_alive():
            self._renewer.join()
        if not self.lost:
            try:  # only our own object: a conditional delete on our ETag
                self._call("delete_object", IfMatch=self.etag)
            except FileNotFoundError:
                pass
            except OSError as err:
                if _error_code(err) not in CONDITION_FAILED:
                    raise
                self.lost = True
        if self.lost:
            raise StorageLockLost(f"{self.lock} was taken over by another run while this one held it "
                                  f"(no renewal for {self.lease_s:g} s, storage.lock_lease_s): its outputs "
                                  "may be mixed with the other run's; run again")

    def _put(self, **condition) -> str | None:
        """The new ETag, or None when the store refused the condition."""
        try:
            return self._call("put_object", Body=self.owner.encode(), **condition)["ETag"]
        except OSError as err:
            if _error_code(err) in CONDITION_FAILED:
                return None
            if _error_code(err) == "NotImplemented":
                raise OSError(f"{self.lock}: this object store has no conditional writes, so two runs "
                              "on it cannot be kept apart; use one machine per storage.root") from err
            raise

    def _create(self) -> str | None:
        return self._put(IfNoneMatch="*")

    def _take_over_expired(self) -> str | None:
        try:
            info = self.lock.fs.info(self.lock.path, refresh=True)
        except FileNotFoundError:
            return None  # released meanwhile: the next create may win
        renewed = info["LastModified"]
        if (datetime.now(timezone.utc) - renewed).total_seconds() < self.lease_s:
            return None
        return self._put(IfMatch=info["ETag"])

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            etag = self._put(IfMatch=self.etag)
            if etag is None:
                self.lost = True
                return
            self.etag = etag

    def _holder(self) -> str:
        try:
            return self.lock.read_text()
        except OSError:
            return "holder unknown"

    def _call(self, method: str, **kwargs):
        fs = self.lock.fs
        if not hasattr(fs, "call_s3"):
            raise NotImplementedError(f"{self.lock}: run locks in an object store are implemented for S3 "
                                      "(s3://) only; use a local storage.root or an S3 bucket")
        bucket, key, _ = fs.split_path(self.lock.path)
        return fs.call_s3(method, Bucket=bucket, Key=key, **kwargs)


# S3 answers a failed If-Match / If-None-Match with 412, and a conditional write racing another
# with 409.
CONDITION_FAILED = {"PreconditionFailed", "ConditionalRequestConflict"}


def _error_code(err: OSError) -> str | None:
    response = getattr(err.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code")
