"""The slot memories (reservoir, merge, kmeans, recurrent tokens) as the memorizing mapper's plug-ins: streamed =
whole clip, no leak across a batch's clips, bounded by their slots however long the clip,
gradients only where declared, and each one's way of making room."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipmemcap.model.mappers import MapperConfig, step_by_step
from clipmemcap.model.memory.diagnostics import ReadTotals, recording
from clipmemcap.model.memory.recurrent import RecurrentWrite
from clipmemcap.model.memory.slots import MECHANISMS, Slots, remember
from test_mappers import batch, clip, tiny
from test_memory import events_of

READS = [{}, {"retrieval": "dense", "combine": "joint"}, {"knn_layers": (0, 1), "top_k": 1}]
CLIPS = [23, 5, 1, 9, 16, 30]
ALL = (*MECHANISMS, "recurrent")  # recurrent tokens: the slot memories' views, a learned write


def slot_mapper(mechanism, **options):
    if mechanism == "recurrent":  # trained through time, by definition
        options = {**options, "differentiable": True}
    return tiny("video-memorizing", memory=mechanism, memory_capacity=5, **options)


@pytest.mark.parametrize("options", READS)
@pytest.mark.parametrize("mechanism", ALL)
def test_a_streamed_clip_and_a_clip_alone_give_the_prefix_of_the_whole_batch(mechanism, options):
    mapper = slot_mapper(mechanism, **options)
    clips = [clip(n, seed) for seed, n in enumerate(CLIPS)]
    rng = np.random.default_rng(0)
    with torch.no_grad():
        whole = mapper(*batch(clips))
        for row, (frames, times) in enumerate(clips):
            assert (mapper(*batch([(frames, times)]))[0] - whole[row]).abs().max() <= 1e-5
            stream, fed = mapper.stream(len(frames)), 0
            while fed < len(frames):
                size = int(rng.integers(1, 7))
                stream.feed(frames[fed : fed + size], times[fed : fed + size])
                fed += size
            assert (stream.prefix()[0] - whole[row]).abs().max() <= 1e-5, row


@pytest.mark.parametrize("mechanism", ALL)
def test_memory_is_read_and_bounded_by_its_slots_however_long_the_clip(mechanism):
    mapper = slot_mapper(mechanism)
    frames, times = clip(24, 7)  # 6 chunks of 4
    changed = frames.clone()
    changed[:20] += 3.0  # the earlier chunks differ, the final one does not
    with torch.no_grad():
        assert (mapper(*batch([(frames, times)])) - mapper(*batch([(changed, times)]))).abs().max() > 1e-4
        stream = mapper.stream(2_000)
        for start in range(0, 2_000, 100):
            block = torch.randn(100, 16), torch.arange(start, start + 100).float() / 5
            stream.feed(*block)
            slots = next(iter(stream.memories.values())).slots
            assert slots.keys.shape[2] <= 5 and slots.counts.shape[1] <= 5
        assert int(slots.seen) == 2_000


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_gradients_reach_earlier_chunks_only_through_a_differentiable_memory(mechanism):
    for differentiable in (False, True):
        mapper = slot_mapper(mechanism, differentiable=differentiable).train()
        frames, times, lengths = batch([clip(15, 8), clip(7, 9)])
        frames.requires_grad_(True)
        mapper(frames, times, lengths).pow(2).sum().backward()
        assert torch.isfinite(frames.grad).all()
        assert frames.grad[0, 11:15].abs().min() > 0  # the final chunk
        assert (frames.grad[0, :11].abs().max() > 0) == differentiable, differentiable
        for name, parameter in mapper.named_parameters():
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_recurrent_tokens_are_trained_through_time_with_their_write():
    mapper = slot_mapper("recurrent").train()
    frames, times, lengths = batch([clip(15, 8), clip(7, 9)])
    frames.requires_grad_(True)
    mapper(frames, times, lengths).pow(2).sum().backward()
    assert frames.grad[0, :11].abs().max() > 0  # the earlier chunks, through the tokens
    writes = [m for m in mapper.modules() if isinstance(m, RecurrentWrite)]
    assert len(writes) == 1 and all(p.grad.abs().max() > 0 for p in writes[0].parameters())
    assert not any(isinstance(m, RecurrentWrite) for m in slot_mapper("merge").modules())  # no parameters elsewhere


def test_the_recurrent_write_summarises_memory_and_frames_and_skips_a_row_without_frames():
    write = RecurrentWrite(heads=1, head_dim=8, tokens=2)
    frames = unit(torch.randn(1, 1, 4, 8)).expand(2, -1, -1, -1)  # [B, H, W, d]
    with torch.no_grad():  # token 0 looks for frame 2, token 1 for frame 3
        write.write.copy_(50 * frames[0, 0, 2:4].T[None])
    mask = torch.tensor([[True] * 4, [False] * 4])
    slots = write(Slots.empty(frames, 2), frames, 2 * frames, mask, torch.tensor([[0, 0, 1, 2]] * 2))
    assert slots.keys.shape == (2, 1, 2, 8) and slots.counts.tolist() == [[1, 1], [0, 0]]
    assert torch.allclose(slots.keys[0, 0], frames[0, 0, 2:4], atol=1e-3)  # each token took its frame
    assert torch.allclose(slots.values[0, 0], 2 * frames[0, 0, 2:4], atol=1e-3)
    assert slots.events[0].tolist() == [1, 2]
    assert torch.equal(slots.keys[1], write.keys) and int(slots.seen[1]) == 0  # nothing written: its first tokens


def write(mechanism, keys, capacity, chunk=4, events=None):
    """Every frame of ``keys [n, H, d]`` written chunk after chunk into one clip's slots."""
    n, H, d = keys.shape
    events = torch.zeros(n, dtype=torch.long) if events is None else events
    slots = Slots.empty(keys.new_zeros(1, H, chunk, d), 1)
    for start in range(0, n, chunk):
        part = keys[start : start + chunk].permute(1, 0, 2)[None]  # [1, H, c, d]
        mask = torch.ones(1, part.shape[2], dtype=torch.bool)
        slots = remember(slots, part, part, mask, events[None, start : start + chunk], capacity, mechanism)
    return slots


def unit(x):
    return F.normalize(x, dim=-1)


def test_reservoir_keeps_a_uniform_sample_of_every_frame_seen():
    keys = unit(torch.randn(4_000, 2, 8))
    slots = write("reservoir", keys, 64)
    assert slots.counts.tolist() == [[1.0] * 64]
    kept = slots.numbers[0]
    assert torch.equal(kept, kept.sort().values)  # in time order
    for number in kept.tolist():  # each slot is the frame it was
        assert torch.equal(slots.keys[0, :, kept.tolist().index(number)], keys[number])
    # uniform over the whole clip, not the latest frames: quarters hold about 16 each
    quarters = torch.bincount(kept // 1_000, minlength=4)
    assert quarters.min() >= 8, quarters


def test_merge_joins_the_most_similar_neighbours_count_weighted_and_keeps_time_order():
    a, b, c = unit(torch.randn(3, 2, 8))
    keys = torch.stack([a, a, a, b, c, c])  # runs of like frames
    slots = write("merge", keys, 3, chunk=2, events=torch.tensor([0, 0, 0, 1, 0, 2]))
    assert slots.counts.tolist() == [[3.0, 1.0, 2.0]]
    assert torch.allclose(slots.keys[0].transpose(0, 1), torch.stack([a, b, c]), atol=1e-6)
    assert slots.events.tolist() == [[0, 1, 2]] and slots.numbers.tolist() == [[2, 3, 5]]


def test_kmeans_consolidates_into_clusters_whose_counts_sum_to_the_frames_seen():
    centres = unit(torch.randn(3, 2, 8) * 4)
    labels = torch.arange(60) % 3
    keys = unit(centres[labels] + 0.01 * torch.randn(60, 2, 8))
    slots = write("kmeans", keys, 3)
    assert float(slots.counts.sum()) == 60 and sorted(slots.counts[0].tolist()) == [20.0, 20.0, 20.0]
    for slot in range(3):  # each slot is one cluster's centre
        similarity = (slots.keys[0, :, slot][None] * centres).sum(-1).mean(-1)
        assert similarity.max() > 0.99, similarity


@pytest.mark.parametrize("mechanism", ALL)
def test_the_read_diagnostics_and_the_oracle_read_work_on_slots(mechanism):
    mapper = slot_mapper(mechanism, retrieval="oracle", top_k=1)
    clips = [clip(23, 1), clip(30, 2), clip(3, 3)]
    frames, times, lengths = batch(clips)
    events = events_of(lengths.tolist(), [[2, 9], [5, 20], [0]])
    totals = ReadTotals()
    with torch.no_grad(), recording(mapper) as reads:
        mapper(frames, times, lengths, events)
    totals.add(reads)
    metrics = totals.metrics()
    assert metrics["retrieval_clips"] == 2  # the one-chunk clip holds no memory
    held_events = reads[0].events > 0
    assert (reads[0].selected | ~(held_events & reads[0].readable)[:, None, None, :]).all()  # every event slot read
    assert 0 < metrics["memory_weight"] < 1


def test_a_slot_memory_refuses_what_it_cannot_do_by_name():
    with pytest.raises(ValueError, match="merge memory keeps its slots in torch"):
        MapperConfig.load("video-memorizing", memory="merge", memory_backend="faiss-flat")
    with pytest.raises(ValueError, match="kmeans memory .* no Transformer-XL cache"):
        MapperConfig.load("video-memorizing", memory="kmeans", xl_cache=True)
    with pytest.raises(ValueError, match="recurrent memory tokens are trained through time"):
        MapperConfig.load("video-memorizing", memory="recurrent")
    with pytest.raises(ValueError, match="unknown memory 'lru'"):
        MapperConfig.load("video-memorizing", memory="lru")


@pytest.mark.parametrize("mechanism", ["knn", *ALL])
def test_step_by_step_gives_the_whole_clips_prefix(mechanism):
    """The evaluation of long test clips runs chunk after chunk (linear in length): the same prefix."""
    mapper = slot_mapper(mechanism, retrieval="dense", combine="joint")
    frames, times, lengths = batch([clip(n, seed) for seed, n in enumerate(CLIPS)])
    with torch.no_grad():
        whole = mapper(frames, times, lengths)
        with step_by_step(mapper):
            assert mapper.stepwise
            stepped = mapper(frames, times, lengths)
    assert not mapper.stepwise and (stepped - whole).abs().max() <= 1e-5
