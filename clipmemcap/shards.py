"""Parquet layout of an ingested dataset (schema version 1). See README, "Data layout".

    <out>/frames/<video_id>.parquet   video_id: string, t: float32 (s), embedding: fixed_size_list<D>
    <out>/segments/<split>.parquet    video_id, segment: int32, start, end: float32, caption, split
    <out>/failures.parquet            video_id, stage, reason: string
    <out>/manifest.json               CLIP model, fps, image size, counts, schema version

All files are zstd-compressed Parquet written atomically (see :mod:`clipmemcap.atomic`), readable
with plain pyarrow, pandas or duckdb (``read_parquet('<out>/frames/*.parquet')``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipmemcap.atomic import atomic_path
from clipmemcap.failures import Failure

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
FAILURES_SCHEMA = pa.schema([("video_id", pa.string()), ("stage", pa.string()), ("reason", pa.string())])


def frames_schema(dim: int, dtype: str) -> pa.Schema:
    value = pa.float16() if dtype == "float16" else pa.float32()
    return pa.schema([("video_id", pa.string()), ("t", pa.float32()), ("embedding", pa.list_(value, dim))])


def write_table(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=COMPRESSION)


def frame_shard_path(frames_dir: Path, video_id: str) -> Path:
    return frames_dir / f"{video_id}.parquet"


def write_frame_shard(path: Path, video_id: str, times: np.ndarray, embeddings: np.ndarray, dtype: str) -> None:
    """One video's frames; ``times`` [n] seconds, ``embeddings`` [n, D]."""
    n, dim = embeddings.shape
    flat = pa.array(embeddings.astype(dtype).reshape(-1))
    table = pa.Table.from_arrays(
        [pa.array([video_id] * n, pa.string()), pa.array(times.astype(np.float32)),
         pa.FixedSizeListArray.from_arrays(flat, dim)],
        schema=frames_schema(dim, dtype),
    )
    write_table(table, path)


def write_segments(path: Path, rows: list[dict]) -> None:
    write_table(pa.Table.from_pylist(rows, schema=SEGMENTS_SCHEMA), path)


def write_failures(path: Path, failures: list[Failure]) -> None:
    rows = [{"video_id": f.video_id, "stage": f.stage, "reason": f.reason} for f in sorted(failures)]
    write_table(pa.Table.from_pylist(rows, schema=FAILURES_SCHEMA), path)


def read_frames(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(times [n] float32, embeddings [n, D] float32) of one frame shard."""
    table = pq.read_table(path)
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    embeddings = column.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)
    return table.column("t").to_numpy(), embeddings
