"""COCO captions ingest for pre-training: captions -> images -> CLIP -> Parquet shards.

    python -m flows.coco [--params params.yaml] [--set coco.subset_images=5000 ...]

Each image is embedded once, however many captions it has, with the same resize and crop as the
video frames. Images come from ``coco.images_url_template`` (downloaded in batches,
``coco.download.concurrency`` at a time) or from a local COCO folder (``coco.images_dir``).
Re-running resumes: finished shards and images are kept, failed images are tried again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm import tqdm

from clipmemcap.core.config import CocoConfig, load_config
from clipmemcap.core.failures import Failure
from clipmemcap.core.layout import Layout, UnsafePath, inside
from clipmemcap.core.redact import redact_url
from clipmemcap.core.storage_lock import storage_lock
from clipmemcap.frames.clip_encoder import ClipEncoder
from clipmemcap.frames.embed import embed_images, encoder_settings, prepare_shard_dir
from clipmemcap.sources.coco import (CocoImage, ImageShard, choose, group_by_shard, load_captions,
                                     remove_unreached_shards, write_coco_tables)
from clipmemcap.sources.http import (DownloadError, PermanentDownloadError, RunStoppingError, TransientDownloadError,
                                     fetch_file)
from clipmemcap.sources.remote import offline
from flows.common import command_line, with_retries


@task(cache_policy=NO_CACHE)
def fetch_captions(url: str, dest: Path, timeout_s: float, deadline_s: float) -> Path:
    if Path(url).is_file():  # a local file needs no download
        return Path(url)
    try:
        return dest if dest.exists() else fetch_file(url, dest, timeout_s, deadline_s)
    except DownloadError as err:
        raise type(err)(f"cannot fetch the COCO captions: {err}; {offline('coco.captions_url')}") from None


@task(cache_policy=NO_CACHE, task_run_name="download-images-{images[0].image_id}")
def download_images(images: list[CocoImage], cfg: CocoConfig, root: Path) -> list[Failure]:
    """Fetch the batch's missing images. Permanent failures are returned; transient ones raise
    after the whole batch was tried, so Prefect retries the batch (fetched images are kept)."""
    failures, transient = [], []
    for image in images:
        try:
            dest = inside(root, image.file)
            if dest.exists():
                continue
            fetch_file(cfg.images_url_template.format(file=image.file, image_id=image.image_id), dest,
                       cfg.download.timeout_s, cfg.download.deadline_s)
        except (PermanentDownloadError, UnsafePath) as err:
            failures.append(Failure(str(image.image_id), "download", str(err)))
        except TransientDownloadError as err:
            transient.append(f"{image.image_id}: {err}")
    if transient:
        raise TransientDownloadError(f"{len(transient)} of {len(images)} images: {'; '.join(transient)}")
    return failures


def _batches(images: list[CocoImage], size: int) -> list[list[CocoImage]]:
    return [images[i : i + size] for i in range(0, len(images), size)]


@flow(name="coco-ingest")
def coco_ingest(params: str = "params.yaml", overrides: list[str] | None = None) -> dict:
    """Ingest the configured COCO captions; returns the manifest."""
    cfg = load_config(params, overrides or [])
    coco, logger = cfg.coco, get_run_logger()
    paths = Layout.of(cfg).coco
    image_root = coco.images_dir or paths.downloaded_images
    paths.cache.mkdir(parents=True, exist_ok=True)
    with storage_lock(paths.lock, cfg.storage.lock_timeout_s, cfg.storage.lock_lease_s):
        captions = load_captions(fetch_captions(coco.captions_url, paths.downloaded_captions, coco.download.timeout_s,
                                                coco.download.deadline_s),
                                 coco.captions_format)
        failures = list(captions.failures)
        chosen = choose(captions.images, coco.subset_images, coco.seed)
        logger.info("%d images with captions, %d chosen, %d caption records rejected",
                    len(captions.images), len(chosen), len(failures))

        encoder = ClipEncoder(cfg.clip)
        dtype = cfg.clip.embedding_dtype
        settings = encoder_settings(encoder, dtype)
        prepare_shard_dir(paths.images, settings, (paths.out, paths.cache))
        by_shard = group_by_shard(chosen, coco.shard_span)
        remove_unreached_shards(paths, by_shard)

        retrying = with_retries(download_images, coco.download)
        progress = tqdm(total=len(chosen), desc="images", unit="image")
        artifact = create_progress_artifact(0.0, description="COCO images done")
        embedded: set[int] = set()
        with ThreadPoolTaskRunner(max_workers=coco.download.concurrency) as runner:
            for index, images in sorted(by_shard.items()):
                shard = ImageShard.open(paths.shard(index), images, encoder.embed_dim)
                batches = _batches(shard.todo, encoder.batch_size)
                downloaded = ((batch, []) for batch in batches) if coco.images_dir else _downloaded(
                    batches, [runner.submit(retrying, {"images": b, "cfg": coco, "root": image_root}) for b in batches],
                    image_root)
                ids, embeddings, shard_failures = embed_images(
                    downloaded, image_root, encoder, coco.max_pixels, cfg.decode.workers, cfg.decode.ffmpeg_threads,
                    refetch_broken=not coco.images_dir)
                failures += shard_failures
                embedded |= shard.save(ids, embeddings, dtype)
                progress.update(len(images))
                update_progress_artifact(artifact, 100.0 * progress.n / max(1, len(chosen)))
        progress.close()
        manifest = write_coco_tables(paths, chosen, embedded, failures, {
            "dataset": "coco-captions", "captions_url": redact_url(coco.captions_url), "captions_format": coco.captions_format,
            "clip": settings, "shard_span": coco.shard_span,
            "subset": {"images": coco.subset_images, "seed": coco.seed},
        })
    logger.info("done: %s", manifest["counts"])
    return manifest


def _downloaded(batches: list[list[CocoImage]], futures: list, root: Path) -> Iterator[tuple[list[CocoImage], list[Failure]]]:
    """Each batch with the failures of its download task, in order, as each task finishes."""
    for batch, future in zip(batches, futures):
        try:
            yield batch, future.result()
        except RunStoppingError:
            raise  # every other batch would fail the same way
        except Exception as err:  # transient errors that outlived the retries: record them
            yield batch, [Failure(str(image.image_id), "download", f"{err} (gave up after retries)")
                          for image in batch if not (root / image.file).exists()]


if __name__ == "__main__":
    command_line(coco_ingest, __doc__)
