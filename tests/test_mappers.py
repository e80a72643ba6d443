"""Mappers: isolation, equivalence, memory reads and eviction, gradients, save/load, ClipCap sizes."""

import numpy as np
import pytest
import torch

from clipmemcap.model.transformer import MemoryBlock
from clipmemcap.model.mappers import (MapperConfig, build_mapper, load_mapper, load_shared, memory_shut,
                                     save_mapper, select_frames)

TINY = dict(clip_dim=16, embed_dim=32, heads=4, layers=3, prefix_length=3, clip_length=2, window=4, top_k=4)


def tiny(name, **overrides):
    torch.manual_seed(0)
    return build_mapper(MapperConfig.load(name, **{**TINY, **overrides})).eval()


def clip(n, seed, T=None):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(T or n, 16, generator=g)
    return frames, torch.arange(T or n).float() / 5


def batch(clips, pad_seed=99):
    """Clips of different lengths in one batch; padding filled with noise, which must not matter."""
    T = max(len(f) for f, _ in clips)
    g = torch.Generator().manual_seed(pad_seed)
    frames, times = torch.randn(len(clips), T, 16, generator=g), torch.rand(len(clips), T, generator=g) * 100
    for i, (f, t) in enumerate(clips):
        frames[i, : len(f)], times[i, : len(t)] = f, t
    return frames, times, torch.tensor([len(f) for f, _ in clips])


@pytest.mark.parametrize("name,options", [("video-memorizing", {}), ("video-memorizing", {"xl_cache": True}),
                                          ("video-memorizing", {"retrieval": "dense", "combine": "joint"}),
                                          ("video-temporal", {}), ("video-temporal", {"frame_policy": "mean"}),
                                          ("clipcap-transformer", {}), ("clipcap-mlp", {})])
def test_prefix_is_the_same_alone_and_in_a_batch(name, options):
    mapper = tiny(name, **options)
    clips = [clip(n, seed) for seed, n in enumerate([13, 5, 1, 9, 16])]
    with torch.no_grad():
        together = mapper(*batch(clips))
        for i, c in enumerate(clips):
            alone = mapper(*batch([c]))
            assert (together[i] - alone[0]).abs().max() <= 1e-5


def test_the_mean_policy_sees_one_frame_the_mean_of_the_clip_at_its_mean_time():
    mapper = tiny("video-temporal", frame_policy="mean")
    frames, times = clip(9, 4)
    with torch.no_grad():
        pooled = mapper(*batch([(frames, times)]))
        single = mapper(*batch([(frames.mean(0, keepdim=True), times.mean(0, keepdim=True))]))
        other = mapper(*batch([(frames[:1], times[:1])]))
    assert (pooled - single).abs().max() <= 1e-5 and (pooled - other).abs().max() > 1e-3


def test_frame_statistics_whiten_the_input_and_travel_with_the_weights(tmp_path):
    mapper = tiny("video-temporal")
    frames, times = clip(6, 1)
    mean = np.full(16, 0.5, np.float32)
    whitening = np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)
    mapper.set_frame_statistics(mean, whitening)
    reference = tiny("video-temporal")  # identity statistics, same weights
    with torch.no_grad():
        whitened = (frames - 0.5) @ torch.from_numpy(whitening)
        assert torch.allclose(mapper(*batch([(frames, times)])), reference(*batch([(whitened, times)])), atol=1e-5)
    save_mapper(mapper, tmp_path / "m")
    assert torch.equal(load_mapper(tmp_path / "m").frame_whitening, mapper.frame_whitening)
    memorizing = tiny("video-memorizing")
    assert {"frame_mean", "frame_whitening"} <= set(load_shared(memorizing, mapper.state_dict()))
    assert torch.equal(memorizing.frame_whitening, mapper.frame_whitening)


def test_an_unknown_frame_policy_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown frame policy 'median'"):
        MapperConfig.load("video-temporal", frame_policy="median")


@pytest.mark.parametrize("options", [{}, {"xl_cache": True}, {"memory_capacity": 8}, {"knn_layers": (0, 1)},
                                     {"knn_layers": (0,)}, {"top_k": 1}, {"retrieval": "dense"}, {"combine": "joint"},
                                     {"combine": "joint", "xl_cache": True},
                                     {"retrieval": "dense", "combine": "joint", "memory_capacity": 8}])
def test_all_chunks_at_once_equal_chunk_after_chunk(options):
    """The exact parallel path (torch backend) against the sequential one (a faiss-flat memory,
    chunk by chunk), on a batch of clips of different lengths."""
    parallel = tiny("video-memorizing", **options)
    sequential = tiny("video-memorizing", memory_backend="faiss-flat", **options)
    sequential.load_state_dict(parallel.state_dict())
    inputs = batch([clip(n, seed) for seed, n in enumerate([23, 5, 1, 9, 16, 30])])
    with torch.no_grad():
        assert (parallel(*inputs) - sequential(*inputs)).abs().max() <= 1e-5


def test_local_only_gate_or_one_chunk_equals_the_temporal_baseline():
    memorizing = tiny("video-memorizing")
    temporal = tiny("video-temporal", frame_policy="last")
    temporal.load_state_dict(memorizing.state_dict())  # the same weights, by name
    long, short = batch([clip(18, 5)]), batch([clip(3, 6)])
    with torch.no_grad():
        assert (memorizing(*short) - temporal(*short)).abs().max() <= 1e-5  # one chunk: no memory
        assert (memorizing(*long) - temporal(*long)).abs().max() > 1e-4  # memory matters...
        with memory_shut(memorizing):  # ...unless the gate shuts it out
            assert (memorizing(*long) - temporal(*long)).abs().max() <= 1e-5
        assert (memorizing(*long) - temporal(*long)).abs().max() > 1e-4  # and opens again after
    with pytest.raises(ValueError, match="no memory to shut"), memory_shut(temporal):
        pass


@pytest.mark.parametrize("xl_cache", [False, True])
def test_memory_is_read_and_evicted_frames_are_forgotten(xl_cache):
    frames, times = clip(24, 7)  # 6 chunks of 4
    changed = frames.clone()
    changed[:4] += 3.0  # only the first chunk differs
    for capacity, should_differ in ((1000, True), (8, False)):  # 8 entries = the last two chunks
        mapper = tiny("video-memorizing", memory_capacity=capacity, xl_cache=xl_cache)
        with torch.no_grad():
            a, b = mapper(*batch([(frames, times)])), mapper(*batch([(changed, times)]))
        assert ((a - b).abs().max() > 1e-4) == should_differ, capacity


@pytest.mark.parametrize("backend", ["torch", "faiss-flat"])
@pytest.mark.parametrize("xl_cache", [False, True])
def test_gradients_reach_every_weight_and_the_gate_but_not_the_memory(xl_cache, backend):
    mapper = tiny("video-memorizing", xl_cache=xl_cache, memory_backend=backend).train()
    frames, times, lengths = batch([clip(15, 8), clip(7, 9)])
    frames.requires_grad_(True)
    mapper(frames, times, lengths).pow(2).sum().backward()
    for name, parameter in mapper.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    # Earlier chunks reach the prefix only through the memory (and the XL cache), both detached.
    assert frames.grad[0, :11].abs().max() == 0 and frames.grad[0, 11:15].abs().min() > 0


def test_save_load_round_trip_and_pretrained_image_mapper_initialises_video_mappers(tmp_path):
    mapper = tiny("video-memorizing")
    save_mapper(mapper, tmp_path / "m")
    loaded = load_mapper(tmp_path / "m")
    inputs = batch([clip(10, 1), clip(3, 2)])
    with torch.no_grad():
        assert torch.equal(mapper(*inputs), loaded(*inputs))
    image = tiny("clipcap-transformer")
    for name in ("video-temporal", "video-memorizing"):
        video = tiny(name)
        untouched = video.frame_proj.weight.clone()
        copied = load_shared(video, image.state_dict())
        assert "prefix_const" in copied and "transformer.layers.0.attn.to_queries.weight" in copied
        assert len(copied) == len(image.state_dict()) - 2  # all but ClipCap's linear (weight, bias)
        own = video.state_dict()
        for key in copied:
            assert torch.equal(own[key], image.state_dict()[key]), key
        assert torch.equal(video.frame_proj.weight, untouched)


def test_default_clipcap_mappers_have_clipcaps_parameter_counts():
    D, E, L, C, layers, hidden = 512, 768, 10, 10, 8, int(768 * 2.0)
    mlp = D * (E * L // 2) + E * L // 2 + (E * L // 2) * (E * L) + E * L
    layer = 2 * E + E * E + 2 * E * E + (E * E + E) + 2 * E + (E * hidden + hidden) + (hidden * E + E)
    transformer = (D * C * E + C * E) + L * E + layers * layer
    count = lambda name: sum(p.numel() for p in build_mapper(MapperConfig.load(name)).parameters())  # noqa: E731
    assert count("clipcap-mlp") == mlp == 31_468_800
    assert count("clipcap-transformer") == transformer


def test_frame_policies_pick_the_documented_frames():
    index, mask = select_frames(torch.tensor([20, 3]), 5, "uniform")
    assert index[0].tolist() == [0, 5, 10, 14, 19] and mask[0].all()
    assert index[1, :3].tolist() == [0, 1, 2] and mask[1].tolist() == [True, True, True, False, False]
    index, mask = select_frames(torch.tensor([20, 3]), 5, "last")
    assert index[0].tolist() == [15, 16, 17, 18, 19] and index[1, :3].tolist() == [0, 1, 2]


def test_bad_configs_name_the_problem():
    with pytest.raises(ValueError, match="unknown mapper kind 'lstm'"):
        MapperConfig(kind="lstm")
    with pytest.raises(FileNotFoundError, match="no mapper config 'nope'"):
        MapperConfig.load("nope")
    with pytest.raises(ValueError, match="smaller than one window"):
        MapperConfig.load("video-memorizing", memory_capacity=4, window=10)


def test_xl_cache_lets_the_local_attention_see_the_previous_chunk():
    frames, times = clip(12, 3)  # 3 chunks of 4
    changed = frames.clone()
    changed[4:8] += 3.0  # the chunk before the last
    plain, xl = tiny("video-memorizing", top_k=1), tiny("video-memorizing", top_k=1, xl_cache=True)
    xl.load_state_dict(plain.state_dict())
    with torch.no_grad(), memory_shut(plain), memory_shut(xl):  # only the XL cache can carry the middle chunk
        assert torch.equal(plain(*batch([(frames, times)])), plain(*batch([(changed, times)])))
        assert (xl(*batch([(frames, times)])) - xl(*batch([(changed, times)]))).abs().max() > 1e-4


@pytest.mark.parametrize("name,options", [("video-memorizing", {}), ("video-memorizing", {"xl_cache": True}),
                                          ("video-memorizing", {"retrieval": "dense", "combine": "joint"}),
                                          ("video-temporal", {}), ("video-temporal", {"frame_policy": "last"}),
                                          ("video-temporal", {"frame_policy": "mean"}),
                                          ("clipcap-transformer", {}), ("clipcap-mlp", {})])
def test_streaming_a_clip_in_blocks_gives_the_prefix_of_the_whole_clip(name, options):
    mapper = tiny(name, **options)
    rng = np.random.default_rng(0)
    for n in (1, 3, 4, 5, 13, 16, 37):
        frames, times = clip(n, n)
        with torch.no_grad():
            whole = mapper(*batch([(frames, times)]))
            stream, fed = mapper.stream(n), 0
            while fed < n:  # blocks of random sizes, as decoding hands them over
                size = int(rng.integers(1, 7))
                stream.feed(frames[fed : fed + size], times[fed : fed + size])
                fed += size
            assert (stream.prefix() - whole).abs().max() <= 1e-5, (name, options, n)


def test_a_stream_refuses_too_many_or_too_few_frames():
    stream = tiny("video-memorizing").stream(5)
    frames, times = clip(6, 0)
    with pytest.raises(ValueError, match="5 frames; 6 were fed"):
        stream.feed(frames, times)
    stream.feed(frames[:4], times[:4])
    with pytest.raises(ValueError, match="only 4 were fed"):
        stream.prefix()
    with pytest.raises(ValueError, match="at least one frame"):
        tiny("video-temporal").stream(0)


def test_the_knn_layer_owns_its_gate_and_sits_where_knn_layers_says():
    mapper = tiny("video-memorizing", layers=4, knn_layers=(-2,))
    kinds = [isinstance(layer, MemoryBlock) for layer in mapper.transformer.layers]
    assert kinds == [False, False, True, False]  # second from the top
    knn = mapper.transformer.layers[2]
    assert knn.gate.shape == (4,) and knn.attn.normalised
    assert {n for n, _ in knn.named_parameters()} >= {"gate", "attn.log_scale"}


def test_random_retrieval_reads_k_earlier_frames_whatever_the_query():
    """With k at least the memory's size both retrievals read everything; with k = 1 they differ."""
    inputs = batch([clip(20, 1), clip(13, 2)])
    with torch.no_grad():
        for k, same in ((1000, True), (1, False)):
            top, random = tiny("video-memorizing", top_k=k), tiny("video-memorizing", top_k=k, retrieval="random")
            assert ((top(*inputs) - random(*inputs)).abs().max() <= 1e-5) == same, k
