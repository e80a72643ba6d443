"""ActivityNet Captions ingest: captions.zip -> yt-dlp -> 5 fps frames -> CLIP -> Parquet shards.

    python -m flows.activitynet [--params params.yaml] [--set activitynet.subset.train_videos=20 ...]

The work lives in ``clipmemcap``; this flow says what runs in what order, how many downloads run
at once, and which failures are retried. Re-running resumes: finished videos are skipped, failed
ones are tried again.

Locally, downloads run on a thread pool and this process decodes and embeds (decoding the next
videos while CLIP runs). With ``dask.address`` set (or ``CLIPMEMCAP_DASK_ADDRESS``), each video is
downloaded, decoded and embedded by one task on that Dask cluster; the frames come back here and
only this process writes to storage, so workers need no storage credentials.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner
from tqdm import tqdm

from clipmemcap.core.config import ClipConfig, Config, DownloadConfig, load_config
from clipmemcap.core.failures import Failure
from clipmemcap.core.layout import Layout
from clipmemcap.core.redact import redact_url
from clipmemcap.core.storage_lock import storage_lock
from clipmemcap.core.shards import readable_frame_shard
from clipmemcap.frames.clip_encoder import ClipEncoder
from clipmemcap.frames.embed import Embedded, VideoJob, embed_videos, encoder_settings, prepare_shard_dir, save_frames
from clipmemcap.sources.activitynet import (Video, download_annotations, load_annotations, second_references,
                                            write_activitynet_tables)
from clipmemcap.sources.http import PermanentDownloadError, RunStoppingError
from clipmemcap.sources.selection import fill, plan_streams
from clipmemcap.sources.video_download import fetch_video
from flows.common import command_line, with_retries


@task(cache_policy=NO_CACHE)
def fetch_annotations(url: str, dest: Path, cfg: DownloadConfig) -> Path:
    return download_annotations(url, dest, cfg.socket_timeout_s, cfg.deadline_s)


@task(cache_policy=NO_CACHE, task_run_name="download-{video.video_id}")
def download(video: Video, url: str, videos_dir: Path, cfg: DownloadConfig, fps: float) -> VideoJob | Failure:
    """Permanent failures are returned as records; transient ones raise so Prefect retries them."""
    try:
        return VideoJob(video.video_id, fetch_video(video.video_id, url, videos_dir, cfg), tuple(video.frame_ranges(fps)))
    except PermanentDownloadError as err:
        return Failure(video.video_id, "download", str(err))


@functools.cache
def _worker_encoder(clip: ClipConfig) -> ClipEncoder:
    """One CLIP per worker process, loaded by its first task."""
    return ClipEncoder(clip)


@task(cache_policy=NO_CACHE, task_run_name="ingest-{video.video_id}")
def ingest_video(video: Video, url: str, download_cfg: DownloadConfig, clip: ClipConfig, fps: float,
                 ffmpeg_threads: int) -> Embedded | Failure:
    """One video on a cluster worker: download to a scratch folder, decode, embed, return the
    frames. Errors are handled as in :func:`download`; the video is never kept."""
    with tempfile.TemporaryDirectory(prefix="clipmemcap-video-") as scratch:
        job = download.fn(video, url, Path(scratch), download_cfg, fps)
        if isinstance(job, Failure):
            return job
        return next(embed_videos([job], _worker_encoder(clip), fps, 1, ffmpeg_threads))


def _outcomes(futures: list, videos: list[Video]) -> Iterator:
    """Task outcomes in candidate order, as each becomes available."""
    for future, video in zip(futures, videos):
        try:
            yield future.result()
        except RunStoppingError:
            raise  # every other video would fail the same way
        except Exception as err:  # transient error that outlived its retries: record it
            yield Failure(video.video_id, "download", f"{err} (gave up after retries)")


def _task_runner(cfg: Config) -> TaskRunner:
    if cfg.dask.address:
        return DaskTaskRunner(address=cfg.dask.address)
    return ThreadPoolTaskRunner(max_workers=cfg.activitynet.download.concurrency)


def _process(videos: list[Video], runner: TaskRunner, encoder: ClipEncoder, cfg: Config) -> Iterator[Embedded | Failure]:
    """Each video's frames or failure, in the order of ``videos``: on the Dask cluster, or
    downloads on the task runner and decoding + CLIP here."""
    net = cfg.activitynet
    urls = [net.video_url_template.format(youtube_id=v.youtube_id) for v in videos]
    if cfg.dask.address:
        futures = [runner.submit(with_retries(ingest_video, net.download, net.download.deadline_s), {
            "video": v, "url": url, "download_cfg": net.download, "clip": cfg.clip, "fps": net.fps,
            "ffmpeg_threads": cfg.decode.ffmpeg_threads}) for v, url in zip(videos, urls)]
        yield from _outcomes(futures, videos)
        return
    videos_dir = Layout.of(cfg).activitynet.videos
    futures = [runner.submit(with_retries(download, net.download, net.download.deadline_s), {
        "video": v, "url": url, "videos_dir": videos_dir, "cfg": net.download, "fps": net.fps})
        for v, url in zip(videos, urls)]
    yield from embed_videos(_outcomes(futures, videos), encoder, net.fps, cfg.decode.workers, cfg.decode.ffmpeg_threads)


@flow(name="activitynet-ingest")
def activitynet_ingest(params: str = "params.yaml", overrides: list[str] | None = None) -> dict:
    """Ingest the configured ActivityNet Captions subset; returns the manifest."""
    cfg = load_config(params, overrides or [])
    logger = get_run_logger()
    net, paths = cfg.activitynet, Layout.of(cfg).activitynet
    paths.cache.mkdir(parents=True, exist_ok=True)
    with storage_lock(paths.lock, cfg.storage.lock_timeout_s, cfg.storage.lock_lease_s):
        further = tuple(cfg.benchmark.test_sets())  # the benchmark's further test sets (clips of other lengths)
        files = load_annotations(fetch_annotations(net.annotations_url, paths.annotations, net.download), net.fps,
                                 net.max_annotation_mb, net.max_segments_per_video, net.download.max_duration_s,
                                 tuple(f"{split}.json" for split in further))
        failures = [f for afile in files.values() for f in afile.failures]
        for afile in files.values():
            logger.info("%s: %d videos, %d of %d segments valid, %d rejections", afile.name,
                        len(afile.videos), sum(len(v.segments) for v in afile.videos.values()),
                        afile.raw_segments, len(afile.failures))

        encoder = ClipEncoder(cfg.clip)
        settings = encoder_settings(encoder, cfg.clip.embedding_dtype, fps=net.fps)
        prepare_shard_dir(paths.frames, settings, (paths.out, paths.cache))
        streams = plan_streams(files["train.json"].videos, files["val_1.json"].videos, net.subset,
                               {split: files[f"{split}.json"].videos for split in further})
        if cfg.dask.address:
            logger.info("per-video work runs on the Dask cluster at %s", cfg.dask.address)

        def process(videos: list[Video]) -> Iterator[str | Failure]:
            outcomes = _process(videos, runner, encoder, cfg)
            for outcome in save_frames(outcomes, paths, cfg.clip.embedding_dtype, net.keep_videos):
                if isinstance(outcome, Failure):
                    logger.warning("%s failed at %s: %s", outcome.key, outcome.stage, outcome.reason)
                yield outcome

        with _task_runner(cfg) as runner:
            for stream in streams:
                name, total = "/".join(stream.quotas), max(1, stream.missing())
                progress = tqdm(total=stream.missing(), desc=name, unit="video")
                # The same progress, visible in the Prefect UI while the run goes on.
                artifact = create_progress_artifact(0.0, description=f"ActivityNet {name} videos done")

                def accepted(video: Video) -> None:
                    progress.update()
                    update_progress_artifact(artifact, 100.0 * (1 - stream.missing() / total))

                failures += fill(stream, lambda video: readable_frame_shard(
                    paths.frame_shard(video.video_id), video.video_id, video.frame_count(net.fps)), process, accepted)
                progress.close()

        chosen = {split: videos for stream in streams for split, videos in stream.chosen.items()}
        shortfall = {split: n for stream in streams for split, n in stream.shortfall().items()}
        if shortfall:
            logger.warning("candidates ran out; videos missing per split: %s", shortfall)
        references = {"val_2": second_references(chosen.get("test", []), files["val_2.json"])}
        manifest = write_activitynet_tables(paths, chosen, references, failures, net.fps, {
            "dataset": "activitynet-captions",
            "annotations_url": redact_url(net.annotations_url),
            "clip": settings,
            "fps": net.fps,
            "subset": {**net.subset.model_dump(), "shortfall": shortfall},
        })
    logger.info("done: %s", manifest["counts"])
    return manifest


if __name__ == "__main__":
    command_line(activitynet_ingest, __doc__)
