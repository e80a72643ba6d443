"""External kNN memory of (key, value) pairs, one independent memory per batch row (per clip).

Keys and values live in a ring buffer per row ([heads, capacity, dim]), so a full memory evicts
its oldest entries first (FIFO) instead of resetting. Search returns ring slots of the top-k
keys by inner product, per head; callers gather keys and values and recompute the scores, so
gradients reach the queries and never the memory. Backends:

- ``torch``: exact, one matmul + top-k (the default: fastest exact search at 5 fps clip sizes);
- ``faiss-flat``: exact, faiss ``IndexFlatIP`` (ids mapped so evicted entries are removed);
- ``faiss-hnsw``: approximate, faiss HNSW; rebuilt when entries are evicted. Measure its recall
  (``benchmarks/memorizing_mapper.py``) before trusting it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

BACKENDS = ("torch", "faiss-flat", "faiss-hnsw")


def _grown(buffer: torch.Tensor, size: int) -> torch.Tensor:
    """[heads, n, dim] -> [heads, size, dim]; the new entries are not initialised."""
    return torch.cat([buffer, buffer.new_empty(buffer.shape[0], size - buffer.shape[1], buffer.shape[2])], 1)


class _RowMemory:
    def __init__(self, heads: int, dim: int, capacity: int, backend: str, device: torch.device):
        self.heads, self.dim, self.capacity, self.backend = heads, dim, capacity, backend
        # Buffers grow by doubling up to the capacity (amortised O(1) per entry), then wrap.
        self._keys = torch.empty(heads, 0, dim, device=device)
        self._values = torch.empty(heads, 0, dim, device=device)
        self.added = 0  # entries ever added; entry n lives in slot n % capacity
        self.indexes = None

    def __len__(self) -> int:
        return min(self.added, self.capacity)

    @property
    def keys(self) -> torch.Tensor:
        return self._keys[:, : len(self)]

    @property
    def values(self) -> torch.Tensor:
        return self._values[:, : len(self)]

    def add(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """keys, values [heads, n <= capacity, dim], detached."""
        n = keys.shape[1]
        if n > self.capacity:
            raise ValueError(f"adding {n} entries to a memory of capacity {self.capacity}")
        needed = min(self.added + n, self.capacity)
        if needed > self._keys.shape[1]:
            size = min(self.capacity, max(needed, 2 * self._keys.shape[1]))
            self._keys, self._values = _grown(self._keys, size), _grown(self._values, size)
        slots = (torch.arange(n, device=self._keys.device) + self.added) % self.capacity
        self._keys[:, slots], self._values[:, slots] = keys, values
        self._index_add(n)
        self.added += n

    def _index_add(self, n: int) -> None:
        if self.backend == "torch":
            return
        import faiss  # only its own backends need faiss (a GPU machine may lack it)

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
        keys = self._keys[:, torch.as_tensor(ids % self.capacity)].float().cpu().numpy()
        for head, index in enumerate(self.indexes):
            index.add_with_ids(np.ascontiguousarray(keys[head]), ids.astype(np.int64))

    def _new_index(self):
        import faiss

        if self.backend == "faiss-flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        hnsw = faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efSearch = 64
        return faiss.IndexIDMap2(hnsw)

    def search(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """queries [heads, q, dim] -> slots [heads, q, min(k, len)] of the best keys."""
        k = min(k, len(self))
        if self.backend == "torch":
            scores = queries.detach() @ self.keys.transpose(1, 2)  # [heads, q, len]
            return scores.topk(k, dim=-1).indices
        found = np.stack([index.search(np.ascontiguousarray(q), k)[1]
                          for index, q in zip(self.indexes, queries.detach().float().cpu().numpy())])
        found = np.where(found < 0, found[..., :1], found)  # HNSW can come back short: repeat the best
        return torch.as_tensor(found % self.capacity, device=queries.device)


class KNNMemory:
    """One memory per batch row; see the module docstring."""

    def __init__(self, batch: int, heads: int, dim: int, capacity: int, backend: str = "torch",
                 device: torch.device | str = "cpu", retrieval: str = "top-k"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown kNN memory backend {backend!r}; choose one of {BACKENDS}")
        self.rows = [_RowMemory(heads, dim, capacity, backend, torch.device(device)) for _ in range(batch)]
        self.settings = (heads, dim, capacity, backend, torch.device(device))
        self.retrieval = retrieval  # "random": k stored entries drawn at random, whatever the query

    def reset(self, row: int) -> None:
        self.rows[row] = _RowMemory(*self.settings)

    def size(self, row: int) -> int:
        return len(self.rows[row])

    def add(self, row: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.rows[row].add(keys.detach(), values.detach())

    def retrieve(self, row: int, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """queries [heads, q, dim] -> the top-k keys and values [heads, q, k', dim], detached."""
        memory = self.rows[row]
        slots = memory.search(queries, k)  # [heads, q, k']
        heads = torch.arange(memory.heads, device=slots.device)[:, None, None]
        return memory.keys[heads, slots], memory.values[heads, slots]  # slots < len(memory)

    def retrieve_rows(self, rows: list[int], queries: torch.Tensor, k: int):
        """queries [R, heads, q, dim] of non-empty ``rows`` -> every stored key and value of those
        rows, padded, ``keys, values [R, heads, n, dim]`` (detached), and ``selected [R, heads, q,
        n]``: True at each query's top-k entries. Attention over the n entries with the others
        masked out is attention over the k best, without gathering them (a gather of k keys per
        query cost more than the whole search)."""
        sizes = torch.tensor([len(self.rows[r]) for r in rows], device=queries.device)
        n = int(sizes.max())
        k = min(k, n)
        pad = lambda x: F.pad(x, (0, 0, 0, n - x.shape[1]))  # noqa: E731  [heads, len, dim] -> n
        keys = torch.stack([pad(self.rows[r].keys) for r in rows])  # [R, heads, n, dim]
        values = torch.stack([pad(self.rows[r].values) for r in rows])
        stored = (torch.arange(n, device=queries.device)[None, :] < sizes[:, None])[:, None, None, :]  # [R, 1, 1, n]
        if self.retrieval == "random":  # the ablation: stored entries ranked at random (torch's RNG)
            ranks = torch.rand(*queries.shape[:3], n, device=queries.device)
            best = ranks.masked_fill(~stored, -1.0).topk(k, dim=-1, sorted=False).indices
        elif self.rows[rows[0]].backend == "torch":  # all rows in one padded matmul
            scores = queries.detach() @ keys.transpose(-1, -2)  # [R, heads, q, n]
            best = scores.masked_fill(~stored, float("-inf")).topk(k, dim=-1, sorted=False).indices
        else:  # each row's index; a row holding fewer than k entries repeats its best one
            best = torch.stack([F.pad(self.rows[r].search(q, k), (0, k - min(k, len(self.rows[r]))), mode="replicate")
                                if len(self.rows[r]) < k else self.rows[r].search(q, k) for r, q in zip(rows, queries)])
        selected = torch.zeros(*queries.shape[:3], n, dtype=torch.bool, device=queries.device).scatter_(-1, best, True)
        return keys, values, selected & stored
