"""The kNN memory's store: (key, value) pairs, one independent memory per batch row (per clip).

All rows live in one tensor pair, ``keys, values [B, heads, capacity, dim]``, each row a ring
buffer with its own fill count, so a full row evicts its oldest entries first (FIFO) instead of
resetting. Reads and writes are a few batched tensor operations, with no loop over rows and no
host-device sync (the host tracks only an upper bound of the rows' fill, to size the reads).
A read returns every stored entry, padded, and ``selected``: each query's top-k entries by inner
product, per head. Attention over all entries with the unselected ones masked out equals
attention over the top-k, without gathering them; callers recompute the scores, so gradients
reach the queries and never the memory. Backends choose the top-k:

- ``torch``: exact, one matmul + top-k (the default: fastest exact search at 5 fps clip sizes);
- ``faiss-flat``: exact, faiss ``IndexFlatIP`` per row and head (ids mapped so evicted entries
  are removed);
- ``faiss-hnsw``: approximate, faiss HNSW; rebuilt when entries are evicted. Measure its recall
  (``benchmarks/memorizing_mapper.py``) before trusting it.

``retrieval="random"`` (the ablation of content-based retrieval) selects k stored entries at
random instead, whatever the query; ``"dense"`` selects every stored entry.
"""

from __future__ import annotations

import numpy as np
import torch

BACKENDS = ("torch", "faiss-flat", "faiss-hnsw")


class _FaissRow:
    """One row's per-head faiss indexes. Ids count insertions: entry ``i`` lives in slot
    ``i % capacity``."""

    def __init__(self, backend: str, heads: int, dim: int, capacity: int):
        self.backend, self.heads, self.dim, self.capacity = backend, heads, dim, capacity
        self.indexes, self.added = None, 0

    def add(self, stored: torch.Tensor, n: int) -> None:
        """``stored [heads, slots, dim]``: the row's buffer, its ``n`` new entries already written."""
        import faiss  # only these backends need faiss (a GPU machine may lack it)

        evicting = self.added + n > self.capacity
        if self.indexes is None or (evicting and self.backend == "faiss-hnsw"):
            self.indexes = [self._new_index() for _ in range(self.heads)]
            ids = np.arange(max(0, self.added + n - self.capacity), self.added + n)
        else:
            ids = np.arange(self.added, self.added + n)
            if evicting:
                old = faiss.IDSelectorRange(max(0, self.added - self.capacity), self.added + n - self.capacity)
                for index in self.indexes:
                    index.remove_ids(old)
        keys = stored[:, torch.as_tensor(ids % self.capacity)].float().cpu().numpy()
        for head, index in enumerate(self.indexes):
            index.add_with_ids(np.ascontiguousarray(keys[head]), ids.astype(np.int64))
        self.added += n

    def _new_index(self):
        import faiss

        if self.backend == "faiss-flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        hnsw = faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efSearch = 64
        return faiss.IndexIDMap2(hnsw)

    def search(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """queries [heads, q, dim] -> slots [heads, q, k] (k <= the row's size)."""
        found = np.stack([index.search(np.ascontiguousarray(q), k)[1]
                          for index, q in zip(self.indexes, queries.detach().float().cpu().numpy())])
        found = np.where(found < 0, found[..., :1], found)  # HNSW can come back short: repeat the best
        return torch.as_tensor(found % self.capacity, device=queries.device)


class KNNMemory:
    """See the module docstring. Buffers are allocated on the first write (device and dtype of
    the keys) and grow by doubling up to ``capacity`` (amortised O(1) per entry)."""

    def __init__(self, batch: int, heads: int, dim: int, capacity: int, backend: str = "torch",
                 retrieval: str = "top-k"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown kNN memory backend {backend!r}; choose one of {BACKENDS}")
        self.batch, self.heads, self.dim, self.capacity = batch, heads, dim, capacity
        self.backend, self.retrieval = backend, retrieval
        self.keys = self.values = None  # [B, heads, slots + 1, dim]; the last slot takes padding writes
        self.added = None  # [B]: entries ever written per row; entry i lives in slot i % capacity
        self.clear()

    def clear(self) -> None:
        """Empty every row (the allocation is kept for the next clips)."""
        self.bound = 0  # host-side upper bound of every row's size
        if self.added is not None:
            self.added = torch.zeros_like(self.added)
        self.faiss = [_FaissRow(self.backend, self.heads, self.dim, self.capacity)
                      for _ in range(self.batch)] if self.backend != "torch" else None

    @property
    def empty(self) -> bool:
        return self.bound == 0

    @property
    def sizes(self) -> torch.Tensor:
        """[B] entries held per row."""
        if self.added is None:
            return torch.zeros(self.batch, dtype=torch.long)
        return self.added.clamp(max=self.capacity)

    def add(self, keys: torch.Tensor, values: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """Append ``keys, values [B, heads, n <= capacity, dim]`` (stored detached), of each row
        only the entries where ``keep [B, n]`` is True (default: all), in order."""
        B, H, n, d = keys.shape
        if n > self.capacity:
            raise ValueError(f"adding {n} entries to a memory of capacity {self.capacity}")
        keep = torch.ones(B, n, dtype=torch.bool, device=keys.device) if keep is None else keep
        self.bound = min(self.capacity, self.bound + n)
        self._reserve(self.bound, keys)
        slots_held = self.keys.shape[2] - 1
        order = self.added[:, None] + keep.long().cumsum(1) - 1  # [B, n]: each kept entry's insertion number
        slot = torch.where(keep, order % self.capacity, slots_held)  # dropped entries go to the spare slot
        index = slot[:, None, :, None].expand(B, H, n, d)
        # Out of place: an earlier read's keys and values are saved for the backward pass.
        self.keys = self.keys.scatter(2, index, keys.detach().to(self.keys.dtype))
        self.values = self.values.scatter(2, index, values.detach().to(self.values.dtype))
        counts = keep.sum(1)
        if self.faiss is not None:
            for row, count in enumerate(counts.tolist()):
                if count:
                    self.faiss[row].add(self.keys[row], count)
        self.added = self.added + counts

    def _reserve(self, slots: int, like: torch.Tensor) -> None:
        held = -1 if self.keys is None else self.keys.shape[2] - 1
        if slots <= held:
            return
        size = min(self.capacity, max(slots, 2 * held))
        grown = [like.new_zeros(self.batch, self.heads, size + 1, self.dim) for _ in range(2)]
        if self.keys is not None:
            for new, old in zip(grown, (self.keys, self.values)):
                new[:, :, :held] = old[:, :, :held]
        else:
            self.added = torch.zeros(self.batch, dtype=torch.long, device=like.device)
        self.keys, self.values = grown

    def retrieve(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """queries [B, heads, q, dim] -> every stored key and value, padded to the fullest row,
        ``keys, values [B, heads, n, dim]`` (detached), and ``selected [B, heads, q, n]``: True at
        each query's top-k entries (all of a row's entries if it holds fewer; none if it is empty)."""
        if self.empty:
            raise ValueError("the memory is empty")
        n = self.bound
        keys, values = self.keys[:, :, :n], self.values[:, :, :n]
        stored = (torch.arange(n, device=queries.device)[None, :] < self.sizes[:, None])[:, None, None, :]  # [B, 1, 1, n]
        if self.faiss is None or self.retrieval in ("random", "dense"):
            return keys, values, select(queries, keys, stored, k, self.retrieval)
        best = torch.zeros(*queries.shape[:3], min(k, n), dtype=torch.long, device=queries.device)
        for row, size in enumerate(self.sizes.tolist()):
            if size:
                found = self.faiss[row].search(queries[row], min(k, size))  # [heads, q, k']
                best[row, ..., : found.shape[-1]] = found
                best[row, ..., found.shape[-1] :] = found[..., :1]  # a row short of k repeats its best
        selected = torch.zeros(*queries.shape[:3], n, dtype=torch.bool, device=queries.device).scatter_(-1, best, True)
        return keys, values, selected & stored


def select(queries: torch.Tensor, keys: torch.Tensor, allowed: torch.Tensor, k: int, retrieval: str = "top-k",
           forced: torch.Tensor | None = None) -> torch.Tensor:
    """Exact search: queries [B, heads, q, dim], keys [B, heads, n, dim], ``allowed`` (broadcast
    to [B, heads, q, n]) -> ``selected [B, heads, q, n]``: True at each query's k allowed keys of
    highest inner product (all if it has fewer; with ``retrieval="random"``, k allowed keys at
    random, torch's RNG; ``"dense"``: every allowed key). ``forced`` (broadcast like ``allowed``;
    the oracle read): entries selected besides, whatever their score."""
    n = keys.shape[2]
    if retrieval == "dense":
        return allowed.expand(*queries.shape[:3], n)
    if retrieval == "random":
        ranks = torch.rand(*queries.shape[:3], n, device=queries.device)
    else:
        ranks = queries.detach() @ keys.transpose(-1, -2).to(queries.dtype)  # [B, heads, q, n]
    best = ranks.masked_fill(~allowed, float("-inf")).topk(min(k, n), dim=-1, sorted=False).indices
    selected = torch.zeros(*ranks.shape, dtype=torch.bool, device=queries.device).scatter_(-1, best, True)
    if forced is not None:
        selected = selected | forced
    return selected & allowed
