"""Parquet tables of an ingested dataset (schema version 1): schemas, writers, readers. Where
each file lives is :mod:`clipmemcap.core.layout`'s; README "Data layout" shows both.

ActivityNet (``<out>`` = ``storage/activitynet``):
    <out>/frames/<video_id>.parquet   video_id: string, t: float32 (s), embedding: fixed_size_list<D>
    <out>/segments/<split>.parquet    video_id, segment: int32, start, end: float32, caption, split
    <out>/references/val_2.parquet    the test videos' segments in val_2.json (same columns, split
                                      "test"): the second reference set of the official evaluation
    <out>/failures.parquet            video_id, stage, reason: string
    <out>/manifest.json               CLIP model, fps, image size, counts, schema version, the
                                      video ids of each split, the tools' versions, file digests
COCO (``<out>`` = ``storage/coco``):
    <out>/images/shard-<k>.parquet    image_id: int64, embedding: fixed_size_list<D>; ids in
                                      [k * shard_span, (k + 1) * shard_span)
    <out>/captions.parquet            image_id: int64, caption, split: string
    <out>/failures.parquet            image_id, stage, reason: string
    <out>/manifest.json

All files are zstd-compressed Parquet written atomically (see :mod:`clipmemcap.core.atomic`), with
page checksums (CRC32) that every reader here verifies, readable with plain pyarrow, pandas or
duckdb (``read_parquet('<out>/frames/*.parquet')``). The manifest holds each file's SHA-256
(:func:`digest`); the training readers check them (:func:`verify_digests`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipmemcap.core.atomic import atomic_path, on_local_disk
from clipmemcap.core.failures import Failure

SCHEMA_VERSION = 1
COMPRESSION = "zstd"

SEGMENTS_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("segment", pa.int32()),
    ("start", pa.float32()),
    ("end", pa.float32()),
    ("caption", pa.string()),
    ("split", pa.string()),
])


CAPTIONS_SCHEMA = pa.schema([("image_id", pa.int64()), ("caption", pa.string()), ("split", pa.string())])


def _embedding_type(dim: int, dtype: str) -> pa.DataType:
    return pa.list_(pa.float16() if dtype == "float16" else pa.float32(), dim)


def frames_schema(dim: int, dtype: str) -> pa.Schema:
    return pa.schema([("video_id", pa.string()), ("t", pa.float32()), ("embedding", _embedding_type(dim, dtype))])


def images_schema(dim: int, dtype: str) -> pa.Schema:
    return pa.schema([("image_id", pa.int64()), ("embedding", _embedding_type(dim, dtype))])


def _embedding_array(embeddings: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(embeddings.astype(dtype).reshape(-1)), embeddings.shape[1])


def _embeddings(table: pa.Table) -> np.ndarray:
    """[n, D] float32 from a fixed-size-list column."""
    column = table.column("embedding").combine_chunks()
    return column.values.to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size).astype(np.float32)


# Frame shards are written in row groups of this many frames, so that reading one segment decodes
# only the groups it overlaps (their ``t`` statistics say which), not the whole video.
FRAMES_PER_ROW_GROUP = 50


def write_table(table: pa.Table, path: Path, row_group_size: int | None = None) -> None:
    # Dictionary encoding only for strings: on float embeddings it made reading 4x slower.
    strings = [field.name for field in table.schema if pa.types.is_string(field.type)]
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=COMPRESSION, use_dictionary=strings, row_group_size=row_group_size,
                       write_page_checksum=True)


def write_frame_shard(path: Path, video_id: str, times: np.ndarray, embeddings: np.ndarray, dtype: str) -> None:
    """One video's frames; ``times`` [n] seconds, ``embeddings`` [n, D]."""
    n, dim = embeddings.shape
    table = pa.Table.from_arrays(
        [pa.array([video_id] * n, pa.string()), pa.array(times.astype(np.float32)), _embedding_array(embeddings, dtype)],
        schema=frames_schema(dim, dtype),
    )
    write_table(table, path, FRAMES_PER_ROW_GROUP)


def write_image_shard(path: Path, image_ids: np.ndarray, embeddings: np.ndarray, dtype: str) -> None:
    """Images of one shard, sorted by id; ``embeddings`` [n, D]."""
    order = np.argsort(image_ids, kind="stable")
    table = pa.Table.from_arrays([pa.array(image_ids[order].astype(np.int64)), _embedding_array(embeddings[order], dtype)],
                                 schema=images_schema(embeddings.shape[1], dtype))
    write_table(table, path)


def read_image_shard(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(image ids [n] int64, embeddings [n, D] float32)."""
    if on_local_disk(path):
        table = pq.read_table(path, page_checksum_verification=True)
    else:
        with path.open("rb") as handle:  # an object in the store (the flow resuming a shard)
            table = pq.read_table(handle, page_checksum_verification=True)
    return table.column("image_id").to_numpy(), _embeddings(table)


def write_captions(path: Path, rows: list[dict]) -> None:
    write_table(pa.Table.from_pylist(rows, schema=CAPTIONS_SCHEMA), path)


def write_segments(path: Path, rows: list[dict]) -> None:
    write_table(pa.Table.from_pylist(rows, schema=SEGMENTS_SCHEMA), path)


def write_failures(path: Path, failures: list[Failure], key: str = "video_id") -> None:
    """Columns ``<key>, stage, reason`` (key: ``video_id`` or ``image_id``), sorted."""
    schema = pa.schema([(key, pa.string()), ("stage", pa.string()), ("reason", pa.string())])
    rows = [{key: f.key, "stage": f.stage, "reason": f.reason} for f in sorted(failures)]
    write_table(pa.Table.from_pylist(rows, schema=schema), path)


def read_frames(path: Path, start: float | None = None, end: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(times [n] float32, embeddings [n, D] float32) of a frame shard: every frame, or those
    with ``start <= t < end`` (reading only the row groups that can hold them)."""
    shard = pq.ParquetFile(path, page_checksum_verification=True)
    if start is None:
        table = shard.read(use_threads=False)
    else:
        column = shard.schema_arrow.get_field_index("t")
        groups = []
        for i in range(shard.num_row_groups):
            stats = shard.metadata.row_group(i).column(column).statistics
            if stats is None or not stats.has_min_max or (stats.max >= start and stats.min < end):
                groups.append(i)
        table = shard.read_row_groups(groups, use_threads=False)
        times = table.column("t").to_numpy()
        table = table.filter(pa.array((times >= np.float32(start)) & (times < np.float32(end))))
    return table.column("t").to_numpy(), _embeddings(table)


def digest(path: Path) -> str:
    """SHA-256 of a file's bytes (local or in an object store)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def readable_frame_shard(path: Path, video_id: str, frames: int) -> bool:
    """Whether ``path`` is a complete, undamaged shard of ``video_id`` with ``frames`` frames:
    it parses, every page matches its checksum, and it holds that video's frames. A truncated,
    zeroed or bit-flipped file is not (the flow then embeds the video again)."""
    try:
        with path.open("rb") as handle:
            table = pq.read_table(handle, page_checksum_verification=True)
    except (OSError, ValueError, pa.ArrowException):
        return False
    ids = table.column("video_id").unique().to_pylist() if "video_id" in table.column_names else []
    return ids == [video_id] and table.num_rows == frames


def file_digests(root: Path, relatives) -> dict[str, str]:
    """``{path relative to root: SHA-256}``, for a manifest."""
    return {str(relative): digest(root / relative) for relative in sorted(map(str, relatives))}


def verify_digests(root: Path, digests: dict[str, str], what: str) -> None:
    """Every file named in ``digests`` (paths relative to ``root``, from a manifest) exists with
    that SHA-256; otherwise a ValueError names the file and how to rebuild it."""
    for relative, expected in digests.items():
        path = root / relative
        if not path.exists():
            raise ValueError(f"{path} is missing, though {root / 'manifest.json'} lists it: rebuild the dataset "
                             f"({what})")
        if digest(path) != expected:
            raise ValueError(f"{path} does not match the digest in {root / 'manifest.json'} (damaged or changed "
                             f"since it was written): rebuild the dataset ({what})")
