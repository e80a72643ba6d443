"""The mappers' Transformer: ClipCap's (pre-norm, bias-free query/key/value, ReLU MLP), with
memory layers where a memorizing mapper's ``knn_layers`` say, and the time encoding of frames."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from clipmemcap.model.mapper_config import MapperConfig
from clipmemcap.model.memory import learned_write



class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention. ``normalised`` (the kNN layers): queries and keys are
    L2-normalised and scaled by a learned temperature, so keys stored in memory stay comparable
    with later queries."""

    def __init__(self, dim: int, heads: int, normalised: bool = False):
        super().__init__()
        self.heads, self.head_dim, self.normalised = heads, dim // heads, normalised
        self.to_queries = nn.Linear(dim, dim, bias=False)
        self.to_keys_values = nn.Linear(dim, 2 * dim, bias=False)
        self.project = nn.Linear(dim, dim)
        if normalised:
            self.log_scale = nn.Parameter(torch.tensor(math.log(math.sqrt(self.head_dim) * 2)))

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, E] -> q, k, v [B, H, T, d]."""
        B, T, _ = x.shape
        q = self.to_queries(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.to_keys_values(x).view(B, T, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.normalised:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        return q, k, v

    def scale(self) -> torch.Tensor | float:
        return self.log_scale.exp() if self.normalised else self.head_dim**-0.5

    def attend(self, q, k, v, key_mask: torch.Tensor) -> torch.Tensor:
        """key_mask [B, T] (True = may be attended to) -> [B, H, T, d]."""
        scores = (q @ k.transpose(-1, -2)) * self.scale()  # [B, H, T, T]
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        return scores.softmax(-1) @ v

    def merge(self, out: torch.Tensor) -> torch.Tensor:
        B, H, T, d = out.shape
        return self.project(out.transpose(1, 2).reshape(B, T, H * d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, normalised: bool = False):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, normalised)
        self.norm2, self.mlp = nn.LayerNorm(dim), MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, memory: object | None = None) -> torch.Tensor:
        q, k, v = self.attn.split(self.norm1(x))
        x = x + self.attn.merge(self.attend(q, k, v, key_mask, memory))
        return x + self.mlp(self.norm2(x))

    def attend(self, q, k, v, key_mask, memory: object | None) -> torch.Tensor:
        return self.attn.attend(q, k, v, key_mask)  # [B, H, T, d]


class MemoryBlock(Block):
    """A block with normalised attention whose attention, given a memory (the memorizing mapper's
    memory layers, ``knn_layers``), is the memory's: local attention combined with what it reads
    of the clip's earlier chunks (:mod:`clipmemcap.model.memory`). Without one (the temporal
    mappers, a clip's first chunk) it is a plain block with normalised attention. The per-head
    ``gate`` is the layer's, for memories that mix by a gate; ``memory_write`` too, for a memory
    with a learned write (recurrent memory tokens), else None."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, memory_write: nn.Module | None = None):
        super().__init__(dim, heads, mlp_ratio, normalised=True)
        self.gate = nn.Parameter(torch.zeros(heads))  # sigmoid -> 1: memory, -> 0: local attention
        self.memory_write = memory_write

    def attend(self, q, k, v, key_mask, memory) -> torch.Tensor:
        if memory is None:
            return self.attn.attend(q, k, v, key_mask)
        return memory.attend(q, k, v, key_mask, self.attn.scale, self.gate, self.memory_write)


class Transformer(nn.Module):
    def __init__(self, cfg: MapperConfig, knn_layers: tuple[int, ...] = ()):
        super().__init__()
        self.layers = nn.ModuleList(
            MemoryBlock(cfg.embed_dim, cfg.heads, cfg.mlp_ratio, learned_write(cfg)) if i in knn_layers else Block(cfg.embed_dim, cfg.heads, cfg.mlp_ratio)
            for i in range(cfg.layers))

    def forward(self, x, key_mask, memories: dict[int, object] | None = None):
        """``memories``: each memory layer's memory, by layer index."""
        for i, layer in enumerate(self.layers):
            x = layer(x, key_mask, memories[i] if memories and isinstance(layer, MemoryBlock) else None)
        return x


def valid_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]  # [B, T]


def time_encoding(times: torch.Tensor, dim: int, scale: float) -> torch.Tensor:
    """Sinusoidal encoding of absolute time [B, T] (seconds) -> [B, T, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=times.device) / half)
    angles = times[..., None].float() * scale * freqs  # [B, T, half]
    return torch.cat([angles.sin(), angles.cos()], -1)
