"""Samples read straight from Parquet datasets written by the same writers the flows use."""

import json

import numpy as np
import pytest

from clipmemcap.training.datasets import (ActivityNetClips, CocoCaptions, Sample, collate, epoch_order, frame_statistics,
                                         oracle_frames)
from clipmemcap.core.layout import ActivityNetPaths, CocoPaths
from clipmemcap.model.prefix_lm import load_tokenizer
from clipmemcap.core.shards import file_digests, write_captions, write_frame_shard, write_image_shard, write_segments
from conftest import TOKENIZER


def write_manifest(root, **fields):
    """As the flows write it: last, with the digest of every file."""
    files = [p.relative_to(root) for p in root.rglob("*.parquet")]
    (root / "manifest.json").write_text(json.dumps({**fields, "files": file_digests(root, files)}))


def test_activitynet_clip_is_its_segment_slice_of_the_video(tmp_path):
    times = np.arange(130, dtype=np.float32) / np.float32(5)  # 26 s at 5 fps: three row groups
    embeddings = np.random.default_rng(0).standard_normal((130, 8)).astype(np.float32)
    write_frame_shard(tmp_path / "frames" / "v_aaaaaaaaaaa.parquet", "v_aaaaaaaaaaa", times, embeddings, "float32")
    write_segments(tmp_path / "segments" / "train.parquet", [
        {"video_id": "v_aaaaaaaaaaa", "segment": 0, "start": 1.0, "end": 3.3, "caption": "a", "split": "train"},
        {"video_id": "v_aaaaaaaaaaa", "segment": 1, "start": 2.1, "end": 24.0, "caption": "b", "split": "train"}])
    write_manifest(tmp_path)
    clips = ActivityNetClips(ActivityNetPaths(tmp_path, tmp_path / "cache"), "train")
    first, second = clips[0], clips[1]
    assert first.key == ("v_aaaaaaaaaaa", 0) and len(first.frames) == 12  # t = 1.0 ... 3.2
    np.testing.assert_array_equal(first.frames, embeddings[5:17])
    np.testing.assert_allclose(first.times, np.arange(12) / 5, atol=1e-6)  # from the clip's start
    assert len(second.frames) == 109 and second.times[0] == np.float32(2.2) - np.float32(2.1)
    np.testing.assert_array_equal(second.frames, embeddings[11:120])  # across row-group boundaries


def test_coco_sample_is_a_one_frame_clip_per_caption(tmp_path):
    ids = np.array([3, 12_007, 15])
    embeddings = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    for shard in (0, 1):
        keep = ids // 10_000 == shard
        write_image_shard(CocoPaths(tmp_path, tmp_path / "cache").shard(shard), ids[keep], embeddings[keep], "float16")
    write_captions(tmp_path / "captions.parquet", [
        {"image_id": 12_007, "caption": "x", "split": "train"}, {"image_id": 3, "caption": "y", "split": "test"},
        {"image_id": 15, "caption": "z", "split": "restval"}, {"image_id": 12_007, "caption": "w", "split": "train"}])
    write_manifest(tmp_path, shard_span=10_000)
    data = CocoCaptions(CocoPaths(tmp_path, tmp_path / "cache"), ("train", "restval"))
    assert len(data) == 3 and [data[i].caption for i in range(3)] == ["x", "z", "w"]
    np.testing.assert_allclose(data[0].frames[0], embeddings[1], atol=1e-2)  # stored as float16
    assert data[0].frames.shape == (1, 8) and data[0].times.tolist() == [0.0]


def test_collate_pads_clips_and_captions_and_order_is_seeded(tmp_path):
    from clipmemcap.training.datasets import Sample

    tokenizer = load_tokenizer(TOKENIZER)
    batch = collate([Sample(("a", 0), np.ones((3, 4), np.float32), np.arange(3, dtype=np.float32), "a red circle"),
                     Sample(("b", 0), np.ones((1, 4), np.float32), np.zeros(1, np.float32), "one two three four five")],
                    tokenizer, max_tokens=4)
    assert batch.frames.shape == (2, 3, 4) and batch.lengths.tolist() == [3, 1]
    assert batch.tokens.shape == (2, 4) and batch.token_mask.sum(1).tolist() == [3, 4]
    assert epoch_order(10, 0, 0) == epoch_order(10, 0, 0) != epoch_order(10, 0, 1)


def test_frame_statistics_count_each_image_once(tmp_path):
    samples = [Sample((1, 0), np.array([[1.0, 10.0]], np.float32), np.zeros(1, np.float32), "a"),
               Sample((1, 1), np.array([[1.0, 10.0]], np.float32), np.zeros(1, np.float32), "b"),  # same image
               Sample((2, 0), np.array([[3.0, 10.0]], np.float32), np.zeros(1, np.float32), "c")]
    mean, _ = frame_statistics(samples)
    assert mean.tolist() == [2.0, 10.0]
    with pytest.raises(ValueError, match="training data is empty"):
        frame_statistics([])


def test_frame_statistics_whiten_strong_directions_and_damp_noise():
    rng = np.random.default_rng(0)
    # correlated strong directions of very different variance, and one of rounding noise
    signal = rng.normal(size=(4000, 3)) * [10.0, 1.0, 0.5] @ np.linalg.qr(rng.normal(size=(3, 3)))[0]
    frames = np.concatenate([signal, 1e-4 * rng.normal(size=(4000, 1))], 1).astype(np.float32) + 5.0
    samples = [Sample((i, 0), frames[i : i + 1], np.zeros(1, np.float32), "a") for i in range(len(frames))]
    mean, whitening = frame_statistics(samples, ridge=1e-4)
    white = (frames - mean) @ whitening
    covariance = np.cov(white.T)
    assert np.allclose(covariance[:3, :3], np.eye(3), atol=0.02)  # every signal direction at unit variance
    assert covariance[3, 3] < 1e-3  # the noise direction is not blown up to unit variance


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_or_missing_shard_is_named_before_training_reads_it(tmp_path, damage):
    """A truncated or bit-flipped shard, or one deleted under a complete manifest, surfaced only
    mid-training (or never: 792 of 1,868 single-byte flips gave other embeddings silently)."""
    times = np.arange(60, dtype=np.float32) / np.float32(5)
    for video in ("v_aaaaaaaaaaa", "v_bbbbbbbbbbb"):
        write_frame_shard(tmp_path / "frames" / f"{video}.parquet", video, times, np.ones((60, 8), np.float32), "float16")
    write_segments(tmp_path / "segments" / "train.parquet", [
        {"video_id": v, "segment": 0, "start": 0.0, "end": 5.0, "caption": "a", "split": "train"}
        for v in ("v_aaaaaaaaaaa", "v_bbbbbbbbbbb")])
    write_manifest(tmp_path)
    shard = tmp_path / "frames" / "v_bbbbbbbbbbb.parquet"
    data = bytearray(shard.read_bytes())
    if damage == "flip":
        data[len(data) // 3] ^= 0x01
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(bytes(data[: len(data) // 2]))
    else:
        shard.unlink()
    with pytest.raises(ValueError, match="v_bbbbbbbbbbb.parquet .*rebuild the dataset \\(dvc repro activitynet\\)"):
        ActivityNetClips(ActivityNetPaths(tmp_path, tmp_path / "cache"), "train")


def test_oracle_frames_show_every_event_within_the_window():
    times = np.arange(300) / 5.0  # 60 s at 5 fps
    events = [9.0, 41.0]  # 1 s each, between the uniform picks (every ~4 s)
    index = oracle_frames(times, events, 1.0, 16)
    assert len(index) == 16 and np.all(np.diff(index) > 0)
    for start in events:
        assert np.any((times[index] >= start) & (times[index] < start + 1.0)), start
    uniform = np.round(np.arange(16) * 299 / 15).astype(int)
    assert len(set(index) - set(uniform)) == 2  # two picks moved, the rest as the uniform policy
    # two events next to each other each keep their own frame; a clip within the window is whole
    index = oracle_frames(times, [20.0, 21.2], 1.0, 16)
    assert all(np.any((times[index] >= s) & (times[index] < s + 1.0)) for s in (20.0, 21.2))
    assert oracle_frames(times[:12], [0.5], 1.0, 16).tolist() == list(range(12))
