"""COCO captions: parse the Karpathy split file or the official caption files, normalise, shard.

Two formats are read, from a zip or a bare JSON file:

- ``karpathy``: ``dataset_coco.json`` as used by ClipCap and most captioning papers:
  ``{"images": [{"cocoid", "filepath", "filename", "split", "sentences": [{"raw"}]}]}`` with
  splits train / restval / val / test.
- ``official``: ``captions_<split>.json`` files (e.g. ``captions_train2017.json``):
  ``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}``; the split is
  the part of the file name after ``captions_``, and images live under ``<split>/``.

An image's ``file`` is its path relative to the COCO root (``train2014/COCO_train2014_...jpg``),
used both for the images URL template and a local COCO folder. Every dropped caption or image is
returned as a Failure with its reason.
"""

from __future__ import annotations

import logging
import random
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa

from clipmemcap.core.atomic import write_json
from clipmemcap.core.failures import Failure
from clipmemcap.core.layout import MANIFEST, NAME_MAX, CocoPaths
from clipmemcap.core.jsonio import AnnotationError, parse_json
from clipmemcap.core.shards import (SCHEMA_VERSION, file_digests, read_image_shard, write_captions, write_failures,
                                    write_image_shard)

STAGE = "annotations"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CocoImage:
    image_id: int
    file: str
    split: str
    captions: tuple[str, ...]


@dataclass
class CocoAnnotations:
    images: dict[int, CocoImage] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)


def read_caption_files(path: Path, fmt: str) -> dict[str, bytes]:
    """The caption JSON files of ``fmt`` from a zip (found by name) or a bare JSON file."""
    wanted = (lambda name: name == "dataset_coco.json") if fmt == "karpathy" else (
        lambda name: name.startswith("captions_") and name.endswith(".json"))
    if not zipfile.is_zipfile(path):
        return {path.name: path.read_bytes()}
    with zipfile.ZipFile(path) as archive:
        members = {PurePosixPath(n).name: n for n in archive.namelist() if wanted(PurePosixPath(n).name)}
        if not members:
            expected = "dataset_coco.json" if fmt == "karpathy" else "captions_*.json"
            raise AnnotationError(f"{path}: no {expected} inside")
        return {name: archive.read(member) for name, member in sorted(members.items())}


def _records_karpathy(name: str, data: dict):
    """(image id, file, split, raw captions) per entry."""
    for entry in data["images"]:
        captions = [s.get("raw", "") if isinstance(s, dict) else s for s in entry.get("sentences", [])]
        yield entry["cocoid"], f"{entry['filepath']}/{entry['filename']}", entry["split"], captions


def _records_official(name: str, data: dict):
    split = Path(name).stem.removeprefix("captions_")
    captions: dict[object, list[str]] = {}
    for annotation in data["annotations"]:
        captions.setdefault(annotation["image_id"], []).append(annotation.get("caption", ""))
    for entry in data["images"]:
        yield entry["id"], f"{split}/{entry['file_name']}", split, captions.pop(entry["id"], [])
    for image_id in captions:  # captions of an image the file does not list
        yield image_id, None, split, []


def _plain_relative(file: str) -> bool:
    """A file name becomes a path under the images folder: no absolute path, no ``..``, and no
    name longer than a file system holds."""
    path = PurePosixPath(file)
    return (0 < len(file) <= 1024 and "\x00" not in file and "\\" not in file and not path.is_absolute()
            and all(part not in ("..", ".") and len(part.encode()) <= NAME_MAX for part in path.parts))


def normalise(name: str, data: dict, fmt: str, result: CocoAnnotations) -> None:
    records = _records_karpathy if fmt == "karpathy" else _records_official
    try:
        for image_id, file, split, raw in records(name, data):
            key = str(image_id)
            if isinstance(image_id, bool) or not isinstance(image_id, int):
                result.failures.append(Failure(key, STAGE, f"{name}: image id is not an integer"))
            elif file is None:
                result.failures.append(Failure(key, STAGE, f"{name}: captions refer to an image not in the file"))
            elif not _plain_relative(file):
                result.failures.append(Failure(key, STAGE, f"{name}: image file {file!r} is not a relative path "
                                                           "inside the COCO root (absolute, .. or too long)"))
            elif image_id in result.images:
                result.failures.append(Failure(key, STAGE, f"{name}: image id listed twice; the first entry is kept"))
            else:
                captions = []
                for index, text in enumerate(raw):
                    caption = str(text).strip()
                    if caption:
                        captions.append(caption)
                    else:
                        result.failures.append(Failure(key, STAGE, f"{name}: caption {index} is empty"))
                if captions:
                    result.images[image_id] = CocoImage(image_id, file, str(split), tuple(captions))
                else:
                    result.failures.append(Failure(key, STAGE, f"{name}: no caption left"))
    except (KeyError, TypeError, AttributeError) as err:
        raise AnnotationError(f"{name}: not in the {fmt} caption format ({type(err).__name__}: {err})") from err


def load_captions(path: Path, fmt: str) -> CocoAnnotations:
    result = CocoAnnotations()
    for name, payload in read_caption_files(path, fmt).items():
        normalise(name, parse_json(name, payload), fmt, result)
    return result


def choose(images: dict[int, CocoImage], count: int | None, seed: int) -> list[CocoImage]:
    """A seeded subset (all when ``count`` is None), in image-id order."""
    ids = sorted(images)
    if count is not None and count < len(ids):
        ids = sorted(random.Random(f"{seed}:coco").sample(ids, count))
    return [images[i] for i in ids]


def group_by_shard(images: list[CocoImage], span: int) -> dict[int, list[CocoImage]]:
    """Shards hold fixed image-id ranges, so a shard's place never depends on the subset."""
    shards: dict[int, list[CocoImage]] = {}
    for image in images:
        shards.setdefault(image.image_id // span, []).append(image)
    return shards


def remove_unreached_shards(paths: CocoPaths, indices) -> None:
    """Drop shards that the chosen subset no longer reaches."""
    keep = {paths.shard(i) for i in indices}
    for path in paths.images.glob("shard-*.parquet"):
        if path not in keep:
            path.unlink()


@dataclass
class ImageShard:
    """One shard file being brought up to date with the images it should hold: rows it already
    has for those images are kept, rows for images no longer chosen are dropped, and only the
    missing images are embedded."""

    path: Path
    images: list[CocoImage]
    kept_ids: np.ndarray  # [k] int64
    kept_embeddings: np.ndarray  # [k, D] float32
    up_to_date: bool  # the file exists and holds no row to drop

    @classmethod
    def open(cls, path: Path, images: list[CocoImage], dim: int) -> ImageShard:
        """A shard that is missing, or damaged (truncated, zeroed, a page failing its checksum),
        starts empty: its images are embedded again."""
        empty = cls(path, images, np.zeros(0, np.int64), np.zeros((0, dim), np.float32), False)
        if not path.exists():
            return empty
        try:
            ids, embeddings = read_image_shard(path)
        except (OSError, ValueError, pa.ArrowException) as err:
            log.warning("rebuilding %s: unreadable (%s)", path, err)
            return empty
        keep = np.isin(ids, [image.image_id for image in images])
        return cls(path, images, ids[keep], embeddings[keep], bool(keep.all()))

    @property
    def todo(self) -> list[CocoImage]:
        done = set(self.kept_ids.tolist())
        return [image for image in self.images if image.image_id not in done]

    def save(self, ids: np.ndarray, embeddings: np.ndarray, dtype: str) -> set[int]:
        """Write kept + new rows (unless nothing changed); returns the ids the shard holds."""
        all_ids = np.concatenate([self.kept_ids, ids])
        if len(ids) or not self.up_to_date:
            write_image_shard(self.path, all_ids, np.concatenate([self.kept_embeddings, embeddings]), dtype)
        return set(all_ids.tolist())


def write_coco_tables(paths: CocoPaths, chosen: list[CocoImage], embedded: set[int], failures: list[Failure],
                      manifest: dict) -> dict:
    """Captions of the embedded images, failures, and the manifest (written last)."""
    rows = [{"image_id": image.image_id, "caption": caption, "split": image.split}
            for image in chosen if image.image_id in embedded for caption in image.captions]
    write_captions(paths.captions, rows)
    write_failures(paths.failures, failures, key="image_id")
    splits: dict[str, int] = {}
    for image in chosen:
        if image.image_id in embedded:
            splits[image.split] = splits.get(image.split, 0) + 1
    shards = sorted(path.relative_to(paths.out) for path in paths.images.glob("shard-*.parquet"))
    manifest = {**manifest, "schema_version": SCHEMA_VERSION,
                "counts": {"images": len(embedded), "images_per_split": splits, "captions": len(rows),
                           "failures": len(failures)},
                "files": file_digests(paths.out, [*shards, "captions.parquet", "failures.parquet"])}
    write_json(paths.out / MANIFEST, manifest)
    return manifest
