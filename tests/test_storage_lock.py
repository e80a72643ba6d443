"""The storage lock in an object store, on the real S3 API (moto_server on 127.0.0.1 stands in
for AWS, which cannot be reached here): conditional writes keep two runs apart, a dead run's lock
is taken over after its lease, and a run that lost its lock does not report success."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from upath import UPath

from clipmemcap.core.layout import Layout
from clipmemcap.core.storage_lock import StorageLocked, StorageLockLost, storage_lock
from conftest import ROOT, SECRET, TINY_CLIP

LOCK = "s3://clipmemcap/storage/.activitynet.lock"


def test_a_second_holder_waits_until_the_first_lets_go(s3):
    lock = UPath(LOCK)
    with storage_lock(lock, timeout_s=5, lease_s=60):
        assert lock.exists()
        with pytest.raises(StorageLocked, match=r"another run holds .*\.activitynet\.lock .*\"pid\""):
            with storage_lock(UPath(LOCK), timeout_s=1, lease_s=60):
                pass
        assert lock.exists()  # the waiter's failure leaves the holder's lock alone
    assert not lock.exists()

    released = threading.Event()

    def hold_then_release():
        with storage_lock(UPath(LOCK), timeout_s=5, lease_s=60):
            time.sleep(1.5)
        released.set()

    holder = threading.Thread(target=hold_then_release)
    holder.start()
    time.sleep(0.5)
    with storage_lock(UPath(LOCK), timeout_s=30, lease_s=60):
        assert released.is_set()  # it got the lock only after the holder let go
    holder.join()


def test_a_renewed_lock_is_kept_and_a_dead_runs_lock_is_taken_over(s3):
    lock = UPath(LOCK)
    with storage_lock(lock, timeout_s=5, lease_s=3):  # renewed every second
        with pytest.raises(StorageLocked):
            with storage_lock(UPath(LOCK), timeout_s=5, lease_s=3):  # > its lease: only renewal keeps it
                pass
    lock.write_bytes(b'{"host": "a machine that died"}')
    started = time.monotonic()
    with storage_lock(UPath(LOCK), timeout_s=30, lease_s=2):
        assert time.monotonic() - started >= 1.0  # not before the dead run's lease ran out
        assert b"died" not in lock.read_bytes()


def test_a_run_whose_lock_was_taken_over_fails_and_leaves_the_new_holders_lock(s3):
    lock = UPath(LOCK)
    with pytest.raises(StorageLockLost, match="taken over by another run"):
        with storage_lock(lock, timeout_s=5, lease_s=0.9):
            lock.write_bytes(b'{"host": "the run that took over"}')
            time.sleep(1.0)  # its next renewal finds someone else's lock
    assert lock.read_bytes() == b'{"host": "the run that took over"}'


def test_the_ingest_flow_waits_for_another_machines_lock_on_the_store(s3, tmp_path, prefect_server):
    root = UPath("s3://clipmemcap/storage")
    held = Layout(root, tmp_path / "machine-a").activitynet.lock
    settings = TINY_CLIP + [f"storage.root={root}", f"storage.work={tmp_path / 'machine-b'}", "storage.lock_timeout_s=1"]
    with storage_lock(held, timeout_s=0, lease_s=60):
        done = subprocess.run([sys.executable, "-m", "flows.activitynet", "--params", str(ROOT / "params.yaml"),
                               *[a for o in settings for a in ("--set", o)]],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert f"another run holds {held}" in done.stderr + done.stdout
    assert SECRET not in done.stderr + done.stdout
    assert not held.exists()  # released
    assert not (root / "activitynet").exists()
