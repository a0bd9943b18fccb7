"""Linear attention over the cells of a slice, with an E(n)-equivariant position update.

Attention weights a_ij = phi(q_i) . phi(k_j) / sum_l phi(q_i) . phi(k_l), phi(x) = elu(x) + 1
(Katharopoulos et al. 2020), are never materialised: with S = sum_j phi(k_j) v_j^T and
z = sum_j phi(k_j), cell i reads phi(q_i)^T S / phi(q_i)^T z, which costs O(N) time and memory.

Queries and keys come from invariant cell features only, so the weights are invariant. The
EGNN-style update x_i + w_i * sum_j a_ij (x_i - x_j) = x_i + w_i (x_i - m_i), with the attention-
weighted centroid m_i = sum_j a_ij x_j computed in O(N) the same way as values, commutes with any
rotation *and reflection* and with translations (the a_ij of a row sum to 1). So the network is
O(n)-equivariant (E(n) including reflections): mirror-image tissues are not told apart, which the
pairwise-distance loss cannot do either. The invariant |x_i - m_i|^2 per head feeds geometry back
into the cell features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def feature_map(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1.0


class EquivariantLinearAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, gated: bool = False, gate_type: str = "headwise", dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        # Output sees the attended values and the per-head squared distance to the attended centroid.
        self.out = nn.Linear(dim + num_heads, dim)
        self.position_weight = nn.Linear(dim, num_heads)
        nn.init.zeros_(self.position_weight.weight)
        nn.init.zeros_(self.position_weight.bias)
        self.gate_type = gate_type if gated else None
        if gated:
            self.gate = nn.Linear(dim, num_heads if gate_type == "headwise" else dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, h: torch.Tensor, x: torch.Tensor, node_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, N, D) invariant features, x (B, N, 3) coordinates, node_mask (B, N) bool.

        Returns the feature update (B, N, D) and the coordinate update (B, N, 3).
        """
        B, N, D = h.shape
        H, Dh = self.num_heads, self.head_dim
        q, k, v = self.qkv(h).reshape(B, N, 3, H, Dh).unbind(dim=2)  # each (B, N, H, Dh)
        mask = node_mask[:, :, None, None].to(h.dtype)
        q = feature_map(q)
        k = feature_map(k) * mask  # padded cells contribute nothing
        x32 = x.float()
        # Keys/values summed over cells in float32: sums over 10^5 cells overflow bf16 precision.
        k32, q32 = k.float(), q.float()
        kv = torch.einsum("bnhd,bnhe->bhde", k32, v.float())  # (B, H, Dh, Dh)
        kx = torch.einsum("bnhd,bnc->bhdc", k32, x32)  # (B, H, Dh, 3)
        z = k32.sum(dim=1)  # (B, H, Dh)
        denom = torch.einsum("bnhd,bhd->bnh", q32, z).clamp(min=1e-6)  # (B, N, H)
        attended = torch.einsum("bnhd,bhde->bnhe", q32, kv) / denom[..., None]  # (B, N, H, Dh)
        centroid = torch.einsum("bnhd,bhdc->bnhc", q32, kx) / denom[..., None]  # (B, N, H, 3)
        offset = x32[:, :, None, :] - centroid  # (B, N, H, 3), equivariant
        sq_dist = offset.pow(2).sum(-1)  # (B, N, H), invariant

        if self.gate_type == "headwise":
            attended = attended * torch.sigmoid(self.gate(h)).float()[..., None]
        elif self.gate_type == "elementwise":
            attended = attended * torch.sigmoid(self.gate(h)).float().reshape(B, N, H, Dh)
        features = torch.cat([attended.reshape(B, N, D), torch.log1p(sq_dist)], dim=-1).to(h.dtype)
        dh = self.dropout(self.out(features))
        # Bounded per-head step sizes keep coordinates stable over many layers; the network's output
        # preconditioning (see network.py) sets the overall scale of the move.
        w = torch.tanh(self.position_weight(h)).float()  # (B, N, H)
        dx = (w[..., None] * offset).sum(dim=2) * node_mask[..., None]
        return dh, dx.to(x.dtype)


class SoftmaxAttention(nn.Module):
    """Quadratic softmax attention with the same interface: the baseline of the scaling benchmark."""

    def __init__(self, dim: int, num_heads: int, **_):
        super().__init__()
        self.num_heads = num_heads
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.position_weight = nn.Linear(dim, num_heads)

    def forward(self, h, x, node_mask):
        out, weights = self.attn(h, h, h, key_padding_mask=~node_mask, need_weights=True, average_attn_weights=True)
        centroid = torch.bmm(weights, x)
        w = torch.tanh(self.position_weight(h)).mean(-1, keepdim=True)
        return out, w * (x - centroid) * node_mask[..., None]
