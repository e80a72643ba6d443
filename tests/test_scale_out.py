"""Scale-out, all on 127.0.0.1: the data flows as deployments of a real Prefect server driven by
the `prefect` CLI, per-video work on a real Dask cluster (scheduler and two workers started here),
and the real S3 API (moto_server) as the storage root and as a DVC remote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from upath import UPath

from clipmemcap.sources.synthetic import make_coco_source, make_activitynet_source
from conftest import ROOT, SECRET, TINY_CLIP, free_port, ingest_overrides

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
PARAMS = str(ROOT / "params.yaml")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    videos = make_activitynet_source(root / "activitynet", n_train=3, n_test=1, min_duration=3.0, max_duration=5.0, seed=2)
    images = make_coco_source(root / "coco", n_images=6, fmt="karpathy", seed=3)
    return videos, images


def activitynet_settings(http_server, sources, storage) -> list[str]:
    videos = sources[0]
    if not (http_server.root / "captions.zip").exists():
        shutil.copytree(videos.videos_dir, http_server.root / "videos")
        shutil.copy(videos.zip_path, http_server.root / "captions.zip")
    return ingest_overrides(http_server.url, storage, train=3, test=1)


def coco_settings(sources, storage) -> list[str]:
    images = sources[1]
    return TINY_CLIP + [f"storage.root={storage}", f"coco.captions_url={images.captions_path}",
                        f"coco.images_dir={images.images_root}"]


@contextmanager
def background(args: list, log: Path, env: dict | None = None):
    """A server process for the duration of the block; its output goes to ``log``."""
    with open(log, "w") as out:
        process = subprocess.Popen([str(a) for a in args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_until(check, what: str, log: Path, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def tree_bytes(root: Path | UPath) -> dict[str, bytes]:
    """Every file under ``root`` (local or in the object store): relative path -> bytes."""
    if isinstance(root, Path):
        files = {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()}
    else:
        files = {path[len(root.path) + 1:]: root.fs.open(path, "rb") for path in root.fs.find(root.path)}
    assert files, f"nothing under {root}"
    return {name: (f.read_bytes() if isinstance(f, Path) else f.read()) for name, f in sorted(files.items())}


def test_every_flow_runs_as_a_served_deployment_and_failures_exit_non_zero(tmp_path, http_server, prefect_server, sources):
    env = {**os.environ, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}

    def deployment_run(name: str, overrides: list[str]) -> subprocess.CompletedProcess:
        parameters = json.dumps({"params": PARAMS, "overrides": overrides})
        return subprocess.run([BIN / "prefect", "deployment", "run", name, "--params", parameters,
                               "--watch", "--watch-timeout", "300"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=400)

    def served() -> bool:
        listing = subprocess.run([BIN / "prefect", "deployment", "ls"], env=env, capture_output=True, text=True)
        return all(name in listing.stdout for name in ("activitynet-ingest/default", "coco-ingest/default"))

    log = tmp_path / "serve.log"
    storage = tmp_path / "storage"
    with background([sys.executable, "-m", "flows.serve"], log, env):
        wait_until(served, "the served deployments", log)
        ok = deployment_run("activitynet-ingest/default", activitynet_settings(http_server, sources, storage))
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "Completed" in ok.stdout
        manifest = json.loads((storage / "activitynet" / "manifest.json").read_text())
        assert manifest["counts"]["videos"] == {"train": 3, "val": 0, "test": 1}
        assert len(list((storage / "activitynet" / "frames").glob("*.parquet"))) == 4

        ok = deployment_run("coco-ingest/default", coco_settings(sources, storage))
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert json.loads((storage / "coco" / "manifest.json").read_text())["counts"]["images"] == 6

        missing = activitynet_settings(http_server, sources, tmp_path / "other") + [
            f"activitynet.annotations_url={http_server.url}/no-such-captions.zip"]
        failed = deployment_run("activitynet-ingest/default", missing)
        assert failed.returncode != 0
        assert "Failed" in failed.stdout + failed.stderr
        assert not (tmp_path / "other" / "activitynet" / "manifest.json").exists()


def test_a_dask_cluster_gives_the_same_outputs_as_a_local_run(tmp_path, http_server, prefect_server, sources):
    from distributed import Client, get_task_stream

    from flows.activitynet import activitynet_ingest

    activitynet_ingest(params=PARAMS, overrides=activitynet_settings(http_server, sources, tmp_path / "local"))
    expected = tree_bytes(tmp_path / "local" / "activitynet")

    address = f"tcp://127.0.0.1:{free_port()}"
    scheduler_log, worker_logs = tmp_path / "scheduler.log", [tmp_path / f"worker-{i}.log" for i in range(2)]
    worker = [BIN / "dask", "worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"]
    with (background([BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                      "--no-dashboard"], scheduler_log),
          background(worker, worker_logs[0]), background(worker, worker_logs[1]),
          Client(address, timeout=60) as client):
        client.wait_for_workers(2, timeout=90)
        workers = set(client.scheduler_info()["workers"])
        with get_task_stream(client) as stream:
            manifest = activitynet_ingest(params=PARAMS, overrides=activitynet_settings(
                http_server, sources, tmp_path / "cluster") + [f"dask.address={address}"])
    assert manifest["counts"]["videos"] == {"train": 3, "val": 0, "test": 1}
    ran_on = [task["worker"] for task in stream.data]
    assert len(ran_on) >= 4 and set(ran_on) <= workers  # every video was a task on the cluster
    assert not (tmp_path / "cluster" / "cache" / "activitynet" / "videos").exists()  # no download here
    assert tree_bytes(tmp_path / "cluster" / "activitynet") == expected


def test_s3_storage_root_holds_the_same_bytes_and_serves_as_a_dvc_remote(tmp_path, http_server, prefect_server, sources, s3):
    from flows.coco import coco_ingest

    from flows.activitynet import activitynet_ingest

    local, remote = tmp_path / "local", UPath("s3://clipmemcap/storage")
    work = f"storage.work={tmp_path / 'work'}"  # downloads and locks stay on local disk
    run = [sys.executable, "-m", "flows.activitynet", "--params", PARAMS]
    for storage, extra in ((local, []), (remote, [work])):
        args = [a for o in activitynet_settings(http_server, sources, storage) + extra for a in ("--set", o)]
        done = subprocess.run(run + args, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert SECRET not in done.stdout + done.stderr
        coco_ingest(params=PARAMS, overrides=coco_settings(sources, storage) + extra)
    for dataset in ("activitynet", "coco"):
        written = tree_bytes(remote / dataset)
        assert written == tree_bytes(local / dataset)
        assert {"manifest.json", "failures.parquet"} <= set(written)
    assert SECRET not in json.dumps(tree_bytes(local / "activitynet")["manifest.json"].decode())

    # resuming against the store: finished videos are neither fetched nor written again
    hits = dict(http_server.hits)
    activitynet_ingest(params=PARAMS, overrides=activitynet_settings(http_server, sources, remote) + [work])
    assert {p: n for p, n in http_server.hits.items() if p.startswith("/videos/")} == \
           {p: n for p, n in hits.items() if p.startswith("/videos/")}

    # the same store as a DVC remote: push, lose the workspace and cache, pull back the same bytes
    repo = tmp_path / "repo"
    shutil.copytree(local / "activitynet", repo / "data" / "activitynet")

    def sh(*args: str) -> str:
        done = subprocess.run([str(a) for a in args], cwd=repo, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    sh("git", "init", "-q")
    sh(BIN / "dvc", "init", "-q")
    sh(BIN / "dvc", "remote", "add", "-d", "store", "s3://clipmemcap/dvc")
    sh(BIN / "dvc", "remote", "modify", "store", "endpointurl", s3)
    sh(BIN / "dvc", "add", "data/activitynet")
    assert SECRET not in sh(BIN / "dvc", "push")
    assert UPath("s3://clipmemcap/dvc").fs.find("clipmemcap/dvc")
    shutil.rmtree(repo / "data" / "activitynet")
    shutil.rmtree(repo / ".dvc" / "cache")
    sh(BIN / "dvc", "pull")
    assert tree_bytes(repo / "data" / "activitynet") == tree_bytes(local / "activitynet")
    assert SECRET not in (repo / ".dvc" / "config").read_text()
