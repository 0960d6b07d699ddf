"""A tiny LLaMA-style language model cut into pipeline stages, plus its data.

Why this exists: the pipeline example and the CheckFree convergence benchmark need a
model whose stages are structurally alike (the CheckFree merge averages a stage's
neighbours entry by entry) and small enough to train on a CPU in seconds. Each stage
is ``layers_per_stage`` transformer blocks (RMSNorm, rotary attention, SwiGLU). The
embedding belongs to stage 0 and the output head (final RMSNorm + projection) to the
last stage; with CheckFree+ each is also replicated on the neighbouring stage.

Names inside a stage are stage-local (``layers.0.attn.wq.weight`` in every stage), so
alike stages share names. Initialisation is a pure function of (seed, stage), so data-
parallel replicas of a stage, and the two copies of an edge layer, start identical.

Data: byte-level text of a few standard-library source files, which ship with every
Python, so nothing is downloaded. The text differs between Python versions, so results
are reproducible for a given interpreter, not across them.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 256  # bytes


@dataclass(frozen=True)
class Config:
    dim: int = 64
    heads: int = 4
    layers_per_stage: int = 1
    hidden: int = 128      # SwiGLU inner width
    seq: int = 64
    rope_base: float = 10000.0


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    half = cfg.dim // cfg.heads // 2
    inv = 1.0 / (cfg.rope_base ** (torch.arange(half, dtype=torch.float32) / half))
    angles = torch.outer(torch.arange(cfg.seq, dtype=torch.float32), inv)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (batch, heads, seq, head_dim); rotate the two halves of each head.
    t = x.shape[-2]
    x1, x2 = x.chunk(2, dim=-1)
    c, s = cos[:t], sin[:t]
    return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.heads = cfg.heads
        self.wq = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        cos, sin = rope_tables(cfg)
        # Not persistent: derived from the config, so not part of the stage's state.
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (w(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for w in (self.wq, self.wk, self.wv))
        q, k = apply_rope(q, self.cos, self.sin), apply_rope(k, self.cos, self.sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(b, t, d))


class SwiGLU(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.hidden, bias=False)
        self.w2 = nn.Linear(cfg.hidden, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class Head(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.norm = RMSNorm(cfg.dim)
        self.out = nn.Linear(cfg.dim, VOCAB, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(x))


def _init_(module: nn.Module, seed: int) -> None:
    """Deterministic init of every Linear/Embedding in ``module`` from ``seed`` alone."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 1.0 / math.sqrt(m.in_features), generator=gen)
            elif isinstance(m, nn.Embedding):
                m.weight.normal_(0.0, 1.0, generator=gen)


class Stage(nn.Module):
    """One pipeline stage: blocks, plus the embedding and/or head where it holds them.

    ``forward(x, first, last)``: ``first`` means x is token ids to embed, ``last`` that
    the output is logits. A stage may be asked to be first or last only if it holds the
    layer for it (CheckFree+ swaps edge stages with their neighbours).
    """

    EDGE_PREFIXES = ("embed.", "head.")

    def __init__(self, cfg: Config, embed: bool = False, head: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.layers_per_stage))
        self.embed = nn.Embedding(VOCAB, cfg.dim) if embed else None
        self.head = Head(cfg) if head else None

    def init_weights(self, seed: int, stage: int) -> "Stage":
        _init_(self.layers, seed * 1009 + stage)
        if self.embed is not None:
            _init_(self.embed, seed * 1009 + 10_000)   # identical on every holder
        if self.head is not None:
            _init_(self.head, seed * 1009 + 20_000)
        return self

    def body_parameters(self):
        return self.layers.parameters()

    def edge_parameters(self):
        for m in (self.embed, self.head):
            if m is not None:
                yield from m.parameters()

    def forward(self, x: torch.Tensor, first: bool = False, last: bool = False) -> torch.Tensor:
        if first:
            if self.embed is None:
                raise RuntimeError("stage asked to run first but holds no embedding")
            x = self.embed(x)
        for layer in self.layers:
            x = layer(x)
        if last:
            if self.head is None:
                raise RuntimeError("stage asked to run last but holds no output head")
            x = self.head(x)
        return x


def corpus() -> torch.Tensor:
    """Byte tensor of a few standard-library modules' source (ships with Python)."""
    import argparse
    import bisect
    import calendar
    import heapq
    import textwrap
    parts = [inspect.getsource(m) for m in (argparse, textwrap, calendar, heapq, bisect)]
    text = "\n".join(parts).encode("utf-8")
    return torch.frombuffer(bytearray(text), dtype=torch.uint8).long()


def batch(data: torch.Tensor, batch_size: int, seq: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of ``seq+1`` bytes: (inputs, next-byte targets)."""
    starts = torch.randint(0, len(data) - seq - 1, (batch_size,), generator=gen)
    windows = torch.stack([data[s:s + seq + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]
