"""COCO captions ingest for pre-training: captions -> images -> CLIP -> Parquet shards.

    python -m flows.coco [--params params.yaml] [--set coco.subset_images=5000 ...]

Each image is embedded once, however many captions it has, with the same resize and crop as the
video frames. Images come from ``coco.images_url_template`` (downloaded in batches,
``coco.download.concurrency`` at a time) or from a local COCO folder (``coco.images_dir``).
Re-running resumes: finished shards and images are kept, failed images are tried again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm import tqdm

from clipmemcap.clip_encoder import ClipEncoder
from clipmemcap.coco import CocoImage, ImageShard, choose, group_by_shard, load_captions, shard_path, write_tables
from clipmemcap.config import CocoConfig, load_config
from clipmemcap.decode import decode_images
from clipmemcap.failures import Failure
from clipmemcap.fetch import PermanentDownloadError, TransientDownloadError, fetch_file
from clipmemcap.ingest import embed_stream, encoder_settings, prepare_shard_dir
from flows.common import command_line, with_retries


@dataclass(frozen=True)
class ImageBatch:
    images: tuple[CocoImage, ...]
    paths: tuple[Path, ...]


@task(cache_policy=NO_CACHE)
def fetch_captions(url: str, dest: Path, timeout_s: float) -> Path:
    if Path(url).is_file():  # a local file needs no download
        return Path(url)
    return dest if dest.exists() else fetch_file(url, dest, timeout_s)


@task(cache_policy=NO_CACHE, task_run_name="download-images-{images[0].image_id}")
def download_images(images: list[CocoImage], cfg: CocoConfig, root: Path) -> list[Failure]:
    """Fetch the batch's missing images. Permanent failures are returned; transient ones raise
    after the whole batch was tried, so Prefect retries the batch (fetched images are kept)."""
    failures, transient = [], []
    for image in images:
        dest = root / image.file
        if dest.exists():
            continue
        try:
            fetch_file(cfg.images_url_template.format(file=image.file, image_id=image.image_id), dest,
                       cfg.download.timeout_s)
        except PermanentDownloadError as err:
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
    out, cache = cfg.storage.root / "coco", cfg.storage.cache / "coco"
    shard_dir, image_root = out / "images", coco.images_dir or cache / "images"
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(cache / "run.lock", timeout=cfg.storage.lock_timeout_s):
        captions = load_captions(fetch_captions(coco.captions_url, cache / "captions", coco.download.timeout_s),
                                 coco.captions_format)
        failures = list(captions.failures)
        chosen = choose(captions.images, coco.subset_images, coco.seed)
        logger.info("%d images with captions, %d chosen, %d caption records rejected",
                    len(captions.images), len(chosen), len(failures))

        encoder = ClipEncoder(cfg.clip)
        dtype = cfg.clip.embedding_dtype
        settings = encoder_settings(encoder, dtype)
        prepare_shard_dir(shard_dir, settings, (out, cache))
        by_shard = group_by_shard(chosen, coco.shard_span)
        for path in shard_dir.glob("shard-*.parquet"):  # shards the subset no longer reaches
            if path not in {shard_path(shard_dir, i) for i in by_shard}:
                path.unlink()

        retrying = with_retries(download_images, coco.download)
        progress = tqdm(total=len(chosen), desc="images", unit="image")
        artifact = create_progress_artifact(0.0, description="COCO images done")
        embedded: set[int] = set()
        with ThreadPoolTaskRunner(max_workers=coco.download.concurrency) as runner:
            for index, images in sorted(by_shard.items()):
                shard = ImageShard.open(shard_path(shard_dir, index), images, encoder.embed_dim)
                ids, embeddings, shard_failures = _embed(shard.todo, coco, cfg, encoder, image_root, runner, retrying)
                failures += shard_failures
                embedded |= shard.save(ids, embeddings, dtype)
                progress.update(len(images))
                update_progress_artifact(artifact, 100.0 * progress.n / max(1, len(chosen)))
        progress.close()
        manifest = write_tables(out, chosen, embedded, failures, {
            "dataset": "coco-captions", "captions_url": coco.captions_url, "captions_format": coco.captions_format,
            "clip": settings, "shard_span": coco.shard_span,
            "subset": {"images": coco.subset_images, "seed": coco.seed},
        })
    logger.info("done: %s", manifest["counts"])
    return manifest


def _embed(images: list[CocoImage], coco: CocoConfig, cfg, encoder: ClipEncoder, root: Path,
           runner: ThreadPoolTaskRunner, download_task) -> tuple[np.ndarray, np.ndarray, list[Failure]]:
    """Download (unless local) and embed ``images``: (ids [n], embeddings [n, D], failures)."""
    batches = _batches(images, encoder.batch_size)
    futures = [] if coco.images_dir else [
        runner.submit(download_task, {"images": batch, "cfg": coco, "root": root}) for batch in batches]

    def jobs() -> Iterator[ImageBatch | Failure]:
        for i, batch in enumerate(batches):
            failed: set[str] = set()
            if futures:
                try:
                    outcome = futures[i].result()
                except Exception as err:  # transient errors that outlived the retries: record them
                    outcome = [Failure(str(image.image_id), "download", f"{err} (gave up after retries)")
                               for image in batch if not (root / image.file).exists()]
                failed = {f.key for f in outcome}
                yield from outcome
            for image in batch:
                if str(image.image_id) not in failed and not (root / image.file).exists():
                    failed.add(str(image.image_id))
                    yield Failure(str(image.image_id), "download", f"{image.file} not found under {root.name}/")
            ready = tuple(image for image in batch if str(image.image_id) not in failed)
            if ready:
                yield ImageBatch(ready, tuple(root / image.file for image in ready))

    def decode(job: ImageBatch):
        return decode_images([(str(image.image_id), path) for image, path in zip(job.images, job.paths)],
                             encoder.image_size, coco.max_pixels, cfg.decode.ffmpeg_threads)

    ids, embeddings, failures = [], [], []
    failed: set[str] = set()
    by_id = {str(image.image_id): image for image in images}
    for outcome in embed_stream(jobs(), encoder, decode, lambda job: str(job.images[0].image_id), cfg.decode.workers):
        if isinstance(outcome, Failure):
            failures.append(outcome)
            failed.add(outcome.key)
            if outcome.stage == "decode" and not coco.images_dir:  # fetch it afresh next run
                (root / by_id[outcome.key].file).unlink(missing_ok=True)
            continue
        job, batch_embeddings = outcome
        ids += [image.image_id for image in job.images if str(image.image_id) not in failed]
        embeddings.append(batch_embeddings)
    empty = np.zeros((0, encoder.embed_dim), np.float32)
    return np.array(ids, np.int64), np.concatenate([empty, *embeddings]), failures


if __name__ == "__main__":
    command_line(coco_ingest, __doc__)
