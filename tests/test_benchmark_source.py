"""The long-range benchmark's sources (real h264 through ffmpeg) and its slot accuracy."""

import json
import random
import zipfile

import numpy as np
import pytest

from clipmemcap.sources.activitynet import load_annotations
from clipmemcap.core.config import BenchmarkConfig, SubsetConfig
from clipmemcap.frames.ffmpeg_frames import decode_range
from clipmemcap.sources.video_download import probe_video
from clipmemcap.core.grid import grid_range
from clipmemcap.core.layout import BenchmarkPaths
from clipmemcap.results.slots import slot_accuracy, slots
from clipmemcap.sources.benchmark import PALETTE, Clip, plan, write_sources

CFG = BenchmarkConfig(long_s=(8.0, 12.0), pretrain_images=20)
SUBSET = SubsetConfig(train_videos=6, test_videos=4, val_fraction=0.34)


def _shows(frame: np.ndarray, colour: str) -> bool:
    """More than 5 % of the frame within a small distance of the colour."""
    distance = np.abs(frame.astype(int) - np.array(PALETTE[colour])).sum(-1)
    return (distance < 60).mean() > 0.05


def test_a_clip_shows_each_event_for_its_length_and_names_them_in_order():
    clip = Clip(random.Random(3), 20.0, CFG)
    assert len(set(clip.kinds)) == 2
    assert clip.caption == f"a {clip.kinds[0][0]} {clip.kinds[0][1]}, then a {clip.kinds[1][0]} {clip.kinds[1][1]}."
    assert clip.starts[0] + CFG.event_s + CFG.min_gap_s <= clip.starts[1] + 1e-9
    assert clip.starts[1] + CFG.event_s <= 20.0
    for (colour, _), start in zip(clip.kinds, clip.starts):
        shown = [n for n in range(200) if _shows(clip.frame(n / CFG.video_fps), colour)]
        # 10 video frames a second; the other event may share the colour, so look near this one
        near = [n for n in shown if start - 0.5 <= n / CFG.video_fps < start + CFG.event_s + 0.5]
        assert len(near) == round(CFG.event_s * CFG.video_fps)


def test_events_are_placed_all_over_the_clip():
    starts = np.array([Clip(random.Random(seed), 60.0, CFG).starts for seed in range(200)])
    assert starts[:, 0].min() < 5 and starts[:, 1].max() > 54  # early and late events both happen
    assert (starts[:, 1] - starts[:, 0]).mean() > 15  # typically far apart


def test_a_clip_too_short_for_its_events_is_an_error_naming_the_numbers():
    with pytest.raises(ValueError, match="a clip of 2.0 s cannot hold 2 events of 1.0 s with gaps of 0.2 s"):
        Clip(random.Random(0), 2.0, CFG)


def test_the_source_is_real_video_and_official_annotations(tmp_path):
    summary = write_sources(CFG, SUBSET, BenchmarkPaths(tmp_path))
    captions = load_annotations(tmp_path / "captions.zip", fps=5)
    train, test = captions["train.json"].videos, captions["val_1.json"].videos
    assert len(train) == 6 + 3 and len(test) == 4 and summary["videos"] == 13
    assert all(f.failures == [] for f in captions.values())
    segments = [s for v in [*train.values(), *test.values()] for s in v.segments]
    assert len(segments) == summary["clips"] == 13 * CFG.clips_per_video
    short = [s for s in segments if s.end - s.start <= CFG.short_s[1]]
    assert len(short) == summary["short_clips"] == 9 + 8  # every 4th train clip (of 36), every 2nd test clip (of 16)
    for video in [*train.values(), *test.values()]:
        assert abs(probe_video(tmp_path / "videos" / f"{video.video_id}.mp4") - video.duration) < 0.15
        bounds = [(s.start, s.end) for s in video.segments]  # clips back to back, covering the video
        assert bounds[0][0] == 0 and all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert abs(bounds[-1][1] - video.duration) < 1e-6
        assert all(len(slots(s.caption, CFG)) == 2 for s in video.segments)
    # the pre-training images: one event each, COCO's Karpathy format
    with zipfile.ZipFile(tmp_path / "images" / "caption_datasets.zip") as archive:
        images = json.loads(archive.read("dataset_coco.json"))["images"]
    assert len(images) == 20 and {i["split"] for i in images} == {"train", "val"}
    assert all(len(slots(i["sentences"][0]["raw"], CFG)) == 1 for i in images)
    assert all((tmp_path / "images" / i["filepath"] / i["filename"]).exists() for i in images)


def test_events_survive_encoding_and_5_fps_sampling(tmp_path):
    """The whole video decodes on ingest's 5 fps grid, and every 1 s event is on all 5 of the
    frames during it."""
    write_sources(CFG, SUBSET, BenchmarkPaths(tmp_path))
    for video_id, video in plan(CFG, SUBSET)["val_1.json"].items():
        grid = grid_range(0.0, video.duration, 5)  # every frame ingest decodes for the video's segments
        frames = np.concatenate(list(decode_range(tmp_path / "videos" / f"{video_id}.mp4", grid, 5, 112)))
        times = np.arange(len(frames)) / 5
        for clip, offset in zip(video.clips, video.starts):
            for (colour, _), start in zip(clip.kinds, clip.starts):
                during = [f for f, t in zip(frames, times) if offset + start <= t + 1e-9 < offset + start + CFG.event_s]
                assert len(during) == 5 and all(_shows(f, colour) for f in during), (video_id, colour)


def test_changed_settings_make_new_videos_and_drop_the_old(tmp_path):
    write_sources(CFG, SUBSET, BenchmarkPaths(tmp_path))
    before = set((tmp_path / "videos").glob("*.mp4"))
    write_sources(CFG, SUBSET, BenchmarkPaths(tmp_path))  # same settings: the same files, kept
    assert set((tmp_path / "videos").glob("*.mp4")) == before
    write_sources(CFG.model_copy(update={"event_size": 0.5}), SUBSET, BenchmarkPaths(tmp_path))
    after = set((tmp_path / "videos").glob("*.mp4"))
    assert len(after) == len(before) and not after & before


def test_the_test_set_is_fixed_whatever_the_training_size(tmp_path):
    """The test videos used to come from the training videos' random stream: more training
    videos meant other (and differently hard) test clips."""
    def test_set(subset, folder):
        write_sources(CFG, subset, BenchmarkPaths(folder))
        annotations = json.loads(zipfile.ZipFile(folder / "captions.zip").read("val_1.json"))
        return annotations, {v: (folder / "videos" / f"{v}.mp4").read_bytes() for v in annotations}

    annotations, videos = test_set(SUBSET, tmp_path / "a")
    other = SUBSET.model_copy(update={"train_videos": 9, "val_fraction": 0.5, "seed": 7})
    assert test_set(other, tmp_path / "b") == (annotations, videos)  # same ids, same bytes
    assert test_set(SUBSET, tmp_path / "c") == (annotations, videos)  # and the same again
    assert len(annotations) == SUBSET.test_videos
    lengths = [end - start for video in annotations.values() for start, end in video["timestamps"]]
    assert sum(n <= CFG.short_s[1] for n in lengths) == len(lengths) / 2  # test_short_fraction 0.5
    # a larger test set starts with the smaller one
    larger = plan(CFG, SUBSET.model_copy(update={"test_videos": 6}))["val_1.json"]
    assert list(larger)[:SUBSET.test_videos] == list(annotations)
    # the training videos do change with the training size
    assert set(plan(CFG, other)["train.json"]) != set(plan(CFG, SUBSET)["train.json"])


@pytest.mark.parametrize("prediction,score", [
    ("a red circle, then a blue square.", 1.0),
    ("A red circle then a blue square", 1.0),
    ("a blue square, then a red circle.", 0.0),  # both right, order wrong
    ("a red circle, then a green square.", 0.5),
    ("a red circle.", 0.5),
    ("a red triangle, then a blue square, then a red circle.", 0.5),
    ("", 0.0),
])
def test_slot_accuracy_counts_each_event_at_its_position(prediction, score):
    assert slot_accuracy([(prediction, "a red circle, then a blue square.")], CFG) == score


def test_slot_accuracy_is_the_mean_over_clips():
    pairs = [("a red circle, then a blue square.", "a red circle, then a blue square."),
             ("a red circle.", "a red circle, then a blue square.")]
    assert slot_accuracy(pairs, CFG) == 0.75


def test_settings_whose_clips_cannot_hold_the_events_are_refused():
    with pytest.raises(ValueError, match=r"benchmark.short_s \[2.4, 3.0\]: clips must be at least 3.2 s"):
        BenchmarkConfig(event_s=1.5)


def test_further_test_sets_of_other_lengths_are_fixed_streams_of_their_own(tmp_path):
    further = CFG.model_copy(update={"test_lengths": {"long": (20.0, 24.0)}, "length_test_videos": 2})
    write_sources(further, SUBSET, BenchmarkPaths(tmp_path))
    archive = zipfile.ZipFile(tmp_path / "captions.zip")
    val_1, extra = (json.loads(archive.read(name)) for name in ("val_1.json", "test-long.json"))
    assert val_1 == json.loads(archive.read("val_1.json")) and len(extra) == 2
    lengths = [end - start for video in extra.values() for start, end in video["timestamps"]]
    assert len(lengths) == 2 * CFG.clips_per_video and all(20.0 <= n <= 24.0 for n in lengths)  # long clips only
    assert all((tmp_path / "videos" / f"{v}.mp4").exists() for v in extra)
    # the other files do not change with the further sets; a further set changes with its range
    assert {name: list(v) for name, v in plan(CFG, SUBSET).items()} == \
        {name: list(v) for name, v in plan(further, SUBSET).items() if name != "test-long.json"}
    moved = further.model_copy(update={"test_lengths": {"long": (20.0, 25.0)}})
    assert not set(plan(moved, SUBSET)["test-long.json"]) & set(extra)
    # and the ActivityNet loader reads it beside the three official files
    files = load_annotations(tmp_path / "captions.zip", 5, further=("test-long.json",))
    assert len(files["test-long.json"].videos) == 2 and not files["test-long.json"].failures


@pytest.mark.parametrize("lengths,message", [
    ({"../x": (20.0, 30.0)}, "not a test set name"),
    ({"Long": (20.0, 30.0)}, "not a test set name"),
    ({"long": (30.0, 20.0)}, "test_lengths.long"),
    ({"long": (1.0, 20.0)}, "at least 2.2 s"),
    ({"long": (20.0, 1e9)}, "at most 3600 s"),
])
def test_bad_further_test_sets_are_refused_by_name(lengths, message):
    with pytest.raises(ValueError, match=message):
        BenchmarkConfig(test_lengths=lengths)
