"""A small vision transformer for CPU work: ``vit_tiny_cifar`` (patch 4, 6 blocks, 4 heads, width 128).

The layout follows timm's (``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks.i.attn.qkv`` /
``attn.proj`` with ``num_heads``), so the same code reads its heads (the input of ``attn.proj``) and
removes them (shrinking ``qkv`` and ``proj``). Pre-norm blocks, GELU MLP of ratio 2, class token,
learned position embeddings, the class token's final state to the linear head.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

VIT_CONFIGS = {"vit_tiny_cifar": dict(patch=4, depth=6, heads=4, width=128, mlp_ratio=2)}


class Attention(nn.Module):
    """Multi-head self-attention; ``proj`` reads the heads concatenated, ``num_heads * head_dim`` wide."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} does not divide into {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        """Self-attention of tokens (N, T, width): the heads' outputs concatenated (N, T, heads x d_head),
        then ``proj``."""
        n, t, _ = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (N, heads, T, d)
        return self.proj(out.transpose(1, 2).reshape(n, t, self.num_heads * self.head_dim))


class Block(nn.Module):
    """One pre-norm encoder block (a layer; its units are its attention's heads): attention, then the MLP,
    each with its residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x):
        """The block's tokens (N, T, width): ``x`` plus attention, plus the MLP."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """``vit_tiny_cifar`` (see the module docstring): patch embedding, class token, ``blocks``, final norm,
    the linear head on the class token."""

    def __init__(self, image_size: int = 32, num_labels: int = 10, in_channels: int = 3, patch: int = 4,
                 depth: int = 6, heads: int = 4, width: int = 128, mlp_ratio: int = 2):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch}")
        tokens = (image_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, width, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, width) * 0.02)
        self.blocks = nn.Sequential(*[Block(width, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_labels)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x):
        """Logits (N, L) of images (N, C, H, W); the blocks see (N, 1 + patches, width) tokens."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, T, width)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])
