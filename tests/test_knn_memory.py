"""kNN memory backends: exact ones agree, FIFO eviction, recall of the approximate one."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipmemcap.model.memory.store import KNNMemory


def clustered(n, dim=16, clusters=20, seed=0):
    """CLIP-like keys: unit vectors bunched around a few directions, not isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(clusters, dim, generator=g), dim=-1)
    points = centres[torch.randint(clusters, (n,), generator=g)] + 0.3 * torch.randn(n, dim, generator=g)
    return F.normalize(points, dim=-1)


def filled(backend, n=600, heads=2, dim=16, capacity=10_000, chunk=50):
    memory = KNNMemory(1, heads, dim, capacity, backend)
    keys = torch.stack([clustered(n, dim, seed=h) for h in range(heads)])  # [H, n, d]
    values = torch.arange(n).float()[None, :, None].expand(heads, n, dim)  # value = insertion order
    for i in range(0, n, chunk):
        memory.add(keys[None, :, i : i + chunk], values[None, :, i : i + chunk])
    return memory, keys


def chosen(memory, queries, k):
    """Row 0's selected entries, by value (= insertion number): a set per head and query."""
    _, values, selected = memory.retrieve(queries[None], k)
    return [[set(values[0, h, selected[0, h, q], 0].long().tolist()) for q in range(queries.shape[1])]
            for h in range(queries.shape[0])]


def exact_top(keys, queries, k):
    return (queries @ keys.transpose(1, 2)).topk(k, -1)


def test_exact_backends_agree_with_an_exhaustive_search():
    queries = torch.stack([clustered(40, seed=10 + h) for h in range(2)])
    expected = exact_top(filled("torch")[1], queries, 8).indices
    for backend in ("torch", "faiss-flat"):
        memory, keys = filled(backend)
        found = chosen(memory, queries, 8)
        assert found == [[set(ids.tolist()) for ids in head] for head in expected], backend


@pytest.mark.parametrize("backend", ["torch", "faiss-flat", "faiss-hnsw"])
def test_fifo_eviction_keeps_the_newest_entries(backend):
    memory, keys = filled(backend, n=100, capacity=64, chunk=8)
    assert memory.sizes.tolist() == [64]
    kept = set().union(*(ids for head in chosen(memory, keys[:, :100], 64) for ids in head))  # ask for everything
    assert kept <= set(range(36, 100)) and len(kept) > 50  # only the newest 64 can come back
    memory.clear()
    assert memory.empty and memory.sizes.tolist() == [0]


@pytest.mark.parametrize("backend", ["torch", "faiss-flat"])
def test_rows_fill_and_evict_independently_like_separate_ring_buffers(backend):
    """One batched write per chunk, each row keeping its own subset of the chunk's entries (padding
    and clips not yet started keep nothing): each row must hold exactly what a ring buffer of its
    own kept entries holds, in its slots, and a read of everything must return exactly that."""
    B, heads, dim, capacity, n = 4, 2, 8, 10, 6
    memory = KNNMemory(B, heads, dim, capacity, backend)
    g = torch.Generator().manual_seed(1)
    reference = [[] for _ in range(B)]
    counter = 0
    for step in range(7):
        keep = torch.rand(B, n, generator=g) < 0.6
        keep[3] = step >= 4  # the last row starts late
        values = torch.arange(counter, counter + B * n).float().view(B, 1, n, 1).expand(B, heads, n, dim)
        counter += B * n
        keys = F.normalize(torch.randn(B, heads, n, dim, generator=g), dim=-1)
        memory.add(keys, values, keep)
        for row in range(B):
            reference[row] += values[row, 0, keep[row], 0].long().tolist()
    for row in range(B):
        held = reference[row][-capacity:]
        assert memory.sizes[row] == len(held)
        slots = [i % capacity for i in range(len(reference[row]) - len(held), len(reference[row]))]
        assert memory.values[row, 0, slots, 0].long().tolist() == held, row
    _, values, selected = memory.retrieve(F.normalize(torch.randn(B, heads, 3, dim, generator=g), dim=-1), capacity)
    for row in range(B):
        for head in range(heads):
            for q in range(3):
                assert sorted(values[row, head, selected[row, head, q], 0].long().tolist()) == sorted(reference[row][-capacity:])


def test_approximate_backend_recall_is_measured():
    n, k = 5000, 32
    queries = torch.stack([clustered(200, seed=50 + h) for h in range(2)])
    memory, keys = filled("faiss-hnsw", n=n, chunk=500)
    found = chosen(memory, queries, k)
    truth = exact_top(keys, queries, k).indices
    recall = np.mean([len(f & set(t.tolist())) / k for fh, th in zip(found, truth) for f, t in zip(fh, th)])
    print(f"faiss-hnsw recall@{k} on {n} clustered keys: {recall:.3f}")
    assert recall > 0.8


def test_unknown_backend_oversized_add_and_empty_read_fail_clearly():
    with pytest.raises(ValueError, match="unknown kNN memory backend 'annoy'"):
        KNNMemory(1, 1, 4, 8, "annoy")
    memory = KNNMemory(1, 1, 4, 8)
    with pytest.raises(ValueError, match="the memory is empty"):
        memory.retrieve(torch.zeros(1, 1, 2, 4), 4)
    with pytest.raises(ValueError, match="capacity 8"):
        memory.add(torch.zeros(1, 1, 9, 4), torch.zeros(1, 1, 9, 4))


@pytest.mark.parametrize("backend", ["torch", "faiss-flat"])
def test_batched_retrieval_attends_exactly_over_each_rows_top_k(backend):
    """A read marks each query's top-k among all of a row's entries instead of gathering them:
    attention with the rest masked out must equal attention over the k best entries found by an
    exhaustive search of that row alone, also for a row that holds fewer than k entries; an
    empty row selects nothing."""
    heads, dim, k, sizes = 2, 16, 8, [120, 5, 60, 0]
    memory = KNNMemory(4, heads, dim, 1000, backend)
    g = torch.Generator().manual_seed(4)
    keys = torch.stack([clustered(120, dim, seed=row)[None].expand(heads, 120, dim) for row in range(4)])  # [4, H, 120, d]
    values = torch.randn(4, heads, 120, dim, generator=g)
    memory.add(keys, values, torch.arange(120)[None, :] < torch.tensor(sizes)[:, None])
    queries = F.normalize(torch.randn(4, heads, 6, dim, generator=g), dim=-1)
    stored_keys, stored_values, selected = memory.retrieve(queries, k)
    assert selected.sum(-1).tolist() == [[[8] * 6] * 2, [[5] * 6] * 2, [[8] * 6] * 2, [[0] * 6] * 2]
    batched = (queries @ stored_keys.transpose(-1, -2)).masked_fill(~selected, float("-inf")).softmax(-1) @ stored_values
    for row, n in enumerate(sizes[:3]):
        top = exact_top(keys[row, :, :n], queries[row], min(k, n))  # [heads, q, k']
        top_values = values[row, :, :n][torch.arange(heads)[:, None, None], top.indices]  # [heads, q, k', dim]
        expected = torch.einsum("hqk,hqkd->hqd", top.values.softmax(-1), top_values)
        assert torch.allclose(batched[row], expected, atol=1e-6), row


def test_random_retrieval_reads_k_stored_entries_whatever_the_query():
    """The ablation of content-based retrieval: the same number of memories, chosen at random."""
    memory = KNNMemory(2, 1, 16, 1000, retrieval="random")
    keys = clustered(50, 16)[None, None].expand(2, -1, -1, -1)  # [2, 1, 50, 16]
    memory.add(keys, keys, torch.arange(50)[None, :] < torch.tensor([[50], [3]]))
    queries = keys[:, :, :10]  # each query is a stored key
    _, _, selected = memory.retrieve(queries, 8)
    assert selected[0].sum(-1).eq(8).all() and selected[1].sum(-1).eq(3).all()  # k, or all a row holds
    assert not selected[1, :, :, 3:].any()  # never an empty slot
    own = selected[0, 0, torch.arange(10), torch.arange(10)]  # did a query pick its own (best) key?
    assert own.float().mean() < 0.6  # top-k always would; random picks it 8 times in 50
    _, _, again = memory.retrieve(queries, 8)
    assert not torch.equal(again, selected)  # drawn afresh each time
