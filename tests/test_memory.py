"""Memories as plug-ins: today's kNN memory bit for bit, each read path's knob, and the diagnostics."""

import json

import pytest
import torch

from clipmemcap.model.mappers import MapperConfig, build_mapper, memory_shut
from clipmemcap.model.memory.diagnostics import ReadTotals, recording
from conftest import ASSETS
from memory_reference import digests
from test_mappers import batch, clip, tiny


def test_todays_knn_memory_through_the_plug_in_gives_bit_identical_prefixes_and_gradients():
    """The digests were written by the code before memories became plug-ins (commit b364843)."""
    assert digests() == json.loads((ASSETS / "knn_prefix_digests.json").read_text())


def events_of(lengths, starts, event_frames=3):
    """Event numbers [B, T]: event j + 1 on ``event_frames`` frames from each ``starts[row][j]``."""
    events = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, row_starts in enumerate(starts):
        for number, start in enumerate(row_starts, 1):
            events[row, start : start + event_frames] = number
    return events


CLIPS = [clip(23, 1), clip(30, 2), clip(3, 3)]  # 6, 8 and 1 chunks of 4
STARTS = [[2, 9], [5, 20], [0]]  # every event in an earlier chunk, but the short clip's


def recorded(mapper):
    frames, times, lengths = batch(CLIPS)
    events = events_of(lengths.tolist(), STARTS)
    totals = ReadTotals()
    with torch.no_grad(), recording(mapper) as reads:
        prefix = mapper(frames, times, lengths, events)
    totals.add(reads)
    return prefix, reads, totals.metrics()


def test_a_dense_read_reads_every_stored_frame_and_equals_top_k_with_k_beyond_the_memory():
    dense = tiny("video-memorizing", retrieval="dense", top_k=1)
    everything = tiny("video-memorizing", top_k=1000)
    _, reads, metrics = recorded(dense)
    assert torch.equal(reads[0].selected, reads[0].readable[:, None, None, :].expand_as(reads[0].selected))
    assert metrics["retrieval_recall"] == pytest.approx(metrics["retrieval_base_rate"])
    assert metrics["retrieval_event_coverage"] == 1.0 and metrics["retrieval_clips"] == 2  # the short clip has no memory
    with torch.no_grad():
        inputs = batch(CLIPS)
        assert (dense(*inputs) - everything(*inputs)).abs().max() <= 1e-6


def test_the_oracle_read_adds_every_event_frame_to_top_k_and_needs_the_events():
    top_k, oracle = tiny("video-memorizing", top_k=1), tiny("video-memorizing", top_k=1, retrieval="oracle")
    _, top_reads, top_metrics = recorded(top_k)
    _, oracle_reads, oracle_metrics = recorded(oracle)
    assert oracle_metrics["retrieval_event_coverage"] == 1.0
    assert oracle_metrics["retrieval_recall"] > max(top_metrics["retrieval_recall"], oracle_metrics["retrieval_base_rate"])
    events = oracle_reads[0].events > 0
    read, readable = oracle_reads[0].selected, oracle_reads[0].readable
    assert (read | ~(events & readable)[:, None, None, :]).all()  # every readable event frame is read
    assert torch.equal(read & ~events[:, None, None, :], top_reads[0].selected & ~events[:, None, None, :])
    with pytest.raises(ValueError, match="oracle read needs each frame's event"):
        oracle(*batch(CLIPS))
    with pytest.raises(ValueError, match="whole clips: memory_backend torch"):
        MapperConfig.load("video-memorizing", retrieval="oracle", memory_backend="faiss-flat")


@pytest.mark.parametrize("combine", ["gate", "joint"])
def test_a_differentiable_read_lets_gradients_reach_earlier_chunks_a_detached_one_does_not(combine):
    for differentiable in (False, True):
        mapper = tiny("video-memorizing", differentiable=differentiable, combine=combine, layers=2).train()
        frames, times, lengths = batch([clip(15, 8)])
        frames.requires_grad_(True)
        mapper(frames, times, lengths).pow(2).sum().backward()
        # frames 0-10 are the earlier chunks (the final chunk is frames 11-14)
        assert (frames.grad[0, :11].abs().max() > 0) == differentiable, differentiable
    # the forward pass is the same function of the weights
    detached, flowing = tiny("video-memorizing", combine=combine), tiny("video-memorizing", combine=combine, differentiable=True)
    with torch.no_grad():
        assert torch.equal(detached(*batch(CLIPS)), flowing(*batch(CLIPS)))


def test_the_joint_softmax_weighs_memory_against_local_keys_and_equals_local_attention_without_memory():
    joint = tiny("video-memorizing", combine="joint")
    temporal = tiny("video-temporal", frame_policy="last")
    temporal.load_state_dict(joint.state_dict())
    short = batch([clip(3, 6)])
    with torch.no_grad():
        assert (joint(*short) - temporal(*short)).abs().max() <= 1e-5  # one chunk: nothing to read
        _, _, metrics = recorded(joint)
        assert 0.0 < metrics["memory_weight"] < 1.0
        long = batch([clip(18, 5)])
        assert (joint(*long) - temporal(*long)).abs().max() > 1e-4
        with memory_shut(joint):
            assert (joint(*long) - temporal(*long)).abs().max() <= 1e-5
    gate = tiny("video-memorizing")
    _, _, metrics = recorded(gate)
    assert metrics["memory_weight"] == pytest.approx(0.5)  # sigmoid(0): the gate's initial value
    assert all(metrics[f"memory_weight_head_{h}"] == pytest.approx(0.5) for h in range(4))


def test_retrieval_recall_counts_what_top_k_reads_against_the_base_rate():
    """Recall counted by hand from the recorded reads; the base rate from the clips' layout."""
    mapper = tiny("video-memorizing", top_k=3, layers=1, knn_layers=[0])
    _, reads, metrics = recorded(mapper)
    read = reads[0]
    manual = []
    for row in read.remembers.nonzero().flatten().tolist():
        chosen = read.selected[row] & read.readable[row]
        manual.append(float((chosen & (read.events[row] > 0)).sum() / chosen.sum()))
    assert metrics["retrieval_recall"] == pytest.approx(sum(manual) / len(manual))
    # the final chunk (4 frames) is never stored: 19 and 26 stored frames, 2 x 3 of them events
    assert metrics["retrieval_base_rate"] == pytest.approx((6 / 19 + 6 / 26) / 2)
    assert 0.0 <= metrics["retrieval_attention_on_events"] <= 1.0


def test_bad_memory_settings_name_the_setting():
    for options, message in (({"memory": "lstm"}, "unknown memory 'lstm'"), ({"combine": "sum"}, "unknown memory combine 'sum'"),
                             ({"differentiable": "yes"}, "differentiable must be true or false"),
                             ({"retrieval": "best"}, "unknown retrieval 'best'")):
        with pytest.raises(ValueError, match=message):
            MapperConfig.load("video-memorizing", **options)
    with pytest.raises(ValueError, match="memory_backend torch"):
        recording(build_mapper(MapperConfig.load("video-memorizing", memory_backend="faiss-flat"))).__enter__()
