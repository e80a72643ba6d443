"""Typed settings loaded from ``params.yaml``.

The defaults here are the committed ``params.yaml`` (the long-range benchmark; a test keeps the
two equal), so a settings file only needs what differs from them: ``presets/activitynet.yaml``
holds just the real experiment's differences, and ``clipmemcap preset`` writes them into
``params.yaml`` for DVC.

Every flow, DVC stage and CLI command reads its settings through :func:`load_config`; nothing
reads ``params.yaml`` directly. A run can override any setting with dotted ``key=value`` pairs
(``activitynet.subset.train_videos=5``), the same spelling ``dvc exp run -S`` uses.
"""

from __future__ import annotations

import argparse
import io
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from upath import UPath

from clipmemcap.core.atomic import on_local_disk
from clipmemcap.core.errors import reported
from clipmemcap.core.jsonio import read_bounded
from clipmemcap.core.layout import fits_file_system

DEFAULT_PARAMS = Path("params.yaml")


class Strict(BaseModel):
    # A misspelt key in params.yaml or an override must fail, not be ignored; so must inf and NaN,
    # which pass every numeric bound (`activitynet.fps=.inf` crashed the run much later).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


MAX_URL = 2048  # characters: what browsers and most servers accept


def _fits(path):
    if path is not None and on_local_disk(path):
        fits_file_system(path, "setting")
    return path


def _url_or_path(text: str) -> str:
    if len(text) > MAX_URL:
        raise ValueError(f"{text[:60]!r}... is longer than {MAX_URL} characters")
    return text if "://" in text else str(_fits(Path(text)))


# Settings a file name or URL could not be used as (a traceback deep in a run) fail here instead.
LocalPath = Annotated[Path, AfterValidator(_fits)]
UrlOrPath = Annotated[str, AfterValidator(_url_or_path)]


class StorageConfig(Strict):
    root: Annotated[UPath, AfterValidator(_fits)] = Field(
        UPath("storage"), description="a folder, or an object-store URL (s3://bucket/prefix)")
    work: LocalPath | None = Field(None, description="local folder for downloads; default <root>/cache, "
                                                     "or storage/cache when root is a URL")
    lock_timeout_s: float = Field(3600.0, ge=0.0, description="how long a run waits for another run's lock")
    lock_lease_s: float = Field(600.0, gt=0.0, description="object stores: a lock not renewed for this long "
                                                           "is taken to belong to a dead run")

    @property
    def cache(self) -> Path:
        """Downloads and videos: always on local disk (yt-dlp and ffmpeg need one), also when the
        outputs go to an object store."""
        if self.work is not None:
            return self.work
        return self.root / "cache" if on_local_disk(self.root) else Path("storage") / "cache"


class DaskConfig(Strict):
    # Read from the environment when params.yaml leaves it unset: the cluster is a property of the
    # machine a run starts on, not of the experiment, and must not dirty DVC stages.
    address: str | None = Field(default_factory=lambda: os.environ.get("CLIPMEMCAP_DASK_ADDRESS") or None,
                                description="Dask scheduler (tcp://host:port) for per-video work; null: local")


class SubsetConfig(Strict):
    train_videos: int = Field(200, ge=0)
    test_videos: int = Field(25, ge=0)
    val_fraction: float = Field(0.1, ge=0.0, le=1.0)
    seed: int = 0


class DownloadConfig(Strict):
    # Capped at 480p: CLIP sees 224x224, so more pixels only cost bandwidth and decode time.
    format: str = "bv*[height<=?480]/b[height<=?480]/bv*/b"
    retries: int = Field(3, ge=0, description="extra attempts after a transient failure")
    retry_delay_s: float = Field(5.0, ge=0.0, description="first back-off; doubles each retry")
    socket_timeout_s: float = Field(30.0, gt=0.0)
    rate_limit: str | None = Field(None, pattern=r"^\d+(\.\d+)?[KMGkmg]?$",
                                   description="bytes/s, e.g. '2M' or '500K', passed to yt-dlp")
    cookies_file: LocalPath | None = None
    concurrency: int = Field(4, ge=1)
    # Bounds on what a server may make us fetch and decode (inputs from the internet are hostile).
    deadline_s: float = Field(3600.0, gt=0.0, description="one download's deadline (a video, captions.zip), "
                                                          "however slowly data comes")
    max_filesize_mb: float = Field(4000.0, gt=0.0, description="a larger video is not downloaded")
    max_duration_s: float = Field(14400.0, gt=0.0, description="longer videos (and annotated durations) are refused")
    max_pixels: int = Field(3840 * 2160, ge=1, description="frame width x height; larger videos are refused")


class ActivityNetConfig(Strict):
    annotations_url: UrlOrPath = Field("storage/benchmark/captions.zip", description="a local path or a URL")
    video_url_template: UrlOrPath = "storage/benchmark/videos/v_{youtube_id}.mp4"
    fps: float = Field(5.0, gt=0.0)
    keep_videos: bool = False
    max_annotation_mb: float = Field(200.0, gt=0.0, description="uncompressed size of each annotation file")
    max_segments_per_video: int = Field(1000, ge=1)
    subset: SubsetConfig = SubsetConfig()
    download: DownloadConfig = DownloadConfig()


class ImageDownloadConfig(Strict):
    retries: int = Field(3, ge=0, description="extra attempts of a batch with transient errors")
    retry_delay_s: float = Field(5.0, ge=0.0, description="first back-off; doubles each retry")
    timeout_s: float = Field(30.0, gt=0.0)
    deadline_s: float = Field(3600.0, gt=0.0, description="one download's deadline (the captions file, each image), "
                                                          "however slowly data comes")
    concurrency: int = Field(8, ge=1, description="batches of images downloading at once")


class CocoConfig(Strict):
    captions_url: UrlOrPath = "storage/benchmark/images/caption_datasets.zip"
    captions_format: Literal["karpathy", "official"] = "karpathy"
    images_url_template: UrlOrPath = Field("http://images.cocodataset.org/{file}",
                                           description="{file}: path under the COCO root; {image_id}")
    images_dir: LocalPath | None = Field(Path("storage/benchmark/images"),
                                         description="a local COCO root; then nothing is downloaded")
    subset_images: int | None = Field(None, ge=1, description="null = every image")
    seed: int = 0
    shard_span: int = Field(10_000, ge=1, description="image ids per shard")
    max_pixels: int = Field(50_000_000, ge=1, description="larger images are recorded, not decoded")
    download: ImageDownloadConfig = ImageDownloadConfig()


class DecodeConfig(Strict):
    workers: int = Field(2, ge=1, description="videos decoded at once, each by one ffmpeg")
    ffmpeg_threads: int = Field(1, ge=0, description="decoder threads per ffmpeg; 0 = ffmpeg's choice")


class ClipConfig(Strict):
    model: str = Field("TinyViT-112", description="open_clip model name or path to a model-config JSON")
    pretrained: str | None = Field(None, description="open_clip tag, local checkpoint, or null (random weights)")
    batch_size: int = Field(64, ge=1)
    device: str = Field("auto", description="'auto' picks cuda when available")
    embedding_dtype: str = Field("float16", pattern="^(float16|float32)$")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; null keeps torch's")


class TrainConfig(Strict):
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(16, ge=1)
    epochs: int = Field(5, ge=1)
    # A fraction of all steps, not a fixed count: a short run still reaches the set lr.
    warmup_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.01, ge=0.0)
    grad_clip: float = Field(1.0, gt=0)
    max_tokens: int = Field(16, ge=1, description="caption tokens kept per sample")
    seed: int = 0
    checkpoint_every: int = Field(200, ge=1, description="steps between resumable checkpoints")
    patience: int | None = Field(None, ge=1, description="stop after this many epochs without a lower "
                                                         "validation loss; null: train every epoch")
    device: str = "auto"


class ModelConfig(Strict):
    lm: str = Field("clipmemcap/model/lm_configs/gpt2-tiny.json",
                    description="GPT-2 hub name, local folder, or a GPT2Config JSON (random weights)")
    tokenizer: str = Field("clipmemcap/model/gpt2_tokenizer", description="hub name or a folder with vocab.json and merges.txt")
    finetune_lm: bool = True  # false: GPT-2 frozen, only the mapper trains
    vocabulary: Literal["full", "captions"] = Field(
        "captions", description="captions: GPT-2's output layer scores only the tokens of the training "
                                "(and validation) captions; full: all of GPT-2's tokens")


# The benchmark's video mappers (2 layers of 4 heads, a prefix of 4, W = 16 frames).
BENCHMARK_MAPPER = {"layers": 2, "heads": 4, "prefix_length": 4, "window": 16}


class StageTrainConfig(Strict):
    mapper: str = Field(description="a config in clipmemcap/model/mapper_configs or a JSON path")
    # Field overrides, e.g. {frame_policy: last}; clip_dim and embed_dim always come from the data
    # and from GPT-2.
    mapper_overrides: dict[str, Any] = {}
    train: TrainConfig = TrainConfig()


class PretrainConfig(StageTrainConfig):
    mapper: str = "video-temporal"
    mapper_overrides: dict[str, Any] = BENCHMARK_MAPPER
    train_splits: tuple[str, ...] = ("train",)
    val_splits: tuple[str, ...] = ("val",)
    train: TrainConfig = TrainConfig(lr=2e-3, batch_size=32, epochs=4)


class RunConfig(Strict):
    mapper: str = Field(description="a config in clipmemcap/model/mapper_configs or a JSON path")
    mapper_overrides: dict[str, Any] = {}
    # oracle: each clip cut down to the mapper's window of frames, among them one of each of its
    # events (the benchmark's event times; a bound, not a captioner: it is told where to look)
    frames: Literal["all", "oracle"] = "all"


class FinetuneConfig(Strict):
    """Every run (a mapper: the memorizing one and each baseline) is fine-tuned once per seed."""
    runs: dict[str, RunConfig] = {
        "memorizing": RunConfig(mapper="video-memorizing"),
        "uniform": RunConfig(mapper="video-temporal", mapper_overrides={"frame_policy": "uniform"}),
        "last": RunConfig(mapper="video-temporal", mapper_overrides={"frame_policy": "last"}),
        "mean": RunConfig(mapper="video-temporal", mapper_overrides={"frame_policy": "mean"}),
    }
    mapper_overrides: dict[str, Any] = Field(BENCHMARK_MAPPER, description="applied to every run, before the run's own")
    seeds: tuple[int, ...] = (0, 1, 2)
    # An unstable run (a wide spread over seeds) gets more seeds than finetune.seeds:
    # "<run>-<seed>", each a DVC stage of its own (finetune-more@<run>-<seed>, evaluate-more@...)
    more_seeds: tuple[str, ...] = ()
    train: TrainConfig = TrainConfig(batch_size=16, epochs=5)

    @model_validator(mode="after")
    def _run_names_are_safe(self) -> FinetuneConfig:
        # Run names become folder names and DVC stage names (finetune@<run>-<seed>) in shell commands.
        for name in self.runs:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", name):
                raise ValueError(f"finetune.runs: run name {name!r} must be letters, digits, '_' and '-' "
                                 "(it becomes a folder and a DVC stage name)")
        for item in self.more_seeds:
            match = re.fullmatch(r"(.+)-(\d{1,9})", item)
            if not match or match[1] not in self.runs or int(match[2]) in self.seeds:
                raise ValueError(f"finetune.more_seeds: {str(item)[:80]!r} must be <run>-<seed>, a run of finetune.runs "
                                 "and a seed not in finetune.seeds")
        if len(set(self.more_seeds)) != len(self.more_seeds):
            raise ValueError("finetune.more_seeds: a run's seed is listed twice")
        return self

    def seeds_of(self, name: str) -> tuple[int, ...]:
        """finetune.seeds, then the run's more_seeds."""
        more = [int(item.rpartition("-")[2]) for item in self.more_seeds if item.rpartition("-")[0] == name]
        return (*self.seeds, *more)

    def run(self, name: str, seed: int) -> tuple[str, dict[str, Any], TrainConfig]:
        """Mapper config name, its overrides and the training settings of one run and seed."""
        if name not in self.runs:
            raise ValueError(f"no run {name!r} in finetune.runs (known: {', '.join(self.runs)})")
        run = self.runs[name]
        return run.mapper, {**self.mapper_overrides, **run.mapper_overrides}, self.train.model_copy(update={"seed": seed})


class EvaluateConfig(Strict):
    beam: int = Field(5, ge=1)
    max_tokens: int = Field(16, ge=1)
    batch_size: int = Field(32, ge=1)
    stop_at_period: bool = True  # stop at "." as well as at end-of-text, as ClipCap does
    gate_shut: bool = Field(True, description="decode memorizing runs a second time with the memory shut")
    dense_protocol: bool = Field(False, description="also score by ActivityNet's official protocol (val_1 + val_2)")


class PairedHypothesis(Strict):
    """A pre-registered claim that run ``a`` minus run ``b`` is above ``line`` on the ``clips``
    (paired 95 % interval: wholly above: supported; wholly at or below: refuted; else inconclusive)."""
    claim: str = Field(max_length=300)
    a: str
    b: str
    clips: Literal["long", "control"] = "long"
    line: float = Field(0.0, ge=-1.0, le=1.0)


class LengthHypothesis(Strict):
    """A pre-registered claim about accuracy at other clip lengths (the benchmark's further test
    sets; README "Which memory, from what length"): run ``a`` (or, given several, the one of them
    with the highest long-clip slot accuracy on the 20-60 s test set: chosen before any other
    length is looked at) minus run ``b`` at each of ``lengths`` (paired 95 % interval), or, without
    ``b``, ``a`` at each of ``lengths`` minus ``a`` on the 20-60 s clips (other clips: an unpaired
    interval). Supported when the interval is wholly above ``line`` at every length, refuted
    when it is wholly at or below it at some length, else inconclusive."""
    claim: str = Field(max_length=300)
    a: tuple[str, ...] = Field(min_length=1, max_length=64)
    b: str = ""
    lengths: tuple[str, ...] = Field(min_length=1, max_length=16)
    line: float = Field(0.0, ge=-1.0, le=1.0)


class ReportConfig(Strict):
    slot_accuracy: bool = Field(True, description="score the benchmark's slots; false for ActivityNet's captions")
    length_bin_s: float = Field(10.0, gt=0.0, description="clip-length bins of the slot accuracy plot")
    run: str = Field("memorizing", description="the run whose metrics go to metrics/run.json under plain names")
    # The pre-registered hypotheses (reports/protocol.md) name runs by their role; a run that is
    # not in finetune.runs makes its hypothesis "not run".
    memory_run: str = Field("memorizing", description="the run with the kNN memory; intervals are of it minus each other run")
    baselines: tuple[str, ...] = Field(("uniform", "last", "mean", "uniform-64"),
                                       description="fixed-window runs; H1 takes the best")
    all_frames_run: str = Field("all-frames", description="full attention over every frame (H3)")
    random_run: str = Field("memorizing-random", description="memorizing with random instead of top-k memories (H4)")
    comparisons: dict[str, tuple[str, str]] = Field({}, description="exploratory, not pre-registered: name -> "
                                                    "[a, b], the paired interval of a minus b on long clips")
    # presets/memory.yaml: the read-path factorial's references and its pre-registered hypotheses
    references: tuple[str, ...] = Field((), description="runs every other run is compared with, paired, on long "
                                                       "and control clips (slot_accuracy_*_margin_ci95_vs_<run>)")
    hypotheses: dict[str, PairedHypothesis] = Field({}, description="pre-registered (reports/protocol.md) beside "
                                                    "H1-H4: name -> a claim that a minus b is above a line")
    # presets/lengths.yaml: every run at every length against one reference, and the hypotheses
    length_reference: str = Field("uniform-64", description="the run every run is compared with at every length "
                                                            "(metrics/lengths.json: margin_vs_<run>_ci95)")
    length_hypotheses: dict[str, LengthHypothesis] = Field({}, description="pre-registered (reports/protocol.md): "
                                                           "name -> a claim about other clip lengths")

    @model_validator(mode="after")
    def _hypotheses_are_new(self) -> ReportConfig:
        names = [*self.hypotheses, *self.comparisons, *self.length_hypotheses]
        clashes = {"H1", "H2", "H3", "H4"} & set(names) | {n for n in names if names.count(n) > 1}
        if clashes:
            raise ValueError(f"report: hypothesis and comparison names must differ from H1-H4 and from each other "
                             f"({', '.join(sorted(clashes))})")
        return self


TEST_SET_NAME = re.compile(r"[a-z0-9][a-z0-9_]{0,23}")
MAX_TEST_CLIP_S = 3_600.0  # an hour of frames per clip: beyond it one clip's frames would not fit in memory


class BenchmarkConfig(Strict):
    """The long-range benchmark's source (see clipmemcap.sources.benchmark)."""
    # DVC has no conditional stages; a foreach over an empty list makes none (dvc.yaml)
    build: tuple[Literal["long-range"], ...] = Field(
        ("long-range",), description="the DAG's benchmark stage: [long-range] builds the benchmark, [] leaves the "
                                     "stage out (the real experiment, whose sources come from the internet)")
    seed: int = 0
    # How many videos: activitynet.subset's train_videos, val_fraction and test_videos.
    clips_per_video: int = Field(4, ge=1, description="captioned clips back to back in each video")
    short_fraction: float = Field(0.25, ge=0.0, le=1.0, description="share of short control clips in train and val")
    test_short_fraction: float = Field(0.5, ge=0.0, le=1.0, description="share of short control clips in the test set")
    long_s: tuple[float, float] = Field((20.0, 60.0), description="long clip length range, seconds")
    short_s: tuple[float, float] = Field((2.4, 3.0), description="control clip length range: at most one chunk")
    events: int = Field(2, ge=1)
    event_s: float = Field(1.0, gt=0.0, description="how long each event's shape is on screen")
    min_gap_s: float = Field(0.2, ge=0.0, description="least time between two events")
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow")
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    frame_size: int = Field(112, ge=32, description="square video frames, pixels")
    video_fps: int = Field(5, ge=1)
    event_size: float = Field(0.45, gt=0.0, le=1.0, description="event shape's side / frame side")
    distractors: int = Field(3, ge=0)
    distractor_size: float = Field(0.14, gt=0.0, le=1.0)
    pretrain_images: int = Field(2000, ge=10, description="one-event still frames for pre-training")
    # Further fixed test sets of long clips only, each its own random stream: name -> clip length
    # range, seconds. Each is an annotation file test-<name>.json beside val_1.json, ingested as
    # the split test-<name> and evaluated by every run (README "Which memory, from what length").
    test_lengths: dict[str, tuple[float, float]] = Field(
        {}, max_length=16, description="further test sets: name -> [low, high] seconds of their clips")
    length_test_videos: int = Field(50, ge=1, le=100_000, description="videos of each further test set "
                                                                      "(x clips_per_video clips)")

    @model_validator(mode="after")
    def _clips_hold_their_events(self) -> BenchmarkConfig:
        needed = self.events * self.event_s + (self.events - 1) * self.min_gap_s
        ranges = {"short_s": self.short_s, "long_s": self.long_s,
                  **{f"test_lengths.{name}": span for name, span in self.test_lengths.items()}}
        for name, (low, high) in ranges.items():
            if not needed <= low <= high:
                raise ValueError(f"benchmark.{name} {[low, high]}: clips must be at least {needed:g} s "
                                 f"(events x event_s + gaps) and the range ordered")
            if high > MAX_TEST_CLIP_S:
                raise ValueError(f"benchmark.{name} {[low, high]}: clips of at most {MAX_TEST_CLIP_S:g} s")
        for name in self.test_lengths:
            if not TEST_SET_NAME.fullmatch(name):
                raise ValueError(f"benchmark.test_lengths: {name[:40]!r} is not a test set name "
                                 f"({TEST_SET_NAME.pattern}: it becomes a file name)")
        return self

    def test_sets(self) -> dict[str, tuple[float, float]]:
        """The further test sets' splits (``test-<name>``, also their annotation files' names
        without ``.json``) and clip length ranges."""
        return {f"test-{name}": span for name, span in self.test_lengths.items()}


class Config(Strict):
    storage: StorageConfig = StorageConfig()
    dask: DaskConfig = Field(default_factory=DaskConfig)
    activitynet: ActivityNetConfig = ActivityNetConfig()
    coco: CocoConfig = CocoConfig()
    decode: DecodeConfig = DecodeConfig()
    clip: ClipConfig = ClipConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    report: ReportConfig = ReportConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()

    @model_validator(mode="after")
    def _test_sets_come_from_the_benchmark(self) -> Config:
        if self.benchmark.test_lengths and not self.benchmark.build:
            raise ValueError("benchmark.test_lengths: the further test sets are the benchmark's, and "
                             "benchmark.build [] leaves the benchmark out")
        return self


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {text!r} is not of the form key.path=value")
    return key.strip().split("."), yaml.safe_load(raw)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return data


def overlay_items(overlay: dict, section: type[BaseModel] = None, path: tuple[str, ...] = ()) -> list[tuple[list[str], Any]]:
    """The (key path, value) pairs a preset sets: it descends into settings sections and stops at
    fields, so a mapping-valued field (``finetune.runs``, ``mapper_overrides``) is replaced whole."""
    section = section or Config
    items = []
    for key, value in overlay.items():
        field = section.model_fields.get(key)
        if field is None:
            raise ValueError(f"preset: unknown setting {'.'.join(map(str, (*path, key)))!r}")
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel) and isinstance(value, dict):
            items += overlay_items(value, kind, (*path, key))
        else:
            items.append(([*path, key], value))
    return items


MAX_SETTINGS_BYTES = 1_000_000  # a settings file or preset; the committed params.yaml is 9 kB


def read_settings(path: Path, what: str = "settings file") -> dict:
    """A YAML file of settings sections; malformed YAML, a file that is not a mapping, and
    anything but a regular file of bounded size are errors that name it."""
    try:
        data = yaml.safe_load(read_bounded(path, MAX_SETTINGS_BYTES, what))
    except yaml.YAMLError as err:
        raise ValueError(f"{what} {path} is not valid YAML ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} is not a mapping of settings (it holds a {type(data).__name__})")
    return data


def apply_preset(params: Path, preset: Path) -> Config:
    """Write ``preset``'s settings into the settings file ``params`` (comments and every other
    setting kept) and return the result, validated before anything is written."""
    from ruamel.yaml import YAML  # DVC's own YAML library; round-trips comments

    overlay = read_settings(preset, "preset")
    read_settings(params)
    yaml_rt = YAML()
    yaml_rt.width, yaml_rt.preserve_quotes = 4096, True
    document = yaml_rt.load(params.read_text())
    for keys, value in overlay_items(overlay):
        node = document
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"{params}: {'.'.join(keys[:-1])} is not a section of settings")
        node[keys[-1]] = value
        if hasattr(node, "ca"):  # the old value's comment no longer describes it
            node.ca.items.pop(keys[-1], None)
    buffer = io.StringIO()
    yaml_rt.dump(document, buffer)
    cfg = Config.model_validate(yaml.safe_load(buffer.getvalue()))
    params.write_text(buffer.getvalue())
    return cfg


def load_config(path: Path | str | None = DEFAULT_PARAMS, overrides: list[str] = ()) -> Config:
    """Read ``path`` (None = all defaults), apply overrides, validate."""
    data = read_settings(Path(path)) if path is not None else {}
    return Config.model_validate(apply_overrides(data, list(overrides)))


def settings_parser(doc: str | None, **kwargs) -> argparse.ArgumentParser:
    """A command line with ``--params FILE`` and repeatable ``--set KEY=VALUE``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    add_settings_arguments(parser)
    return parser


def add_settings_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="settings file (default: params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting for this run, e.g. activitynet.subset.train_videos=20 (repeatable)")
    return parser


def add_run_arguments(parser: argparse.ArgumentParser, stage: str) -> argparse.ArgumentParser:
    """``--run`` and ``--seed`` of a per-run stage; without them, DVC's ``DVC_STAGE`` names them."""
    parser.add_argument("--run", help=f"a run of finetune.runs, e.g. memorizing (default: from DVC_STAGE, which DVC "
                                      f"sets to {stage}@<run>-<seed>)")
    parser.add_argument("--seed", type=int, help="the training seed, one of finetune.seeds (default: from DVC_STAGE)")
    return parser


def run_and_seed(args: argparse.Namespace, stage: str) -> tuple[str, int]:
    """The run and seed from the command line or, as ``dvc repro`` runs the stage, from the name
    DVC gives it in ``DVC_STAGE`` (``finetune@memorizing-0``, or ``finetune-more@all-frames-3`` for
    a seed of finetune.more_seeds). dvc.yaml's commands never carry the run's name: a name in
    params.yaml or a preset would be a shell word there, run before any check."""
    if args.run is not None and args.seed is not None:
        return args.run, args.seed
    named = os.environ.get("DVC_STAGE", "")
    match = re.fullmatch(rf"(?:.*:)?{stage}(?:-more)?@(.+)-(-?\d+)", named)
    if args.run is not None or args.seed is not None or not match:
        raise ValueError(f"give both --run and --seed (or run it as DVC's {stage}@<run>-<seed> stage; DVC_STAGE is "
                         f"{named[:80]!r})")
    return match[1], int(match[2])


def run_command(parser: argparse.ArgumentParser, work: Callable[[argparse.Namespace, Config], object],
                argv: list[str] | None = None) -> None:
    """Parse ``argv``, load the settings, run ``work``; bad input ends the process with one line
    that names it, not a traceback (:func:`clipmemcap.core.errors.reported`)."""
    args = parser.parse_args(argv)
    with reported(parser.prog):
        work(args, load_config(args.params, args.overrides))
