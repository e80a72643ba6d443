"""Shared fixtures: an offline environment, a real Prefect server, an HTTP video server on
127.0.0.1 with scripted faults, and small synthetic sources."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Prefect reads its settings when first imported, so the API address is fixed here, before any
# test imports it; the server itself starts in the `prefect_server` fixture.
PREFECT_PORT = free_port()
PREFECT_HOME = Path(os.environ.get("PYTEST_PREFECT_HOME", f"/tmp/clipmemcap-prefect-{os.getpid()}"))
os.environ.update({
    "HF_HUB_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_HOME": str(PREFECT_HOME),
    "PREFECT_API_URL": f"http://127.0.0.1:{PREFECT_PORT}/api",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
})

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).parent / "assets"
TOKENIZER = ROOT / "clipmemcap" / "model" / "gpt2_tokenizer"  # the real GPT-2 tokenizer files
GPT2_TINY = ROOT / "clipmemcap" / "model" / "lm_configs" / "gpt2-tiny.json"  # GPT-2's architecture, tiny and random
TINY_CLIP = ["clip.model=TinyViT", "clip.pretrained=null", "clip.device=cpu", "clip.batch_size=16"]


def wait_for_server(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    """Until ``url`` answers; a server that exits or stays silent fails with its log."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"{url} did not answer:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server (SQLite under a temporary PREFECT_HOME) on 127.0.0.1."""
    PREFECT_HOME.mkdir(parents=True, exist_ok=True)
    log = open(PREFECT_HOME / "server.log", "w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
         "--port", str(PREFECT_PORT), "--no-ui"], stdout=log, stderr=subprocess.STDOUT)
    wait_for_server(f"http://127.0.0.1:{PREFECT_PORT}/api/health", process, PREFECT_HOME / "server.log", 120)
    yield os.environ["PREFECT_API_URL"]
    if "prefect.logging.handlers" in sys.modules:  # send buffered run logs before the server goes
        sys.modules["prefect.logging.handlers"].APILogWorker.drain_all(timeout=10)
    process.terminate()
    process.wait(timeout=30)
    shutil.rmtree(PREFECT_HOME, ignore_errors=True)


class FaultyServer:
    """Static files on 127.0.0.1 plus scripted misbehaviour per URL path:
    ``status`` (always that HTTP status), ``fail_first`` (N requests answered 500, then the file),
    ``stall`` (accept and never answer), ``drip`` (answer 200 with a large Content-Length, then one
    byte every half second: no socket timeout ever fires), ``retry_after`` (the first N requests
    answered 429 with a Retry-After). ``hits`` counts requests per path, ``times`` notes when."""

    def __init__(self, root: Path):
        self.root, self.status, self.fail_first, self.stall, self.drip = root, {}, {}, set(), set()
        self.retry_after: dict[str, tuple[int, int]] = {}  # path -> (first N requests answered 429, seconds)
        self.times: dict[str, list[float]] = {}
        self.hits: Counter = Counter()
        self.closing = threading.Event()
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(server.root), **kwargs)

            def log_message(self, *args):
                pass

            def guess_type(self, path):
                return "video/mp4" if str(path).endswith(".mp4") else super().guess_type(path)

            def do_GET(self):
                path = self.path.split("?")[0]
                server.hits[path] += 1
                server.times.setdefault(path, []).append(time.monotonic())
                if path in server.retry_after and server.hits[path] <= server.retry_after[path][0]:
                    self.send_response(429)
                    self.send_header("Retry-After", str(server.retry_after[path][1]))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path in server.stall:
                    server.closing.wait(60)
                    return
                if path in server.status:
                    return self.send_error(server.status[path])
                if path in server.drip:
                    self.send_response(200)
                    self.send_header("Content-Type", "video/mp4")
                    self.send_header("Content-Length", str(10**8))
                    self.end_headers()
                    for _ in range(240):  # bounded: two minutes at most
                        if server.closing.wait(0.5):
                            return
                        try:
                            self.wfile.write(b"\0")
                            self.wfile.flush()
                        except OSError:
                            return
                    return
                if server.fail_first.get(path, 0) >= server.hits[path]:
                    return self.send_error(500)
                return super().do_GET()

            def end_headers(self):
                # an ETag, as real file servers send: DVC identifies a URL dependency by it
                file = server.root / self.path.split("?")[0].lstrip("/")
                if file.is_file():
                    stat = file.stat()
                    self.send_header("ETag", f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"')
                super().end_headers()

            do_HEAD = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = FaultyServer(root)
    yield server
    server.close()


SECRET = "not-a-real-secret-7f3a"  # the object store's key: must never reach a log, a manifest or the repository


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """moto_server: the S3 API on 127.0.0.1, with a bucket ``clipmemcap`` (it stands in for AWS,
    which cannot be reached here). Credentials live only in the environment, as they would for a
    real store. Yields the endpoint URL."""
    port = free_port()
    log = tmp_path / "moto.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        for key, value in {"AWS_ACCESS_KEY_ID": "clipmemcap-test", "AWS_SECRET_ACCESS_KEY": SECRET,
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                           "AWS_EC2_METADATA_DISABLED": "true"}.items():
            monkeypatch.setenv(key, value)
        wait_for_server(f"http://127.0.0.1:{port}/", server, log, 60)
        import s3fs
        from upath import UPath

        s3fs.S3FileSystem.clear_instance_cache()  # a cached client would still talk to the last test's server
        UPath("s3://clipmemcap").fs.mkdir("clipmemcap")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def ingest_overrides(server_url: str, storage: Path, train: int, test: int, val_fraction: float = 0.0) -> list[str]:
    """Settings that point the ActivityNet flow at a FaultyServer, with the tiny CLIP config."""
    return TINY_CLIP + [
        f"storage.root={storage}",
        f"activitynet.annotations_url={server_url}/captions.zip",
        f"activitynet.video_url_template={server_url}/videos/v_{{youtube_id}}.mp4",
        f"activitynet.subset.train_videos={train}",
        f"activitynet.subset.test_videos={test}",
        f"activitynet.subset.val_fraction={val_fraction}",
        "activitynet.download.retries=1",
        "activitynet.download.retry_delay_s=0.2",
        "activitynet.download.socket_timeout_s=2",
        "activitynet.download.concurrency=3",
    ]
