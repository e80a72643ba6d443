"""ActivityNet Captions: fetch ``captions.zip``, parse, normalise, validate; the dataset's paths
and tables.

Every segment or video that is dropped is returned as a :class:`Failure` with its reason; nothing
is dropped silently. Segments are sorted by start, so a segment's ``index`` is its position in the
sorted list of the video's valid segments.
"""

from __future__ import annotations

import logging
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from clipmemcap.core.atomic import write_json
from clipmemcap.core.failures import Failure
from clipmemcap.sources.http import DownloadError, fetch_file, is_local
from clipmemcap.sources.remote import offline
from clipmemcap.core.grid import grid_range, merge_ranges
from clipmemcap.core.layout import MANIFEST, ActivityNetPaths
from clipmemcap.core.provenance import tool_versions
from clipmemcap.core.redact import redact
from clipmemcap.core.jsonio import AnnotationError, parse_json
from clipmemcap.core.shards import SCHEMA_VERSION, file_digests, write_failures, write_segments

ANNOTATION_FILES = ("train.json", "val_1.json", "val_2.json")
VIDEO_ID = re.compile(r"v_[A-Za-z0-9_-]{11}")  # matched whole: `$` alone would accept a trailing newline
STAGE = "annotations"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segment:
    index: int
    start: float
    end: float  # clamped to the video's duration
    caption: str


@dataclass(frozen=True)
class Video:
    video_id: str
    duration: float
    segments: tuple[Segment, ...]

    @property
    def youtube_id(self) -> str:
        return self.video_id[2:]

    def frame_count(self, fps: float) -> int:
        return sum(len(r) for r in self.frame_ranges(fps))

    def frame_ranges(self, fps: float) -> list[range]:
        """Merged grid ranges of all segments: each grid frame once, one seek per range."""
        return merge_ranges([grid_range(s.start, s.end, fps) for s in self.segments])


@dataclass
class AnnotationFile:
    name: str
    videos: dict[str, Video] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    raw_segments: int = 0


def download_annotations(url: str, dest: Path, timeout_s: float = 60.0, deadline_s: float = math.inf) -> Path:
    """Fetch ``url`` to ``dest`` unless a valid zip is already there (``timeout_s`` bounds each
    wait for data, ``deadline_s`` the whole download). A local path (no URL scheme) is read where
    it is, never cached, so a regenerated source is always seen."""
    if is_local(url):
        if not Path(url).is_file():
            raise AnnotationError(f"annotations file {url} does not exist")
        dest = Path(url)
    elif not (dest.exists() and zipfile.is_zipfile(dest)):
        try:
            fetch_file(url, dest, timeout_s, deadline_s)
        except DownloadError as err:
            raise type(err)(f"cannot fetch the annotations: {err}; {offline('activitynet.annotations_url')}") from None
    if not zipfile.is_zipfile(dest):
        if not is_local(url):
            dest.unlink()
        raise AnnotationError(f"{redact(url)} is not a zip file")
    return dest


def read_zip(path: Path, max_mb: float = math.inf, further: tuple[str, ...] = ()) -> dict[str, bytes]:
    """The three annotation files and the ``further`` ones (the benchmark's further test sets)
    from the zip, found by base name (the zip may nest them); a member larger than ``max_mb``
    uncompressed is refused before it is read."""
    wanted = (*ANNOTATION_FILES, *further)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise AnnotationError(f"{path}: not a valid zip file ({err})") from err
    with archive:
        members = {PurePosixPath(n).name: n for n in archive.namelist() if not n.endswith("/")}
        missing = [name for name in wanted if name not in members]
        if missing:
            raise AnnotationError(f"{path}: missing {', '.join(missing)}")
        for name in wanted:
            size = archive.getinfo(members[name]).file_size
            if size > max_mb * 1e6:
                raise AnnotationError(f"{path}: {name} is {size / 1e6:.0f} MB uncompressed, more than "
                                      f"activitynet.max_annotation_mb ({max_mb:g})")
        return {name: archive.read(members[name]) for name in wanted}


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return float(value)


def normalise_file(name: str, data: dict, fps: float, max_segments: int = 1000,
                   max_duration_s: float = math.inf) -> AnnotationFile:
    """Validate one parsed file; see the module docstring for the rules."""
    result = AnnotationFile(name)
    for video_id, entry in data.items():

        def reject(reason: str) -> None:
            result.failures.append(Failure(str(video_id), STAGE, f"{name}: {reason}"))

        if not VIDEO_ID.fullmatch(str(video_id)):
            reject("video id does not match ^v_[A-Za-z0-9_-]{11}$")
            continue
        try:
            duration = _number(entry["duration"])
            timestamps, sentences = entry["timestamps"], entry["sentences"]
            if len(timestamps) != len(sentences):
                raise ValueError(f"{len(timestamps)} timestamps but {len(sentences)} sentences")
            pairs = [(_number(s), _number(e), str(text)) for (s, e), text in zip(timestamps, sentences)]
        except (KeyError, TypeError, ValueError, OverflowError) as err:  # Overflow: an integer beyond float
            reject(f"malformed entry ({type(err).__name__}: {err})")
            continue
        if duration <= 0:
            reject(f"duration {duration} is not positive")
            continue
        if duration > max_duration_s:
            reject(f"duration {duration:g} s is more than activitynet.download.max_duration_s ({max_duration_s:g})")
            continue
        if len(pairs) > max_segments:
            reject(f"{len(pairs)} segments, more than activitynet.max_segments_per_video ({max_segments})")
            continue
        result.raw_segments += len(pairs)
        kept = []
        for raw_index, (start, end, text) in enumerate(pairs):
            where = f"segment {raw_index} [{start}, {end}]"
            caption = text.strip()
            end = min(end, duration)
            if start < 0:
                reject(f"{where}: negative start")
            elif start >= duration:
                reject(f"{where}: start is at or after the duration {duration}")
            elif end <= start:
                reject(f"{where}: end <= start after clamping to the duration {duration}")
            elif not caption:
                reject(f"{where}: empty sentence")
            elif len(grid_range(start, end, fps)) == 0:
                reject(f"{where}: no frame of the {fps:g} fps grid lies inside")
            else:
                kept.append((start, end, caption))
        kept.sort(key=lambda item: (item[0], item[1]))
        if not kept:
            reject("no valid segment left")
            continue
        segments = tuple(Segment(i, s, e, c) for i, (s, e, c) in enumerate(kept))
        result.videos[video_id] = Video(video_id, duration, segments)
    return result


def load_annotations(zip_path: Path, fps: float, max_mb: float = math.inf, max_segments: int = 1000,
                     max_duration_s: float = math.inf, further: tuple[str, ...] = ()) -> dict[str, AnnotationFile]:
    """Parse and normalise all three files and the ``further`` test files, within the given
    bounds. A video listed in both train.json and a test file (val_1.json, a further one: which
    would leak test data into training) is removed from both and recorded."""
    files = {
        name: normalise_file(name, parse_json(name, payload), fps, max_segments, max_duration_s)
        for name, payload in read_zip(zip_path, max_mb, further).items()
    }
    train = files["train.json"]
    for test in (files[name] for name in ("val_1.json", *further)):
        for video_id in sorted(train.videos.keys() & test.videos.keys()):
            for afile in (train, test):
                del afile.videos[video_id]
                afile.failures.append(
                    Failure(video_id, STAGE, f"{afile.name}: listed in both train.json and {test.name}")
                )
    return files


def _segment_rows(videos: list[Video], split: str) -> list[dict]:
    return [{"video_id": v.video_id, "segment": s.index, "start": s.start, "end": s.end, "caption": s.caption,
             "split": split} for v in sorted(videos, key=lambda v: v.video_id) for s in v.segments]


def second_references(test: list[Video], val_2: AnnotationFile) -> list[Video]:
    """The test videos (drawn from val_1.json) as val_2.json annotates them: the official
    evaluation pools both files' references."""
    return [val_2.videos[v.video_id] for v in test if v.video_id in val_2.videos]


def write_activitynet_tables(paths: ActivityNetPaths, chosen: dict[str, list[Video]], references: dict[str, list[Video]],
                             failures: list[Failure], fps: float, manifest: dict) -> dict:
    """Segments per split, further reference sets of the test videos (``{"val_2": videos}``),
    failures, and the manifest (written last: its presence means the dataset is complete). Shards
    of videos no longer chosen are removed so that ``frames/`` holds exactly the dataset."""
    keep = {v.video_id for videos in chosen.values() for v in videos}
    for path in paths.frames.glob("*.parquet"):
        if path.stem not in keep:
            log.info("removing shard of %s: not in the selected subset", path.stem)
            path.unlink()
    segment_counts = {}
    for split, videos in chosen.items():
        rows = _segment_rows(videos, split)
        write_segments(paths.segments_table(split), rows)
        segment_counts[split] = len(rows)
    for name, videos in references.items():
        write_segments(paths.references_table(name), _segment_rows(videos, "test"))
    write_failures(paths.failures, failures)
    frames = sum(v.frame_count(fps) for videos in chosen.values() for v in videos)
    files = [paths.frame_shard(video_id).relative_to(paths.out) for video_id in sorted(keep)]
    files += [paths.segments_table(split).relative_to(paths.out) for split in chosen]
    files += [paths.references_table(name).relative_to(paths.out) for name in references] + ["failures.parquet"]
    manifest = {**manifest, "schema_version": SCHEMA_VERSION,
                "counts": {"videos": {s: len(v) for s, v in chosen.items()},
                           "segments": segment_counts, "frames": frames, "failures": len(failures),
                           "references": {name: sum(len(v.segments) for v in videos)
                                          for name, videos in references.items()}},
                # which videos were available: the first question about any ActivityNet result
                "video_ids": {s: sorted(v.video_id for v in videos) for s, videos in chosen.items()},
                "tools": tool_versions(),
                "files": file_digests(paths.out, files)}
    write_json(paths.out / MANIFEST, manifest)
    return manifest


def subset_annotations(zip_path: Path, video_ids: dict[str, list[str]]) -> dict[str, dict]:
    """The annotation files restricted to the videos a dataset used (its manifest's ``video_ids``
    per split), entries unchanged: ``train.json`` holds the train and val videos, ``val_1.json``
    and ``val_2.json`` the test videos. Others get the same subset by ingesting these files."""
    raw = {name: parse_json(name, payload) for name, payload in read_zip(zip_path).items()}
    wanted = {"train.json": [*video_ids.get("train", []), *video_ids.get("val", [])],
              "val_1.json": video_ids.get("test", []), "val_2.json": video_ids.get("test", [])}
    return {name: {v: raw[name][v] for v in sorted(ids) if v in raw[name]} for name, ids in wanted.items()}
