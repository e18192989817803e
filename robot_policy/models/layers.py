"""Transformer building blocks of the RDT-style denoiser (nanoGPT-sized modules, one job each).

Shape letters: B batch, T tokens in the denoised sequence (3 + Ta), N condition tokens, D width,
H heads, hs head size (D / H).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learnable gain (no bias, no mean subtraction), as RDT/timm's RmsNorm.

    Computed in float32 so half-precision activations do not underflow the mean of squares.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


class Mlp(nn.Module):
    """Linear -> GELU(tanh) -> Linear."""

    def __init__(self, dim_in: int, dim_hidden: int, dim_out: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim_in, dim_hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(dim_hidden, dim_out if dim_out is not None else dim_in)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def mlp_adaptor(dim_in: int, dim_out: int, depth: int) -> nn.Sequential:
    """RDT's ``mlp{depth}x_gelu`` condition adaptor: Linear(in, out) then (GELU, Linear(out, out)) x depth-1."""
    layers: list[nn.Module] = [nn.Linear(dim_in, dim_out)]
    for _ in range(depth - 1):
        layers += [nn.GELU(approximate="tanh"), nn.Linear(dim_out, dim_out)]
    return nn.Sequential(*layers)


class SelfAttention(nn.Module):
    """Multi-head self-attention with RMS-normalised queries and keys (QK-norm keeps logits bounded)."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_size = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = RMSNorm(self.head_size, eps)
        self.k_norm = RMSNorm(self.head_size, eps)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_size)  # (B, T, 3, H, hs)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, hs)
        y = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)  # (B, H, T, hs)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.proj(y)


class CrossAttention(nn.Module):
    """Queries from the denoised sequence, keys/values from condition tokens, with a key-padding mask.

    ``mask`` (B, N) bool is True for tokens to attend to. A sample whose tokens are all masked (no
    language, a dropped condition) gets exactly zero from this layer rather than the NaN a softmax over
    nothing would give; this is done with tensor ops, not Python branching, so it traces and exports.
    """

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_size = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.q_norm = RMSNorm(self.head_size, eps)
        self.k_norm = RMSNorm(self.head_size, eps)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, cond: Tensor, mask: Tensor) -> Tensor:
        B, T, D = x.shape
        N = cond.shape[1]
        q = self.q(x).reshape(B, T, self.num_heads, self.head_size).transpose(1, 2)  # (B, H, T, hs)
        kv = self.kv(cond).reshape(B, N, 2, self.num_heads, self.head_size)  # (B, N, 2, H, hs)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, H, N, hs)
        mask = mask.bool()  # a 0/1 float mask would otherwise be read as additive logits
        has_key = mask.any(dim=1)  # (B,)
        # Rows with no valid key attend to everything (finite result), then are zeroed below.
        attn_mask = (mask | ~has_key[:, None])[:, None, None, :]  # (B, 1, 1, N)
        y = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v, attn_mask=attn_mask)  # (B, H, T, hs)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.proj(y) * has_key[:, None, None].to(y.dtype)


class RDTBlock(nn.Module):
    """RMSNorm -> self-attention -> RMSNorm -> cross-attention to one condition set -> RMSNorm -> MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim, eps)
        self.attn = SelfAttention(dim, num_heads, eps)
        self.norm2 = RMSNorm(dim, eps)
        self.cross_attn = CrossAttention(dim, num_heads, eps)
        self.norm3 = RMSNorm(dim, eps)
        self.mlp = Mlp(dim, round(dim * mlp_ratio))

    def forward(self, x: Tensor, cond: Tensor, cond_mask: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), cond, cond_mask)
        x = x + self.mlp(self.norm3(x))
        return x


class FinalLayer(nn.Module):
    """RMSNorm -> MLP(D -> D -> out). The last linear starts at zero so the untrained model outputs 0."""

    def __init__(self, dim: int, dim_out: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, eps)
        self.mlp = Mlp(dim, dim, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(self.norm(x))


def sinusoidal_embedding(x: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """(B,) scalars (diffusion step, or Hz) -> (B, dim) [cos | sin] features over geometric frequencies.

    Fractional inputs are fine. Frequencies run from 1 down to 1/max_period, so integers up to
    ``max_period`` stay distinguishable.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=x.device) / half)
    args = x.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2 * half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ScalarEmbedder(nn.Module):
    """A scalar per sample (diffusion timestep, control frequency in Hz) -> (B, D): sinusoid then MLP."""

    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.fc1 = nn.Linear(freq_dim, dim)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        emb = sinusoidal_embedding(x, self.freq_dim).to(self.fc1.weight.dtype)  # (B, freq_dim)
        return self.fc2(self.act(self.fc1(emb)))


def sincos_table(num: int, dim: int) -> Tensor:
    """(num, dim) fixed 1-D sin-cos position table, the initial value of learnable position embeddings."""
    pos = torch.arange(num, dtype=torch.float64)
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos[:, None] * omega[None]  # (num, dim/2)
    table = torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # (num, 2 * (dim // 2))
    if dim % 2:
        table = F.pad(table, (0, 1))
    return table.float()


def init_position_embedding(param: nn.Parameter) -> None:
    """Fill a (num, dim) learnable position table with sin-cos values (a no-op on the meta device)."""
    if param.is_meta:
        return
    with torch.no_grad():
        param.copy_(sincos_table(param.shape[0], param.shape[1]).to(param.dtype))
