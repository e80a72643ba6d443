"""Where every artifact lives: the one module that names paths (README "Data layout").

    <root>/sources.json               what the servers of the data's sources said of them (ETag, size, date)
    <root>/benchmark/                 the long-range benchmark's sources (videos, captions.zip, images)
    <root>/activitynet/               frames/<video_id>.parquet, segments/<split>.parquet,
                                      references/val_2.parquet, failures.parquet, manifest.json
    <root>/coco/                      images/shard-<k>.parquet, captions.parquet, failures.parquet,
                                      manifest.json
    <root>/models/pretrain/           pre-training (best/, last/)
    <root>/models/finetune/<run>-<seed>/   fine-tuning of one run and seed, with clip.json
    <root>/evaluation/<run>-<seed>/   predictions.json, dense_captions.json, predictions_gate_shut.json,
                                      dense_protocol.json (evaluate.dense_protocol)
    <root>/captioners/<run>-<seed>/   the run exported to share, with its model card
    <root>/.{activitynet,coco}.lock   the run lock of each data flow (clipmemcap.core.storage_lock)
    <cache>/{activitynet,coco}/       downloads; <cache>/caption/: `caption`'s downloads

and, kept in git beside ``dvc.yaml`` (DVC metrics and plots, relative to the working directory):

    metrics/runs/<run>-<seed>.json, metrics/summary.json, metrics/run.json, metrics/hypotheses.json
    reports/pretrain/, reports/finetune/<run>-<seed>/ (dvclive logs), reports/results/

``root`` is ``storage.root`` (a folder, or an object-store URL for the data flows); ``cache`` is
``storage.cache`` (always local disk).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
ENCODER_SETTINGS = "_encoder.json"  # in a shard folder: the CLIP settings its shards were made with
CLIP_SETTINGS = "clip.json"  # in a fine-tuning run's folder: the CLIP its training frames came from
VOCABULARY = "vocabulary.json"  # beside saved weights: the token ids a restricted output layer scores
CAPTIONER = "captioner.json"  # in an exported captioner's folder (clipmemcap.evaluation.export)

METRICS = Path("metrics")
REPORTS = Path("reports")


def run_name(run: str, seed: int) -> str:
    """A run and seed's folder name, as DVC names its matrix stages (``finetune@memorizing-0``)."""
    return f"{run}-{seed}"


def gate_shut_run(run: str) -> str:
    """The name the report gives a memorizing run decoded with its memory shut."""
    return f"{run}-gate-shut"


class UnsafePath(ValueError):
    """A path from input data that would lead out of the folder it belongs in, or that no file
    system could hold."""


NAME_MAX, PATH_MAX = 255, 4095  # bytes: Linux's limits on one name and on a whole path


def fits_file_system(path: str | Path, what: str = "path") -> Path:
    """``path``, refused with an error naming it when a name in it or the whole is longer than a
    file system allows (the OS would answer every use of it with a traceback)."""
    raw = os.fsencode(str(path))
    longest = max((len(part) for part in raw.split(b"/")), default=0)
    if len(raw) > PATH_MAX or longest > NAME_MAX:
        shown = str(path) if len(str(path)) <= 80 else f"{str(path)[:60]}...{str(path)[-17:]}"
        raise UnsafePath(f"{what} {shown!r} is too long ({len(raw)} bytes, longest name {longest}; "
                         f"limits {PATH_MAX} and {NAME_MAX})")
    return Path(path)


def inside(root: Path, relative: str) -> Path:
    """``root / relative`` resolved (links, ``..``), refused unless it stays inside ``root``: file
    names in annotation files are input data, and nothing outside storage is read, written or
    deleted."""
    base = Path(root).resolve()
    path = (base / fits_file_system(relative, "file name")).resolve()
    fits_file_system(path)
    if base not in path.parents:
        raise UnsafePath(f"{relative!r} is not a path inside {root}")
    return path


def read_manifest(dataset: Path) -> dict:
    """A dataset's manifest; it is written last, so without it the dataset is incomplete."""
    path = dataset / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {dataset}: the dataset is missing or incomplete "
                                f"(run its data flow, or `dvc repro`)")
    return json.loads(path.read_text())


@dataclass(frozen=True)
class BenchmarkPaths:
    root: Path

    @property
    def videos(self) -> Path:
        return self.root / "videos"

    def video(self, video_id: str) -> Path:
        return self.videos / f"{video_id}.mp4"

    @property
    def captions_zip(self) -> Path:
        return self.root / "captions.zip"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def source(self) -> Path:
        return self.root / "source.json"


@dataclass(frozen=True)
class ActivityNetPaths:
    """Outputs (DVC-tracked) under ``out``; downloads under ``cache``."""

    out: Path
    cache: Path

    @property
    def frames(self) -> Path:
        return self.out / "frames"

    def frame_shard(self, video_id: str) -> Path:
        return self.frames / f"{video_id}.parquet"

    @property
    def segments(self) -> Path:
        return self.out / "segments"

    def segments_table(self, split: str) -> Path:
        return self.segments / f"{split}.parquet"

    @property
    def references(self) -> Path:
        return self.out / "references"

    def references_table(self, name: str) -> Path:
        """A further reference set of the test videos, e.g. ``val_2``: segments with captions, no frames."""
        return self.references / f"{name}.parquet"

    @property
    def failures(self) -> Path:
        return self.out / "failures.parquet"

    @property
    def annotations(self) -> Path:
        return self.cache / "captions.zip"

    @property
    def videos(self) -> Path:
        return self.cache / "videos"

    @property
    def lock(self) -> Path:
        """Beside the outputs, not in the cache: runs on one storage root with different work
        folders (two machines on one object store) must still exclude each other."""
        return self.out.with_name(f".{self.out.name}.lock")


@dataclass(frozen=True)
class CocoPaths:
    out: Path
    cache: Path

    @property
    def images(self) -> Path:
        """The embedding shards."""
        return self.out / "images"

    def shard(self, index: int) -> Path:
        """Image ids in ``[index * shard_span, (index + 1) * shard_span)``."""
        return self.images / f"shard-{index:05d}.parquet"

    @property
    def captions(self) -> Path:
        return self.out / "captions.parquet"

    @property
    def failures(self) -> Path:
        return self.out / "failures.parquet"

    @property
    def downloaded_captions(self) -> Path:
        return self.cache / "captions"

    @property
    def downloaded_images(self) -> Path:
        return self.cache / "images"

    @property
    def lock(self) -> Path:
        """Beside the outputs, not in the cache: runs on one storage root with different work
        folders (two machines on one object store) must still exclude each other."""
        return self.out.with_name(f".{self.out.name}.lock")


@dataclass(frozen=True)
class Layout:
    root: Path
    cache: Path

    @classmethod
    def of(cls, cfg) -> Layout:
        """The layout of a :class:`clipmemcap.core.config.Config`."""
        return cls(cfg.storage.root, cfg.storage.cache)

    @property
    def sources(self) -> Path:
        """What the servers of the data's sources said of them (the ``sources`` stage)."""
        return self.root / "sources.json"

    @property
    def benchmark(self) -> BenchmarkPaths:
        return BenchmarkPaths(self.root / "benchmark")

    @property
    def activitynet(self) -> ActivityNetPaths:
        return ActivityNetPaths(self.root / "activitynet", self.cache / "activitynet")

    @property
    def coco(self) -> CocoPaths:
        return CocoPaths(self.root / "coco", self.cache / "coco")

    @property
    def pretrain(self) -> Path:
        return self.root / "models" / "pretrain"

    @property
    def finetune_runs(self) -> Path:
        return self.root / "models" / "finetune"

    def finetune(self, run: str, seed: int) -> Path:
        return self.finetune_runs / run_name(run, seed)

    def evaluation(self, run: str, seed: int) -> Path:
        return self.root / "evaluation" / run_name(run, seed)

    def captioner(self, run: str, seed: int) -> Path:
        return self.root / "captioners" / run_name(run, seed)

    def predictions(self, run: str, seed: int, gate_shut: bool = False, split: str = "test") -> Path:
        """One row per test clip; ``gate_shut``: a memorizing run's, decoded with its memory shut;
        ``split``: a further test set's (the benchmark's ``test-<name>``)."""
        if split != "test":
            return self.evaluation(run, seed) / f"predictions_{split}.json"
        return self.evaluation(run, seed) / ("predictions_gate_shut.json" if gate_shut else "predictions.json")

    @property
    def caption_downloads(self) -> Path:
        return self.cache / "caption"

    # In git, beside dvc.yaml.
    pretrain_logs = REPORTS / "pretrain"
    results = REPORTS / "results"
    summary = METRICS / "summary.json"
    run_summary = METRICS / "run.json"
    hypotheses = METRICS / "hypotheses.json"
    lengths = METRICS / "lengths.json"

    @staticmethod
    def finetune_logs(run: str, seed: int) -> Path:
        return REPORTS / "finetune" / run_name(run, seed)

    @staticmethod
    def run_metrics(run: str, seed: int) -> Path:
        return METRICS / "runs" / f"{run_name(run, seed)}.json"
