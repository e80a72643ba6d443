"""The ActivityNet flow end to end: a real Prefect server, yt-dlp fetching from an HTTP server on
127.0.0.1, real ffmpeg on real h264 files, the real open_clip code path with a tiny config."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import open_clip
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yt_dlp

from clipmemcap.cli import main
from clipmemcap.frames import embed as ingest
from clipmemcap.frames.clip_encoder import ClipEncoder
from clipmemcap.core.grid import grid_range
from clipmemcap.core.layout import Layout
from clipmemcap.core.storage_lock import storage_lock
from clipmemcap.core.shards import read_frames
from clipmemcap.sources.synthetic import make_activitynet_source, write_captions_zip, write_video
from conftest import ROOT, ingest_overrides

pytestmark = pytest.mark.slow

FAULTS = {  # video id -> (stage, words the reason must contain)
    "v_404notfound": ("download", "404"),
    "v_stalledxxxx": ("download", "gave up after retries"),
    "v_truncatedxx": ("decode", "decoded"),
    "v_notavideoxx": ("download", "unreadable by ffprobe"),
    "v_audioonlyxx": ("download", "no video stream"),
    "v_zerobytesxx": ("download", "empty"),
    "v_tooshortxxx": ("decode", "before"),
    "../../x": ("annotations", "does not match"),
    "v_bothsplitsx": ("annotations", "both train.json and val_1.json"),
}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Synthetic good videos plus one video or entry per fault, and a fixed tiny CLIP checkpoint
    (so that separate processes embed identically)."""
    root = tmp_path_factory.mktemp("source")
    src = make_activitynet_source(root, n_train=5, n_test=2, min_duration=3.0, max_duration=6.0, seed=1)
    train, val_1, val_2 = (src.annotations[n] for n in ("train.json", "val_1.json", "val_2.json"))
    videos = src.videos_dir
    good_id = sorted(train)[0]
    good = videos / f"{good_id}.mp4"
    entry = dict(train[good_id])

    shutil.copy(good, videos / "v_flaky500ok_.mp4")
    train["v_flaky500ok_"] = entry
    shutil.copy(good, videos / "v_bothsplitsx.mp4")
    train["v_bothsplitsx"] = val_1["v_bothsplitsx"] = entry
    data = good.read_bytes()
    (videos / "v_truncatedxx.mp4").write_bytes(data[: len(data) // 3])
    (videos / "v_notavideoxx.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
    (videos / "v_zerobytesxx.mp4").write_bytes(b"")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=5",
                    "-c:a", "aac", "-f", "mp4", str(videos / "v_audioonlyxx.mp4")], check=True)
    write_video(videos / "v_tooshortxxx.mp4", 2.0, 320, 240)
    for vid in ("v_404notfound", "v_stalledxxxx", "v_truncatedxx", "v_notavideoxx", "v_audioonlyxx", "v_zerobytesxx"):
        train[vid] = entry
    train["v_tooshortxxx"] = {"duration": 8.0, "timestamps": [[1.0, 7.0]], "sentences": ["too short"]}
    train["../../x"] = entry
    quirky = sorted(train)[1]  # a good video whose annotation has every kind of bad segment
    train[quirky] = {
        "duration": train[quirky]["duration"],
        "timestamps": train[quirky]["timestamps"] + [[2.5, 1.0], [1.0, 999.0], [-1.0, 2.0], [0.5, 1.5]],
        "sentences": train[quirky]["sentences"] + ["backwards", " clamped ", "negative", "   "],
    }
    write_captions_zip(src.zip_path, {"train.json": train, "val_1.json": val_1, "val_2.json": val_2})

    torch.manual_seed(0)
    checkpoint = root / "tiny-clip.pt"
    torch.save(open_clip.create_model("TinyViT", pretrained=None).state_dict(), checkpoint)
    return src, quirky, checkpoint


def serve(http_server, source):
    src = source[0]
    shutil.copytree(src.videos_dir, http_server.root / "videos")
    shutil.copy(src.zip_path, http_server.root / "captions.zip")
    http_server.status["/videos/v_404notfound.mp4"] = 404
    http_server.stall.add("/videos/v_stalledxxxx.mp4")
    http_server.fail_first["/videos/v_flaky500ok_.mp4"] = 1


def overrides(http_server, storage, source):
    return ingest_overrides(http_server.url, storage, train=10, test=2) + [f"clip.pretrained={source[2]}"]


def test_flow_end_to_end_with_every_fault(tmp_path, http_server, prefect_server, source, monkeypatch):
    from flows.activitynet import activitynet_ingest

    serve(http_server, source)
    src, quirky, _ = source
    decoded, embedded = {}, []
    real_decode, real_encode = ingest.decode_range, ClipEncoder.encode

    def counting_decode(path, *args, **kwargs):  # instrumentation only: the real decoder runs
        for block in real_decode(path, *args, **kwargs):
            decoded[path.stem] = decoded.get(path.stem, 0) + len(block)
            yield block

    def counting_encode(self, frames):
        embedded.append(len(frames))
        return real_encode(self, frames)

    monkeypatch.setattr(ingest, "decode_range", counting_decode)
    monkeypatch.setattr(ClipEncoder, "encode", counting_encode)
    storage = tmp_path / "storage"
    manifest = activitynet_ingest(params=str(ROOT / "params.yaml"), overrides=overrides(http_server, storage, source))
    out = storage / "activitynet"

    failures = pq.read_table(out / "failures.parquet").to_pylist()
    by_video = {}
    for row in failures:
        by_video.setdefault(row["video_id"], []).append(row)
    for video_id, (stage, words) in FAULTS.items():
        rows = by_video.get(video_id)
        assert rows, f"{video_id} was not recorded as a failure"
        assert any(r["stage"] == stage and words in r["reason"] for r in rows), rows
    quirks = " | ".join(r["reason"] for r in by_video[quirky])
    for words in ("end <= start", "negative start", "empty sentence"):
        assert words in quirks

    segments = {split: pq.read_table(out / "segments" / f"{split}.parquet").to_pandas() for split in ("train", "val", "test")}
    train_ids = set(segments["train"].video_id)
    good = {v for v in src.annotations["train.json"] if v not in FAULTS and v.startswith("v_")} - {"v_bothsplitsx"}
    assert train_ids == good | {"v_flaky500ok_"} - set(FAULTS)
    assert http_server.hits["/videos/v_flaky500ok_.mp4"] >= 2  # the 500 was retried
    assert len(segments["val"]) == 0 and segments["test"].video_id.nunique() == 2
    assert manifest["subset"]["shortfall"] == {"train": 10 - len(train_ids)}
    quirky_rows = segments["train"][segments["train"].video_id == quirky]
    assert list(quirky_rows.segment) == list(range(len(quirky_rows)))
    assert quirky_rows.start.is_monotonic_increasing
    assert "clamped" in set(quirky_rows.caption)  # stripped, and its end clamped to the duration
    duration = src.annotations["train.json"][quirky]["duration"]
    assert np.isclose(quirky_rows[quirky_rows.caption == "clamped"].end.iloc[0], duration)

    # frames: exactly the grid frames of each segment, each decoded and embedded once
    distinct = 0
    for split, table in segments.items():
        for video_id, rows in table.groupby("video_id"):
            times, embeddings = read_frames(out / "frames" / f"{video_id}.parquet")
            grid = sorted({k for s, e in zip(rows.start, rows.end) for k in grid_range(float(s), float(e), 5)})
            np.testing.assert_array_equal(times, np.array(grid, np.float32) / np.float32(5))
            for s, e in zip(rows.start, rows.end):
                owned = ((times >= np.float32(s) - 1e-6) & (times < np.float32(e) - 1e-6)).sum()
                assert owned == len(grid_range(float(s), float(e), 5))
            assert embeddings.shape == (len(grid), 64) and np.isfinite(embeddings).all()
            assert decoded[video_id] == len(grid)  # decode once: overlaps are not decoded twice
            distinct += len(grid)
    assert manifest["counts"]["frames"] == distinct
    # every decoded frame was embedded exactly once (including the partial frames of the
    # truncated and too-short videos, which then failed)
    assert sum(embedded) == sum(decoded.values())
    completed = sum(len(pq.read_table(p)) for p in (out / "frames").glob("*.parquet"))
    assert completed == distinct

    # documented schema, readable by plain pyarrow, pandas and duckdb
    schema = pq.read_schema(next((out / "frames").glob("*.parquet")))
    embedding_type = schema.field("embedding").type
    assert pa.types.is_fixed_size_list(embedding_type) and embedding_type.list_size == 64
    assert embedding_type.value_type == pa.float16()
    assert schema.field("t").type == pa.float32() and schema.field("video_id").type == pa.string()
    frames_glob = str(out / "frames" / "*.parquet")
    assert duckdb.sql(f"select count(*) from read_parquet('{frames_glob}')").fetchall()[0][0] == distinct
    assert len(pd.read_parquet(out / "frames")) == distinct
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["clip"]["embed_dim"] == 64 and manifest["fps"] == 5
    assert manifest["counts"]["failures"] == len(failures)

    # provenance: the videos of each split and the tools that fetched, decoded and embedded them
    assert manifest["video_ids"] == {split: sorted(set(table.video_id)) for split, table in segments.items()}
    tools = manifest["tools"]
    assert tools["yt-dlp"] == yt_dlp.version.__version__ and tools["torch"] == torch.__version__
    assert tools["open_clip"] == open_clip.__version__ and tools["ffmpeg"][0].isdigit()
    assert "javascript_runtime" in tools  # None here: yt-dlp finds no deno on this machine

    # val_2, the test videos' second reference set, travels with the segments
    val_2 = pq.read_table(out / "references" / "val_2.parquet").to_pylist()
    expected = [(v, float(np.float32(a)), float(np.float32(min(b, entry["duration"]))), text.strip())
                for v, entry in sorted(src.annotations["val_2.json"].items()) if v in manifest["video_ids"]["test"]
                for (a, b), text in sorted(zip(entry["timestamps"], entry["sentences"]))]
    assert expected and [(r["video_id"], r["start"], r["end"], r["caption"]) for r in val_2] == expected
    assert manifest["counts"]["references"] == {"val_2": len(expected)}
    assert "references/val_2.parquet" in manifest["files"]

    # the subset list, in the annotation files' format, entries as the source has them
    settings = [a for o in overrides(http_server, storage, source) for a in ("--set", o)]
    main(["subset", "--params", str(ROOT / "params.yaml"), *settings, "--out", str(tmp_path / "subset")])
    written = {name: json.loads((tmp_path / "subset" / name).read_text()) for name in ("train.json", "val_1.json", "val_2.json")}
    assert sorted(written["train.json"]) == sorted(manifest["video_ids"]["train"] + manifest["video_ids"]["val"])
    assert sorted(written["val_1.json"]) == manifest["video_ids"]["test"]
    for name, entries in written.items():
        assert entries == {v: src.annotations[name][v] for v in entries}
    assert json.loads((tmp_path / "subset" / "splits.json").read_text()) == manifest["video_ids"]

    # nothing of the user's is overwritten without --force: not the files, not through a link
    (tmp_path / "subset" / "train.json").write_text("the user's own\n")
    (tmp_path / "mine.json").write_text("linked\n")
    (tmp_path / "subset" / "val_2.json").unlink()
    (tmp_path / "subset" / "val_2.json").symlink_to(tmp_path / "mine.json")
    for out in (tmp_path / "subset", tmp_path / "mine.json"):
        with pytest.raises(SystemExit) as refused:
            main(["subset", "--params", str(ROOT / "params.yaml"), *settings, "--out", str(out)])
        assert str(out) in str(refused.value) and "\n" not in str(refused.value)
    assert "train.json, val_1.json, val_2.json, splits.json" in str(pytest.raises(SystemExit, main, [
        "subset", "--params", str(ROOT / "params.yaml"), *settings, "--out", str(tmp_path / "subset")]).value)
    assert (tmp_path / "subset" / "train.json").read_text() == "the user's own\n"
    main(["subset", "--params", str(ROOT / "params.yaml"), *settings, "--out", str(tmp_path / "subset"), "--force"])
    assert json.loads((tmp_path / "subset" / "train.json").read_text()) == written["train.json"]
    assert (tmp_path / "mine.json").read_text() == "linked\n"  # the link was replaced, not written through


def run_flow(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.activitynet", "--params", str(ROOT / "params.yaml"),
                             *[a for o in args for a in ("--set", o)]], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def snapshot(storage: Path) -> dict:
    out = storage / "activitynet"
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert not [p for p in files if p.name.endswith(".tmp")]
    return {str(p.relative_to(out)): (pq.read_table(p).to_pylist() if p.suffix == ".parquet" else p.read_text())
            for p in files}


def finish(process: subprocess.Popen, timeout: float = 300) -> None:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output.decode()[-4000:]


def test_killed_run_resumes_to_the_same_outputs_and_concurrent_runs_agree(tmp_path, http_server, prefect_server, source):
    serve(http_server, source)
    reference = tmp_path / "reference"
    finish(run_flow(overrides(http_server, reference, source)))
    expected = snapshot(reference)

    killed = tmp_path / "killed"
    process = run_flow(overrides(http_server, killed, source))
    frames = killed / "activitynet" / "frames"
    deadline = time.monotonic() + 240
    while len(list(frames.glob("*.parquet"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "activitynet" / "manifest.json").exists()
    finish(run_flow(overrides(http_server, killed, source)))
    assert snapshot(killed) == expected

    # two runs on the same storage at once, each with its own work folder (two machines): the lock
    # serialises them, nothing is corrupted
    shared = tmp_path / "shared"
    first, second = (run_flow(overrides(http_server, shared, source) + [f"storage.work={tmp_path / machine}"])
                     for machine in ("machine-a", "machine-b"))
    finish(first)
    finish(second)
    assert snapshot(shared) == expected


def test_a_run_waits_for_the_storage_roots_lock_whatever_its_work_folder(tmp_path, http_server, prefect_server, source):
    """The lock used to live in the work folder, so a run with another `storage.work` (another
    machine on the same store) went ahead beside a running one."""
    serve(http_server, source)
    storage = tmp_path / "storage"
    held_by_machine_a = Layout(storage, tmp_path / "machine-a").activitynet.lock
    with storage_lock(held_by_machine_a, timeout_s=0, lease_s=60):
        process = run_flow(overrides(http_server, storage, source)
                           + [f"storage.work={tmp_path / 'machine-b'}", "storage.lock_timeout_s=1"])
        output, _ = process.communicate(timeout=300)
    output = output.decode()
    assert process.returncode != 0, output[-4000:]
    assert f"another run holds {held_by_machine_a}" in output and "storage.lock_timeout_s" in output
    assert not (storage / "activitynet").exists() and not http_server.hits  # nothing fetched, nothing written


def test_tokens_in_urls_reach_no_output_and_no_log(tmp_path, http_server, prefect_server, source):
    """A private mirror's signed URLs: the token used to be written to the manifest."""
    serve(http_server, source)
    secret = "s3cr3t-Tok3n-91"
    storage = tmp_path / "storage"
    process = run_flow(overrides(http_server, storage, source) + [
        f"activitynet.annotations_url={http_server.url}/captions.zip?token={secret}",
        f"activitynet.video_url_template={http_server.url}/videos/v_{{youtube_id}}.mp4?X-Amz-Signature={secret}"])
    output, _ = process.communicate(timeout=300)
    output = output.decode()
    assert process.returncode == 0, output[-4000:]
    assert http_server.hits["/videos/v_404notfound.mp4"]  # the URLs with tokens were used
    manifest = (storage / "activitynet" / "manifest.json").read_text()
    assert json.loads(manifest)["annotations_url"] == f"{http_server.url}/captions.zip?token=REDACTED"
    failures = pq.read_table(storage / "activitynet" / "failures.parquet").to_pylist()
    assert {"v_404notfound", "v_stalledxxxx"} <= {r["video_id"] for r in failures}
    for text in (output, manifest, json.dumps(failures)):
        assert secret not in text


def test_rerun_retries_only_what_failed(tmp_path, http_server, prefect_server, source):
    from flows.activitynet import activitynet_ingest

    serve(http_server, source)
    storage, settings = tmp_path / "storage", overrides(http_server, tmp_path / "storage", source)
    first = activitynet_ingest(params=str(ROOT / "params.yaml"), overrides=settings)
    shards = {p: p.stat().st_mtime_ns for p in (storage / "activitynet" / "frames").glob("*.parquet")}
    hits = dict(http_server.hits)
    # the flaky video now fails for good; the 404 video starts working
    http_server.status["/videos/v_flaky500ok_.mp4"] = 500
    del http_server.status["/videos/v_404notfound.mp4"]
    shutil.copy(http_server.root / "videos" / "v_flaky500ok_.mp4", http_server.root / "videos" / "v_404notfound.mp4")
    second = activitynet_ingest(params=str(ROOT / "params.yaml"), overrides=settings)
    good = [p for p in hits if p.startswith("/videos/") and Path(p).stem not in FAULTS and p != "/videos/v_flaky500ok_.mp4"]
    assert good and all(http_server.hits[p] == hits[p] for p in good)  # done videos are not fetched again
    assert http_server.hits["/videos/v_flaky500ok_.mp4"] == hits["/videos/v_flaky500ok_.mp4"]  # nor embedded again
    for failed in ("v_404notfound", "v_truncatedxx", "v_notavideoxx"):  # failures are retried
        assert http_server.hits[f"/videos/{failed}.mp4"] > hits[f"/videos/{failed}.mp4"]
    assert all(p.stat().st_mtime_ns == t for p, t in shards.items())  # finished shards untouched
    assert second["counts"]["videos"]["train"] == first["counts"]["videos"]["train"] + 1
    failed = {r["video_id"] for r in pq.read_table(storage / "activitynet" / "failures.parquet").to_pylist()}
    assert "v_404notfound" not in failed


def test_the_users_cookies_file_is_only_read(tmp_path, http_server, prefect_server, source):
    """yt-dlp writes its cookie jar back on close: with the user's file shared by concurrent
    downloads, cookies were lost and the file was seen empty. Each download now has a copy."""
    from flows.activitynet import activitynet_ingest

    serve(http_server, source)
    cookies = tmp_path / "cookies.txt"
    lines = ["# Netscape HTTP Cookie File", "# the user's own file"]
    lines += [f"127.0.0.1\tFALSE\t/\tFALSE\t2145916800\tcookie{i}\tvalue{i}" for i in range(300)]
    cookies.write_text("\n".join(lines) + "\n")
    before = cookies.read_bytes()
    storage = tmp_path / "storage"
    manifest = activitynet_ingest(params=str(ROOT / "params.yaml"), overrides=overrides(http_server, storage, source) + [
        f"activitynet.download.cookies_file={cookies}"])
    assert cookies.read_bytes() == before
    assert manifest["counts"]["videos"]["train"] >= 5  # the downloads ran, with the cookies
    assert not list((storage / "cache" / "activitynet" / "videos" / ".partial").glob("*cookies*"))  # copies removed


def test_damaged_shards_are_rebuilt_and_the_manifest_holds_every_digest(tmp_path, http_server, prefect_server, source):
    """Resume asked only whether a shard existed: a truncated, a zeroed and a bit-flipped shard
    were kept and the manifest rewritten as complete."""
    from flows.activitynet import activitynet_ingest

    from clipmemcap.core.shards import digest

    serve(http_server, source)
    storage, settings = tmp_path / "storage", overrides(http_server, tmp_path / "storage", source)
    activitynet_ingest(params=str(ROOT / "params.yaml"), overrides=settings)
    frames = storage / "activitynet" / "frames"
    shards = sorted(frames.glob("*.parquet"))
    original = {p: p.read_bytes() for p in shards}
    truncated, zeroed, flipped = shards[:3]
    truncated.write_bytes(original[truncated][: len(original[truncated]) // 2])
    zeroed.write_bytes(bytes(len(original[zeroed])))
    damaged = bytearray(original[flipped])
    damaged[len(damaged) // 2] ^= 0x10  # inside a data page: only the page checksum notices
    flipped.write_bytes(bytes(damaged))

    manifest = activitynet_ingest(params=str(ROOT / "params.yaml"), overrides=settings)
    for path in shards:
        assert path.read_bytes() == original[path], path.name  # rebuilt, byte for byte
    out = storage / "activitynet"
    assert manifest["files"] and all(digest(out / name) == value for name, value in manifest["files"].items())
    assert {f"frames/{p.name}" for p in shards} <= manifest["files"].keys()


def test_a_dripping_server_is_cut_off_at_the_download_deadline(tmp_path, http_server, prefect_server, source):
    """A server sending one byte every half second kept the downloaders busy past 10x their
    socket timeout: every download now has a deadline (a Prefect task timeout)."""
    import time

    from flows.activitynet import activitynet_ingest

    serve(http_server, source)
    dripping = sorted(p.stem for p in (http_server.root / "videos").glob("*.mp4") if p.stem not in FAULTS)[0]
    http_server.drip.add(f"/videos/{dripping}.mp4")
    storage = tmp_path / "storage"
    started = time.monotonic()
    activitynet_ingest(params=str(ROOT / "params.yaml"), overrides=overrides(http_server, storage, source) + [
        "activitynet.download.deadline_s=4", "activitynet.download.socket_timeout_s=2"])
    assert time.monotonic() - started < 100  # with retries: 2 tries of 4 s, not the drip's two minutes
    failures = {r["video_id"]: r for r in pq.read_table(storage / "activitynet" / "failures.parquet").to_pylist()}
    assert dripping in failures and failures[dripping]["stage"] == "download"
    assert "gave up after retries" in failures[dripping]["reason"]


def test_a_dripping_annotation_server_is_cut_off_at_the_deadline_with_one_line(tmp_path, http_server, prefect_server,
                                                                               source):
    """captions.zip had no deadline: a server sending a byte every half second held the flow for
    as long as it liked. Now activitynet.download.deadline_s bounds it too, and the command ends
    with one line, no traceback."""
    import time

    serve(http_server, source)
    http_server.drip.add("/captions.zip")
    storage = tmp_path / "storage"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "flows.activitynet", "--params", str(ROOT / "params.yaml"),
                           *[a for o in overrides(http_server, storage, source) + ["activitynet.download.deadline_s=3"]
                             for a in ("--set", o)]], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 60 and done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m flows.activitynet: cannot fetch the annotations:") and "deadline of 3 s" in last
    assert "Traceback" not in done.stderr and "offline, set activitynet.annotations_url" in last
    assert not (storage / "activitynet" / "manifest.json").exists() and not list(storage.rglob("*captions.zip*"))


def test_errors_every_video_would_meet_stop_the_run_and_retry_after_is_honoured(tmp_path, http_server, prefect_server,
                                                                                source):
    """A 403 (or a bot check, a full disk, a broken cookies file) was a per-video "permanent"
    failure, so the flow silently replaced video after video; a 429's Retry-After was ignored."""
    from flows.activitynet import activitynet_ingest

    from clipmemcap.sources.http import RunStoppingError

    serve(http_server, source)
    good = sorted(p.stem for p in (http_server.root / "videos").glob("*.mp4") if p.stem not in FAULTS)
    http_server.retry_after[f"/videos/{good[0]}.mp4"] = (1, 2)  # one 429 asking for 2 s
    storage = tmp_path / "storage"
    manifest = activitynet_ingest(params=str(ROOT / "params.yaml"), overrides=overrides(http_server, storage, source))
    first, second = http_server.times[f"/videos/{good[0]}.mp4"][:2]
    assert second - first >= 2.0
    assert f"frames/{good[0]}.parquet" in manifest["files"]  # fetched after the wait

    http_server.status[f"/videos/{good[1]}.mp4"] = 403
    (storage / "activitynet" / "frames" / f"{good[1]}.parquet").unlink()  # so it is fetched again
    before = http_server.hits[f"/videos/{good[1]}.mp4"]
    with pytest.raises(RunStoppingError, match=f"{good[1]}.*403"):
        activitynet_ingest(params=str(ROOT / "params.yaml"), overrides=overrides(http_server, storage, source))
    assert http_server.hits[f"/videos/{good[1]}.mp4"] == before + 1  # not retried: that only delays the stop
